"""What a validator reports: one ``Issue`` per problem, and the ``Checked`` result.

Shared by the namespace.yaml validator (validate.py, which needs PyYAML) and the
job_container.conf reader (jcconf.py, which must not): nothing here imports a parser.
"""

from __future__ import annotations

from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, Union


@dataclass(frozen=True)
class Issue:
    """One problem found in the file. ``severity`` is "error" or "warning". ``column`` 0 means
    the message is about a whole line (job_container.conf), and is then not printed."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file}:"
        if self.line:
            where += f"{self.line}:" + (f"{self.column}:" if self.column else "")
        label = "warning: " if self.severity == "warning" else ""
        key = f" {self.path}:" if self.path else ""
        return f"{where}{key} {label}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass(frozen=True)
class Checked:
    """A document and what validation found. ``data`` is the typed document (every value
    converted the way Slurm converts it, as the format's resolver takes it), None when the file
    itself could not be read; only the values that could be read are in it."""

    file: str
    data: Any
    issues: tuple[Issue, ...]

    @property
    def errors(self) -> tuple[Issue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")

    @property
    def warnings(self) -> tuple[Issue, ...]:
        return tuple(i for i in self.issues if i.severity == "warning")

    @property
    def valid(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class NodeReport:
    """What each node resolves to, folded into hostlists. An entry is a node_confs entry
    ("node_confs[1]") or, for a job_container.conf, the lines that apply ("lines 2, 5")."""

    groups: tuple[dict[str, Any], ...]  # nodes (hostlist), entry, enabled, base_path / reason
    shadowed: tuple[dict[str, Any], ...]  # entries (lines) that can never change a value
    multiple: tuple[dict[str, Any], ...]  # nodes matched by several node_confs entries
    unused: tuple[str, ...]  # entries matching none of the reported nodes

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": list(self.groups),
            "shadowed": list(self.shadowed),
            "multiple_matches": list(self.multiple),
            "unused_entries": list(self.unused),
        }


def node_groups(
    resolved: Iterable[Any], collect_hostlist: Callable[[list[str]], str]
) -> tuple[dict[str, Any], ...]:
    """Resolved node configs (NodeConfig) folded into hostlists: one row per entry, enabled and
    base path (or reason), in the order first seen. ``NodeReport.groups`` of both readers."""
    members: dict[tuple, list[str]] = {}
    for config in resolved:
        detail = config.base_path if config.enabled else config.disabled_reason
        members.setdefault((config.entry, config.enabled, detail), []).append(config.node)
    return tuple(
        {
            "nodes": collect_hostlist(names),
            "entry": entry or None,
            "enabled": enabled,
            ("base_path" if enabled else "reason"): detail,
        }
        for (entry, enabled, detail), names in members.items()
    )


def read_text(path: str, display: str) -> Union[str, Checked]:
    """A configuration file's text, or, when it cannot be read, the result with that one error."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Checked(display, None, (Issue(display, 0, 0, "", f"cannot read: {reason}"),))
