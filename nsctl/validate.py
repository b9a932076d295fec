"""Strict validation of namespace.yaml: every problem at once, each with file:line:column, key path.

Structure and types come from the JSON Schema shipped in ``nsctl.schema``; the rules a schema
cannot say (paths that overlap, backing names that collide, mount option tokens, ``%`` escapes,
settings Slurm would silently ignore) are checked here in Python. Only ``nsctl validate`` and a
cold runtime cache import this module: jsonschema alone costs ~0.1 s.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Optional

import hostlist
import yaml

from . import config as cfg

Path = tuple  # a key path: ("node_confs", 1, "options", "base_path")

_DATA_VALUE = {
    "size": re.compile(r"^[0-9]+[kKmMgGtTpPeE%]?$"),
    "nr_inodes": re.compile(r"^[0-9]+[kKmMgGtTpPeE]?$"),
    "mode": re.compile(r"^[0-7]{1,4}$"),
    "uid": re.compile(r"^[0-9]+$"),
    "gid": re.compile(r"^[0-9]+$"),
    # deny and force exist only for the shmem_enabled sysfs knob: a tmpfs mount refuses them.
    "huge": re.compile(r"^(never|always|within_size|advise)$"),
}
_EXPECTED = {
    "boolean": "a boolean (true or false)",
    "integer": "a whole number",
    "string": "a string",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}
_ONE_OF = {
    "nodes": "expected a hostlist string or a non-empty list of hostlist strings",
    "clone_ns_flags": "expected a list of flag names or a comma-separated string",
}


@dataclass(frozen=True)
class Issue:
    """One problem found in the file. ``severity`` is "error" or "warning"."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}:" if self.line else f"{self.file}:"
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
    """A parsed document and what validation found. ``data`` is None when YAML failed."""

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


def format_path(path: Iterable) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# ---------------------------------------------------------------------------------------------
# YAML with positions


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Scalars are built only with these tags; anything else (a custom !tag, !!binary, a YAML 1.1
# timestamp) is either reported or kept as the text Slurm would see, never constructed blindly.
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + name for name in ("str", "int", "float", "bool", "null")}
_MAX_DEPTH = 50  # namespace.yaml needs 6 levels; deeper nesting would only exhaust the stack
_MAX_NODES = 1_000_000  # aliases can multiply a small file into an enormous document


class _Doc:
    """Plain data built from the YAML node graph, plus the line:column of every key path."""

    def __init__(self, file: str):
        self.file = file
        self.marks: dict[Path, tuple[int, int]] = {}
        self.issues: list[Issue] = []
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()  # collection nodes being built (a recursive alias)
        self.count = 0

    def node_issue(self, node: yaml.Node, path: Path, message: str) -> None:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        self.issues.append(Issue(self.file, line, column, format_path(path), message))

    def issue(self, path: Path, message: str, severity: str = "error") -> None:
        line, column = self.position(path)
        self.issues.append(Issue(self.file, line, column, format_path(path), message, severity))

    def position(self, path: Path) -> tuple[int, int]:
        path = tuple(path)
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def build(self, node: yaml.Node, path: Path, mark: yaml.Node) -> Any:
        self.marks[path] = (mark.start_mark.line + 1, mark.start_mark.column + 1)
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            line, column = self.marks[path]  # where the alias is used, not where it points
            message = "invalid YAML: an alias refers to a node that contains it"
            self.issues.append(Issue(self.file, line, column, format_path(path), message))
            return None
        self.active.add(id(node))
        try:
            return self.collection(node, path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag == _TAG + "str":
            return node.value  # most values: skip the constructor's bookkeeping
        if node.tag == _TAG + "timestamp":
            return node.value  # Slurm reads 2024-01-01 as text, and so does nsctl
        if node.tag not in _SCALAR_TAGS:
            self.node_issue(node, path, f"invalid YAML: unsupported tag {_tag(node)!r}")
            return node.value
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, KeyError):
            kind = node.tag[len(_TAG) :]
            self.node_issue(node, path, f"invalid YAML: {node.value!r} is not a valid {kind}")
            return node.value

    def collection(self, node: yaml.Node, path: Path) -> Any:
        if node.tag not in (_TAG + "map", _TAG + "seq"):
            self.node_issue(node, path, f"invalid YAML: unsupported tag {_tag(node)!r}")
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, (*path, "<key>"), key_node)
                if not isinstance(key, str):
                    key = str(key)
                if key in result:
                    self.marks.setdefault((*path, key), (0, 0))
                    line = key_node.start_mark.line + 1
                    column = key_node.start_mark.column + 1
                    self.issues.append(
                        Issue(self.file, line, column, format_path((*path, key)), "duplicate key")
                    )
                    continue
                result[key] = self.build(value_node, (*path, key), key_node)
            self.marks.pop((*path, "<key>"), None)
            return result
        return [self.build(item, (*path, i), item) for i, item in enumerate(node.value)]


def _tag(node: yaml.Node) -> str:
    return "!!" + node.tag[len(_TAG) :] if node.tag.startswith(_TAG) else node.tag


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node):
        super().__init__("document too large")
        self.node = node


def _depth_issue(text: str, file: str) -> Optional[Issue]:
    """Nesting deeper than any namespace.yaml needs, found from the event stream (no recursion:
    libyaml's composer would overflow the C stack on a few hundred thousand levels)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > _MAX_DEPTH:
                mark = event.start_mark
                message = f"invalid YAML: nested more than {_MAX_DEPTH} levels deep"
                return Issue(file, mark.line + 1, mark.column + 1, "", message)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def parse(text: str, file: str) -> tuple[Any, list[Issue], dict[Path, tuple[int, int]]]:
    """Parse YAML text; a syntax error becomes an Issue at the parser's line and column."""
    doc = _Doc(file)
    try:
        too_deep = _depth_issue(text, file)
        if too_deep:
            return None, [too_deep], {}
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{exc.context}: {problem}" if "while" not in exc.context else problem
        return None, [Issue(file, line, column, "", f"invalid YAML: {problem}")], {}
    except yaml.YAMLError as exc:
        return None, [Issue(file, 1, 1, "", f"invalid YAML: {exc}")], {}
    if root is None:
        return None, [], {}
    try:
        data = doc.build(root, (), root)
    except _TooLarge as exc:
        mark = exc.node.start_mark
        message = f"invalid YAML: more than {_MAX_NODES} values (aliases nested inside aliases?)"
        return None, [Issue(file, mark.line + 1, mark.column + 1, "", message)], {}
    return data, doc.issues, doc.marks


# ---------------------------------------------------------------------------------------------
# Schema


def schema() -> dict[str, Any]:
    return json.loads(resources.files("nsctl.schema").joinpath("namespace.schema.json").read_text())


def _validator():
    import jsonschema  # deliberately local: never on the setup/teardown import path

    base = jsonschema.Draft202012Validator
    # Only a YAML integer is an integer (jsonschema would accept 10.0).
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)(_inline_refs(schema()))


def _inline_refs(node: Any, defs: Optional[dict] = None) -> Any:
    """The schema with every local "$ref" replaced by its definition. jsonschema resolves a
    $ref on every visit (a third of the schema check on a 1,000-entry file); the shipped schema
    has no recursive definitions, so inlining them is exact."""
    defs = node.get("$defs", {}) if defs is None else defs
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rpartition("/")[2]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    return node


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return "a list" if isinstance(value, list) else "a mapping"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _unknown_key(path: Path, key: str, allowed: Iterable[str]) -> str:
    if not path and key == "disable_bpf_token":
        return (
            "unknown top-level key 'disable_bpf_token': it belongs inside defaults or "
            "node_confs[].options (namespace.yaml(5) lists it at the top level, but Slurm "
            "ignores it there)"
        )
    if not path and key in cfg.OPTION_KEYS:
        return f"unknown top-level key '{key}': it belongs inside defaults or node_confs[].options"
    if path and path[-1] == "options" and key in cfg.NODE_CONF_KEYS:
        return f"unknown key '{key}': it belongs in the node_confs entry, beside options"
    return f"unknown key '{key}'{_did_you_mean(key, allowed)}"


def _schema_issues(doc: _Doc, data: Any) -> None:
    for error in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.path))):
        _schema_issue(doc, error)


def _fitting_branch(error: Any) -> Optional[list]:
    """For a failed oneOf, the errors of the one branch whose type fits the value (a list of
    flags with a number in it is a list problem, not "neither a list nor a string")."""
    branches: dict[Any, list] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [
        errors
        for errors in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in errors)
    ]
    return fitting[0] if len(fitting) == 1 else None


def _schema_issue(doc: _Doc, error: Any) -> None:
    path = tuple(error.absolute_path)
    kind = error.validator
    fitting = _fitting_branch(error) if kind == "oneOf" else None
    if kind == "additionalProperties":
        allowed = error.schema.get("properties", {})
        for key in error.instance:
            if key not in allowed:
                doc.issue((*path, key), _unknown_key(path, key, allowed))
    elif kind == "type":
        wanted = error.validator_value
        wanted = [w for w in (wanted if isinstance(wanted, list) else [wanted]) if w != "null"]
        doc.issue(
            path,
            f"expected {' or '.join(_EXPECTED[w] for w in wanted)}, "
            f"got {_describe(error.instance)}",
        )
    elif kind == "required":
        missing = re.search(r"'([^']+)'", error.message)
        doc.issue(path, f"missing required key '{missing.group(1) if missing else '?'}'")
    elif kind == "oneOf" and fitting:
        for sub in fitting:
            _schema_issue(doc, sub)
    elif kind == "oneOf":
        key = next((p for p in reversed(path) if isinstance(p, str)), "")
        doc.issue(path, f"{_ONE_OF.get(key, 'wrong type')}, got {_describe(error.instance)}")
    elif kind in ("minLength", "minItems"):
        doc.issue(path, "must not be empty")
    elif kind == "minimum":
        doc.issue(path, f"must be 0 or more, got {error.instance}")
    elif kind == "maximum":
        doc.issue(path, f"must be at most {error.validator_value}, got {error.instance}")
    else:  # pragma: no cover - every keyword the schema uses is handled above
        doc.issue(path, error.message)


# ---------------------------------------------------------------------------------------------
# Semantic rules


def _absolute(doc: _Doc, path: Path, value: Any, what: str) -> bool:
    if isinstance(value, str) and value and not value.startswith("/"):
        doc.issue(path, f"{what} must be an absolute path, got {value!r}")
        return False
    return isinstance(value, str) and bool(value)


def _check_escapes(doc: _Doc, path: Path, value: str, allowed: str, what: str) -> None:
    """Report % escapes nsctl does not expand. ``allowed`` holds the letters, "%" included
    when %% means a literal % (dir paths; base_path expands only %h and %n, as Slurm does)."""
    for match in re.finditer(r"%(.?)", value, re.DOTALL):
        letter = match.group(1)
        # "in" on an empty letter would always be true: a lone % at the end needs its own test.
        if not letter or letter not in allowed:
            problem = f"unknown escape %{letter} in" if letter else "a lone % at the end of"
            escapes = ", ".join(f"%{c}" for c in allowed)
            escapes = escapes.rpartition(", ")[0] + " and " + escapes.rpartition(", ")[2]
            doc.issue(path, f"{problem} {what} (nsctl expands {escapes})")


def _check_base_path(doc: _Doc, path: Path, value: Any) -> None:
    if not isinstance(value, str):
        return
    if value.lower() == "none":
        return
    if value[:4].lower() == "none":
        doc.issue(
            path,
            f"base_path {value!r} is neither 'none' nor an absolute path (Slurm would treat "
            "anything starting with 'none' as none and silently disable the plugin)",
        )
        return
    if _absolute(doc, path, value, "base_path"):
        _check_escapes(doc, path, value, "hn", "base_path")


def _check_flags(doc: _Doc, path: Path, value: Any, node_level: bool) -> None:
    if not isinstance(value, (str, list)):
        return
    tokens = cfg.flag_tokens(value) if isinstance(value, str) else value
    for index, token in enumerate(tokens):
        where = (*path, index) if isinstance(value, list) else path
        if not isinstance(token, str):
            continue
        if token.strip().upper() not in cfg.CLONE_FLAGS:
            hint = _did_you_mean(token.strip().upper(), cfg.CLONE_FLAGS)
            doc.issue(
                where,
                f"unknown namespace flag {token!r}{hint}; nsctl knows "
                + ", ".join(cfg.CLONE_FLAGS),
            )
    if node_level and not cfg.flag_tokens(value):
        doc.issue(
            path,
            "an empty clone_ns_flags does not clear the defaults' flags (Slurm only overrides "
            "with a non-empty value); write [CLONE_NEWNS] to drop PID and user namespaces",
            "warning",
        )


def _check_options_string(doc: _Doc, path: Path, options: str, tmpfs: bool) -> None:
    for token in cfg.split_csv(options):
        if not token:
            doc.issue(path, "empty mount option (two commas in a row?)")
            continue
        if token.lower() in cfg.MOUNT_FLAGS:
            continue
        key, eq, value = token.partition("=")
        if key not in cfg.TMPFS_DATA_KEYS or not eq:
            known = cfg.MOUNT_FLAGS + tuple(f"{k}=" for k in cfg.TMPFS_DATA_KEYS)
            doc.issue(path, f"unknown mount option {token!r}{_did_you_mean(token, known)}")
        elif not tmpfs:
            doc.issue(path, f"{token!r} is a tmpfs option; it has no effect on a bind mount")
        elif not _DATA_VALUE[key].match(value):
            doc.issue(path, f"bad value for {key}= in {token!r}")


def _check_dir_path(doc: _Doc, path: Path, value: Any, escapes: str) -> None:
    if not _absolute(doc, path, value, "directory"):
        return
    if "\\" in value:
        doc.issue(path, "backslash in a directory path (Slurm would drop it and skip expansion)")
    if "," in value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        doc.issue(path, "a directory path may not contain a comma or a control character")
    _check_escapes(doc, path, value, escapes, "a directory path")


def _check_options(doc: _Doc, path: Path, options: Any, defaults: Any) -> None:
    if not isinstance(options, dict):
        return
    node_level = path != ("defaults",)
    if "base_path" in options:
        _check_base_path(doc, (*path, "base_path"), options["base_path"])
    for key in ("clone_ns_script", "clone_ns_epilog", "init_script", "user_ns_script"):
        if key in options:
            _absolute(doc, (*path, key), options[key], key)
    if "clone_ns_flags" in options:
        _check_flags(doc, (*path, "clone_ns_flags"), options["clone_ns_flags"], node_level)
    if isinstance(options.get("dirs"), str):
        where = (*path, "dirs")
        for token in options["dirs"].split(","):
            if not token:
                doc.issue(where, "empty entry in dirs (a stray comma?)")
            elif token != token.strip():
                doc.issue(where, f"whitespace around {token.strip()!r} in dirs (Slurm keeps it)")
            else:
                _check_dir_path(doc, where, token, "jSu%")
        if "dir_confs" in options:
            doc.issue(where, "dirs is ignored because dir_confs is set", "warning")
        elif node_level and isinstance(defaults, dict) and "dir_confs" in defaults:
            doc.issue(
                where,
                "dirs is ignored on these nodes because defaults sets dir_confs, which takes "
                "precedence; set dir_confs here instead",
                "warning",
            )
    for index, entry in enumerate(options.get("dir_confs") or []):
        if not isinstance(entry, dict):
            continue
        where = (*path, "dir_confs", index)
        if "path" in entry:
            _check_dir_path(doc, (*where, "path"), entry["path"], "jSu%")
        tmpfs = entry.get("tmpfs") is True or (
            isinstance(entry.get("path"), str) and cfg.normalise_dir(entry["path"]) == cfg.DEV_SHM
        )
        if isinstance(entry.get("options"), str):
            _check_options_string(doc, (*where, "options"), entry["options"], tmpfs)
        if "base_path" in entry and _absolute(
            doc, (*where, "base_path"), entry["base_path"], "base_path"
        ):
            _check_escapes(doc, (*where, "base_path"), entry["base_path"], "hn", "base_path")
            if tmpfs:
                doc.issue((*where, "base_path"), "base_path is ignored for tmpfs", "warning")


@dataclass(frozen=True)
class _Dir:
    path: str
    where: Path
    tmpfs: bool
    base: Optional[str]
    builtin: bool = False  # from the built-in /tmp,/dev/shm: nothing in the file to point at


def _effective(defaults: dict, options: dict, prefix: Path) -> tuple[Any, Path, list[_Dir]]:
    """The base_path and dir list one entry ends up with (where each came from, for messages)."""
    base, base_where = defaults.get("base_path"), ("defaults", "base_path")
    if options.get("base_path"):
        base, base_where = options["base_path"], (*prefix, "base_path")
    source, where, dir_confs = defaults, ("defaults",), None
    if "dir_confs" in options:
        dir_confs, where = options["dir_confs"], prefix
    elif "dir_confs" in defaults:
        dir_confs = defaults["dir_confs"]
    if dir_confs is None:
        source, where = (options, prefix) if options.get("dirs") else (defaults, ("defaults",))
        text = source.get("dirs") or cfg.DEFAULT_DIRS
        builtin = not source.get("dirs")
        dirs = [_Dir(p, (*where, "dirs"), p == cfg.DEV_SHM, None, builtin) for p in text.split(",")]
    else:
        dirs = []
        for index, entry in enumerate(dir_confs or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                continue
            path = entry["path"]
            tmpfs = entry.get("tmpfs") is True or cfg.normalise_dir(path) == cfg.DEV_SHM
            dbase = entry.get("base_path") if isinstance(entry.get("base_path"), str) else None
            dirs.append(_Dir(path, (*where, "dir_confs", index, "path"), tmpfs, dbase))
    return base, base_where, [d for d in dirs if d.path.startswith("/")]


def _check_layout(doc: _Doc, defaults: dict, options: dict, prefix: Path) -> None:
    """Overlaps and collisions for the configuration one entry resolves to."""
    base, base_where, dirs = _effective(defaults, options, prefix)
    seen: dict[str, _Dir] = {}
    backing: dict[tuple[Optional[str], str], _Dir] = {}
    for d in dirs:
        norm = cfg.normalise_dir(d.path)
        if norm in seen:
            doc.issue(
                d.where, f"duplicate directory {d.path!r} (already listed as {seen[norm].path!r})"
            )
            continue
        seen[norm] = d
        if isinstance(base, str) and base.startswith("/"):
            if cfg.is_under(d.path, base) and d.builtin:
                doc.issue(
                    base_where,
                    f"the private directory {d.path!r} is at or under base_path {base!r} "
                    f"(dirs defaults to {cfg.DEFAULT_DIRS})",
                )
            elif cfg.is_under(d.path, base):
                doc.issue(d.where, f"directory {d.path!r} is at or under base_path {base!r}")
            elif cfg.is_under(base, d.path):
                doc.issue(
                    base_where,
                    f"base_path {base!r} is under the private directory {d.path!r}: the job's "
                    "own mount would hide it",
                )
        if not d.tmpfs:
            key = (d.base and cfg.normalise_dir(d.base), cfg.backing_name(norm))
            if key in backing:
                doc.issue(
                    d.where,
                    f"directories {backing[key].path!r} and {d.path!r} would share the backing "
                    f"directory {key[1]!r}",
                )
            backing.setdefault(key, d)
    for d in dirs:
        if d.base and not d.tmpfs and d.base.startswith("/"):
            for other in dirs:
                if cfg.is_under(d.base, other.path):
                    doc.issue(
                        (*d.where[:-1], "base_path"),
                        f"base_path {d.base!r} is under the private directory {other.path!r}",
                    )


def _semantic_issues(doc: _Doc, data: Any) -> None:
    if not isinstance(data, dict):
        return
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    _check_options(doc, ("defaults",), data.get("defaults"), defaults)
    entries = data.get("node_confs") if isinstance(data.get("node_confs"), list) else []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        _check_hostlist(doc, ("node_confs", index, "nodes"), entry.get("nodes"))
        _check_options(doc, ("node_confs", index, "options"), entry.get("options"), defaults)
    before = len(doc.issues)
    if defaults.get("base_path") or defaults.get("dir_confs") or defaults.get("dirs"):
        _check_layout(doc, defaults, {}, ("defaults",))
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("options"), dict):
            _check_layout(doc, defaults, entry["options"], ("node_confs", index, "options"))
    # An error in defaults shows up once per entry that inherits it: report each once.
    unique = list(dict.fromkeys(doc.issues[before:]))
    doc.issues[before:] = unique


def _check_hostlist(doc: _Doc, path: Path, nodes: Any) -> None:
    items = nodes if isinstance(nodes, list) else [nodes]
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item:
            continue
        try:
            hostlist.expand_hostlist(item)
        except hostlist.BadHostlist as exc:
            where = (*path, index) if isinstance(nodes, list) else path
            doc.issue(where, f"bad hostlist {item!r}: {exc}")


# ---------------------------------------------------------------------------------------------
# Entry points


def check_text(text: str, file: str) -> Checked:
    """Validate a namespace.yaml text completely; never raises for bad input."""
    data, issues, marks = parse(text, file)
    if issues and data is None:
        return Checked(file, None, tuple(issues))
    doc = _Doc(file)
    doc.marks, doc.issues = marks, list(issues)
    _schema_issues(doc, data)
    _semantic_issues(doc, data)
    ordered = sorted(doc.issues, key=lambda i: (i.line, i.column, i.severity != "error"))
    return Checked(file, data, tuple(dict.fromkeys(ordered)))


def check_file(path: str, display: Optional[str] = None) -> Checked:
    """Read and validate a file; an unreadable file is one error."""
    display = display or path
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Checked(display, None, (Issue(display, 0, 0, "", f"cannot read: {reason}"),))
    return check_text(text, display)


# ---------------------------------------------------------------------------------------------
# Per-node report


@dataclass(frozen=True)
class NodeReport:
    groups: tuple[dict[str, Any], ...]  # nodes (hostlist), entry, enabled, base_path / reason
    shadowed: tuple[dict[str, Any], ...]  # node_confs entries that can never apply
    multiple: tuple[dict[str, Any], ...]  # nodes matched by several entries
    unused: tuple[str, ...]  # entries matching none of the reported nodes

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": list(self.groups),
            "shadowed": list(self.shadowed),
            "multiple_matches": list(self.multiple),
            "unused_entries": list(self.unused),
        }


def entry_names(data: Any) -> list[set[str]]:
    return [cfg.hostlist_names(entry["nodes"]) for entry in (data or {}).get("node_confs") or []]


def shadowed_entries(data: Any) -> list[dict[str, Any]]:
    """node_confs entries whose every node is already claimed by earlier entries."""
    claimed: set[str] = set()
    result = []
    for index, names in enumerate(entry_names(data)):
        if names and names <= claimed:
            result.append(
                {"entry": f"node_confs[{index}]", "nodes": hostlist.collect_hostlist(names)}
            )
        claimed |= names
    return result


def node_report(data: Any, nodes: Iterable[str], hostnames: Optional[dict] = None) -> NodeReport:
    """What each node resolves to, folded back into hostlists. ``data`` must be valid."""
    hostnames = hostnames or {}
    names_by_entry = entry_names(data)
    groups: dict[tuple, list[str]] = {}
    multiple: dict[tuple[str, ...], list[str]] = {}
    used: set[int] = set()
    # node -> the entries naming it, in file order: one pass over the entries, not one per node
    entries_of: dict[str, list[int]] = {}
    for index, names in enumerate(names_by_entry):
        for name in names:
            entries_of.setdefault(name, []).append(index)
    for node in dict.fromkeys(nodes):
        matches = entries_of.get(node, [])
        used.update(matches[:1])
        if len(matches) > 1:
            multiple.setdefault(tuple(f"node_confs[{i}]" for i in matches), []).append(node)
        first = matches[0] if matches else None
        resolved = cfg.resolve(data, node, hostnames.get(node, node), index=first)
        detail = resolved.base_path if resolved.enabled else resolved.disabled_reason
        groups.setdefault((resolved.entry, resolved.enabled, detail), []).append(node)
    return NodeReport(
        groups=tuple(
            {
                "nodes": hostlist.collect_hostlist(members),
                "entry": entry or None,
                "enabled": enabled,
                ("base_path" if enabled else "reason"): detail,
            }
            for (entry, enabled, detail), members in groups.items()
        ),
        shadowed=tuple(shadowed_entries(data)),
        multiple=tuple(
            {
                "nodes": hostlist.collect_hostlist(members),
                "entries": list(entries),
                "applies": entries[0],
            }
            for entries, members in multiple.items()
        ),
        unused=tuple(f"node_confs[{i}]" for i in range(len(names_by_entry)) if i not in used),
    )
