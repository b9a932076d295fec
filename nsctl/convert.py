"""`nsctl convert`: a job_container.conf as the namespace.yaml that gives every node the same.

A job_container.conf applies every line that matches a node, the last one winning key by key;
namespace.yaml applies its defaults and then the first node_confs entry that matches. So the file
is flattened: what the nodes no NodeName= line names get (the globals and the BasePath= lines)
becomes ``defaults``, and each group of named nodes that resolves alike gets one node_confs entry
holding what differs from the defaults. Each value says, in a comment, the line it came from.
What namespace.yaml cannot say is a comment when nsctl does the same from either file or the
namespace/linux way is the safer one, and a refusal (``ConvertError``) when a site script would
break. Pure: a checked ``jcconf.Doc`` in, text out.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from . import __version__, jcconf
from . import config as cfg
from .deps import dependency
from .errors import NsctlError

hostlist = dependency("hostlist")

# namespace.yaml keys in the order they are written; dirs is written as dirs or dir_confs.
ORDER = (
    "base_path",
    "auto_base_path",
    "clone_ns_script",
    "clone_ns_script_wait",
    "clone_ns_epilog",
    "clone_ns_epilog_wait",
    "init_script",
    "shared",
    "dirs",
)


class ConvertError(NsctlError):
    """The file says something namespace.yaml cannot say the same way."""


class _Group:
    """Nodes whose settings are the same, and the lines that gave them those settings."""

    def __init__(self, settings: dict[str, jcconf.Setting]):
        self.settings = settings
        self.nodes: list[str] = []
        self.entries: list[str] = []


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a YAML double-quoted scalar: read as exactly this text


def _values(settings: dict[str, jcconf.Setting]) -> dict[str, Any]:
    """What namespace.yaml can carry of a merge (EntireStepInNS it cannot)."""
    return {
        name: setting.value for name, setting in settings.items() if name != "entire_step_in_ns"
    }


def _refuse(groups: list[_Group]) -> None:
    for group in groups:
        epilog = group.settings.get("clone_ns_epilog")
        if epilog is not None:
            raise ConvertError(
                f"cannot convert CloneNSEpilog ({epilog.origin}): namespace/tmpfs gives the "
                "script SLURM_NS=BasePath/JOBID/.ns, the namespace file itself, where "
                "namespace/linux gives the .ns directory (the file is .ns/mnt there), so a script "
                "written for one fails under the other. Take CloneNSEpilog out, convert, and add "
                "clone_ns_epilog to the result once the script reads $SLURM_NS/mnt"
            )


def _dirs_lines(paths: list[str], origin: str, indent: str, as_list: bool) -> list[str]:
    if not paths:
        return [f"{indent}dir_confs: []  # {origin}: Dirs is empty"]
    if as_list:
        lines = [f"{indent}dir_confs:  # {origin}"]
        return lines + [f"{indent}  - path: {_scalar(path)}" for path in paths]
    return [f"{indent}dirs: {_scalar(','.join(paths))}  # {origin}"]


def _option_lines(
    values: dict[str, Any],
    settings: dict[str, jcconf.Setting],
    indent: str,
    dirs_as_list: bool,
) -> list[str]:
    lines = []
    for name in ORDER:
        if name not in values:
            continue
        origin = settings[name].origin
        if name == "dirs":
            lines += _dirs_lines(jcconf.dir_paths(values[name]), origin, indent, dirs_as_list)
        else:
            lines.append(f"{indent}{name}: {_scalar(values[name])}  # {origin}")
    return lines


def _notes(groups: list[_Group], source: str) -> list[str]:
    every = [group.settings for group in groups]
    notes = [
        f"# namespace.yaml converted by nsctl {__version__} from {source} (namespace/tmpfs).",
        "# Every node gets what it gets from that file: defaults hold what the nodes that no",
        "# NodeName= line names get, each node_confs entry what one group of named nodes gets",
        "# on top (namespace.yaml applies only the first entry that matches a node).",
        "# What changes with namespace/linux's behaviour (nsctl follows the file it reads):",
        "# - the job directory stays mounted (root-only, 0700) inside the job; namespace/tmpfs",
        "#   unmounts it there.",
    ]
    dirs = [s.get("dirs", jcconf.Setting(cfg.DEFAULT_DIRS, None)).value for s in every]
    if any(cfg.DEV_SHM in jcconf.dir_paths(value) for value in dirs):
        notes += [
            "# - /dev/shm: namespace/tmpfs unmounts the node's /dev/shm and mounts a tmpfs without",
            "#   nosuid and nodev; namespace.yaml mounts a tmpfs with nosuid,nodev over it.",
        ]
    if any(settings.get("init_script") for settings in every):
        notes += [
            "# - init_script runs once BasePath/JOBID/.JOBID exists; InitScript ran before it",
            "#   was made.",
        ]
    if any(s.get("shared") and s["shared"].value for s in every):
        notes += [
            "# - shared: namespace/tmpfs also unmounts the other jobs' directories inside a job;",
            "#   namespace/linux leaves them visible (and out of reach).",
        ]
    steps = {s["entire_step_in_ns"].origin for s in every if "entire_step_in_ns" in s}
    if steps:
        notes += [
            "# - EntireStepInNS (" + ", ".join(sorted(steps)) + ") has no equivalent:",
            "#   namespace/linux always runs the whole step inside; nsctl's SPANK plugin joins",
            "#   the same way from either file (job_container.conf(5)).",
        ]
    return notes


def convert(doc: jcconf.Doc, source: str) -> str:
    """The namespace.yaml text for a checked, valid job_container.conf."""
    signatures = jcconf.signatures(doc)
    nowhere = jcconf.merge(doc, doc.base_lines)
    groups: dict[tuple, _Group] = {}
    for indices, names in signatures.items():
        if not names:
            continue
        settings = jcconf.merge(doc, indices)
        key = tuple(sorted((name, repr(value)) for name, value in _values(settings).items()))
        group = groups.setdefault(key, _Group(settings))
        group.nodes += names
        group.entries.append(jcconf.entry_label(doc, indices))
    everything = [_Group(nowhere), *groups.values()]
    _refuse(everything)

    defaults = _values(nowhere)
    default_paths = jcconf.dir_paths(defaults.get("dirs", cfg.DEFAULT_DIRS))
    dirs_as_list = (
        not default_paths
    )  # defaults' dir_confs: [] makes a node's dirs count for nothing
    out = _notes(everything, source)
    if defaults:
        out.append("defaults:")
        out += _option_lines(defaults, nowhere, "  ", dirs_as_list=False)
    entries: list[str] = []
    for group in sorted(groups.values(), key=lambda g: hostlist.numerically_sorted(g.nodes)[0]):
        values = _values(group.settings)
        differ = {
            name: value
            for name, value in values.items()
            if name != "dirs" and (name not in defaults or defaults[name] != value)
        }
        paths: Optional[list[str]] = None
        if "dirs" in values and jcconf.dir_paths(values["dirs"]) != default_paths:
            differ["dirs"] = values["dirs"]
            paths = jcconf.dir_paths(values["dirs"])
        if not differ:
            continue  # these nodes get exactly what the defaults give
        nodes = hostlist.collect_hostlist(group.nodes)
        entries.append(f"  # {nodes}: " + "; ".join(sorted(set(group.entries))))
        entries.append(f"  - nodes: {_scalar(nodes)}")
        entries.append("    options:")
        as_list = dirs_as_list and bool(paths)
        entries += _option_lines(differ, group.settings, "      ", as_list)
    if entries:
        out.append("node_confs:")
        out += entries
    if not defaults and not entries:  # a namespace.yaml of comments alone: slurmd refuses it
        out.append("defaults: {}  # nothing to set: no node gets private directories")
    return "\n".join(out) + "\n"
