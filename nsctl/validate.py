"""Strict validation of namespace.yaml: every problem at once, each with file:line:column, key path.

Scalars are read the way Slurm reads them: YAML gives every untagged scalar to Slurm as its
text, and each key converts that text itself (``010`` is ten, ``~`` is the text "~", ``maybe`` is
a true boolean). nsctl converts per key with the same rules, from the option table in
``config.py``, and refuses every value it would not resolve exactly as Slurm does, saying what
Slurm would make of it. Rules that need a value of the right kind run only on values that have
it; the layout rules (overlapping paths, backing names that collide) run on what each entry
merges to, through ``config.merge``, the function ``resolve`` uses. Only ``nsctl validate`` and a
cold runtime cache import this module (it needs PyYAML; the runtime path does not).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any, NamedTuple, Optional

from . import config as cfg
from .deps import dependency
from .issues import Checked, Issue, NodeReport, node_groups, read_text

hostlist = dependency("hostlist")
yaml = dependency("yaml")

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


def format_path(path: Iterable) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# ---------------------------------------------------------------------------------------------
# YAML as Slurm's reader sees it: text scalars, with positions


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_MAX_DEPTH = 50  # namespace.yaml needs 6 levels; deeper nesting only costs memory and time
_MAX_NODES = 1_000_000  # aliases can multiply a small file into an enormous document
At = tuple  # (line, column), both from 1


class Scalar(NamedTuple):
    """A scalar as written: Slurm receives ``text`` whatever its style, and converts it per key
    (only an explicit tag makes its reader convert it first)."""

    text: str
    plain: bool  # neither quoted nor a block scalar
    tag: Optional[str]  # the explicit tag, None when untagged
    at: At


class RawMap(NamedTuple):
    items: list  # (key, value) pairs in file order, duplicates included
    tag: Optional[str]
    at: At


class RawSeq(NamedTuple):
    items: list
    tag: Optional[str]
    at: At


class BadAlias(NamedTuple):
    """An alias to a collection that contains it (it would recurse forever)."""

    at: At


def _at(mark: Any) -> At:
    return (mark.line + 1, mark.column + 1)


class _Stop(Exception):
    """The document cannot be read on: one issue, at ``at``."""

    def __init__(self, at: At, message: str):
        super().__init__(message)
        self.at, self.message = at, message


class _Builder:
    """The raw document from the event stream, with an explicit stack (no recursion, so no depth
    can exhaust the C or the Python stack), nesting and alias expansion bounded."""

    def __init__(self) -> None:
        self.stack: list[list] = []  # [collection, pending key, anchor] per open collection
        self.anchors: dict[str, Any] = {}  # anchor -> finished value
        self.open: set[str] = set()  # anchors of collections not finished yet
        self.sizes: dict[int, int] = {}  # id(collection) -> values in it, aliases expanded
        self.count = 0  # values in the document so far, aliases expanded
        self.root: Any = None
        self.documents = 0
        self.first_alias: Optional[At] = None

    def feed(self, event: Any) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                message = "invalid YAML: expected a single document in the stream: but found "
                raise _Stop(_at(event.start_mark), message + "another document")
        elif isinstance(event, yaml.ScalarEvent):
            plain = not event.style  # libyaml says "", PyYAML's own parser None
            self.add(Scalar(event.value, plain, event.tag, _at(event.start_mark)), event.anchor, 1)
        elif isinstance(event, yaml.AliasEvent):
            self.alias(event)
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(self.stack) >= _MAX_DEPTH:
                message = f"invalid YAML: nested more than {_MAX_DEPTH} levels deep"
                raise _Stop(_at(event.start_mark), message)
            kind = RawMap if isinstance(event, yaml.MappingStartEvent) else RawSeq
            self.count += 1
            self.stack.append([kind([], event.tag, _at(event.start_mark)), None, event.anchor])
            if event.anchor:
                self.open.add(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            collection, _, anchor = self.stack.pop()
            if anchor:
                self.open.discard(anchor)
            values = collection.items
            if isinstance(collection, RawMap):
                values = [value for pair in collection.items for value in pair]
            self.sizes[id(collection)] = 1 + sum(self.size(value) for value in values)
            self.add(collection, anchor, 0)

    def alias(self, event: Any) -> None:
        at = _at(event.start_mark)
        self.first_alias = self.first_alias or at
        if event.anchor in self.open:
            self.add(BadAlias(at), None, 1)
        elif event.anchor in self.anchors:
            value = self.anchors[event.anchor]
            self.add(value, None, self.size(value))
        else:
            raise _Stop(at, "invalid YAML: found undefined alias")
        if self.count > _MAX_NODES:
            message = (
                f"invalid YAML: more than {_MAX_NODES} values (aliases nested inside aliases?)"
            )
            raise _Stop(at, message)

    def size(self, value: Any) -> int:
        return self.sizes.get(id(value), 1)

    def add(self, value: Any, anchor: Optional[str], count: int) -> None:
        self.count += count
        if anchor:
            self.anchors[anchor] = value
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        if isinstance(frame[0], RawSeq):
            frame[0].items.append(value)
        elif frame[1] is None:
            frame[1] = (value,)  # a key, waiting for its value
        else:
            frame[0].items.append((frame[1][0], value))
            frame[1] = None


def _yaml_issue(exc: Exception, file: str) -> Issue:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, column = _at(mark) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{exc.context}: {problem}" if "while" not in exc.context else problem
        return Issue(file, line, column, "", f"invalid YAML: {problem}")
    return Issue(file, 1, 1, "", f"invalid YAML: {exc}")


def _too_deep(text: str, file: str) -> Optional[Issue]:
    """Nesting deeper than _MAX_DEPTH before the first syntax error, found by PyYAML's pure-Python
    parser, which has no nesting limit of its own. libyaml's parser can stop first: since
    version 0.2.5 of the copy PyYAML 6.0.4 bundles it refuses more than 1,000 levels, and its
    scanner looks ahead far enough to fail before the events of level 51 are out."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    line, column = _at(event.start_mark)
                    message = f"invalid YAML: nested more than {_MAX_DEPTH} levels deep"
                    return Issue(file, line, column, "", message)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except (yaml.YAMLError, UnicodeError):
        return None
    return None


def parse(text: str, file: str) -> tuple[Any, list[Issue]]:
    """The raw document (``Scalar``, ``RawMap``, ``RawSeq``, ``BadAlias``; None when empty or
    when the YAML fails, which is then the one error in the list)."""
    builder = _Builder()
    try:
        for event in yaml.parse(text, Loader=_Loader):
            builder.feed(event)
    except _Stop as stop:
        return None, [Issue(file, stop.at[0], stop.at[1], "", stop.message)]
    except (yaml.YAMLError, UnicodeError) as exc:
        deep = _too_deep(text, file) if _Loader is not yaml.SafeLoader else None
        return None, [deep or _yaml_issue(exc, file)]
    issues = []
    if builder.first_alias:
        line, column = builder.first_alias
        message = (
            "YAML aliases: Slurm's YAML reader refuses them, and slurmd does not start with "
            "this file; write the values out"
        )
        issues.append(Issue(file, line, column, "", message))
    return builder.root, issues


# ---------------------------------------------------------------------------------------------
# How Slurm converts a scalar's text (src/common/data.c, paraphrased: never copied)


_C_SPACE = " \t\n\v\f\r"
_SLURM_TRUE = ("y", "yes", "t", "true", "on")
_SLURM_FALSE = ("n", "no", "f", "false", "off")
_NO_VAL = 0xFFFFFFFE  # what Slurm stores for a uint32 it cannot represent
_HEX_INT = re.compile(r"0[xX][0-9a-fA-F]+")
_DEC_INT = re.compile(r"[-+]?[0-9]+")
_C_FLOAT = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_C_HEX_FLOAT = re.compile(r"0[xX]([0-9a-fA-F]+(\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)([pP][-+]?[0-9]+)?")


def _slurm_int(text: str) -> Optional[int]:
    """Slurm's forced integer conversion: 0x hexadecimal, else strtoll base 10 (leading blanks
    and a sign allowed, the whole text used); None when it fails (out of range included)."""
    if _HEX_INT.fullmatch(text):
        value = int(text, 16)
        return None if value >= 2**64 else value - 2**64 * (value >= 2**63)
    stripped = text.lstrip(_C_SPACE)
    if not _DEC_INT.fullmatch(stripped):
        return None
    value = int(stripped)
    return value if -(2**63) <= value < 2**63 else None


def _slurm_zero(text: str) -> Optional[bool]:
    """Whether the number Slurm's type detection finds in ``text`` (an integer, else a float,
    else a forced integer) is zero; None when it finds no number."""
    if _HEX_INT.fullmatch(text) or _DEC_INT.fullmatch(text):
        return int(text, 16 if _HEX_INT.fullmatch(text) else 10) == 0
    rest = text[1:] if text[:1] in "+-" else text
    if rest.lower() in ("inf", "infinity", "nan"):
        return False  # NaN is not equal to 0 in C either
    try:
        if _C_FLOAT.fullmatch(rest):
            return float(rest) == 0
        if _C_HEX_FLOAT.fullmatch(rest):
            return float.fromhex(rest) == 0
    except OverflowError:
        return False  # C's strtod gives infinity
    value = _slurm_int(text)
    return None if value is None else value == 0


def slurm_bool(text: str) -> bool:
    """What Slurm makes of ``text`` for a boolean key: it never refuses one. Empty, ~..., null
    and a zero are false, its false words are false, and anything else is true."""
    if not text or text[0] == "~" or text.lower() == "null":
        return False
    zero = _slurm_zero(text)
    if zero is not None:
        return not zero
    return text.lower() not in _SLURM_FALSE


def slurm_uint32(text: str) -> Optional[int]:
    """What Slurm stores for ``text`` at a uint32 key (the waits); None: slurmd refuses it."""
    value = _slurm_int(text)
    if value is None:
        return None
    return _NO_VAL if value < 0 or value > 0xFFFFFFFF else value


slurm_wait = cfg.slurm_wait  # Slurm's script runner, shared with job_container.conf


# ---------------------------------------------------------------------------------------------
# Reading the document through the option tables


_BAD = object()  # a value that could not be read (the issue is already reported)
_YAML_NULLS = ("~", "null", "Null", "NULL")
# The boolean words of YAML 1.1 (in its three spellings): Slurm reads each the same way.
_YAML_TRUE = tuple(s for w in ("yes", "true", "on") for s in (w, w.capitalize(), w.upper()))
_YAML_FALSE = tuple(s for w in ("no", "false", "off") for s in (w, w.capitalize(), w.upper()))
_NUMBER = re.compile(r"[-+]?([0-9]+|[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)([eE][-+]?[0-9]+)?")
_ONE_OF = {
    cfg.HOSTLIST: "expected a hostlist string or a non-empty list of hostlist strings",
    cfg.FLAGS: "expected a list of flag names or a comma-separated string",
}


class _Doc:
    """Issues, and the line:column of every key path read so far."""

    def __init__(self, file: str):
        self.file = file
        self.marks: dict[Path, At] = {}
        self.issues: list[Issue] = []
        self.bad: set[Path] = set()  # key paths whose values could not be read

    def issue(self, path: Path, message: str, severity: str = "error", at: Optional[At] = None):
        line, column = at or self.position(path)
        self.issues.append(Issue(self.file, line, column, format_path(path), message, severity))

    def position(self, path: Path) -> At:
        path = tuple(path)
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))


def _describe(raw: Any) -> str:
    if raw is None or isinstance(raw, BadAlias):
        return "nothing (null)"
    if isinstance(raw, RawSeq):
        return "a list"
    if isinstance(raw, RawMap):
        return "a mapping"
    if not raw.plain or raw.tag:
        return f"the string {raw.text!r}"
    if raw.text in ("", *_YAML_NULLS):
        return "nothing (null)"
    if raw.text in _YAML_TRUE + _YAML_FALSE:
        return f"the boolean {raw.text}"
    if _NUMBER.fullmatch(raw.text):
        return f"the number {raw.text}"
    return f"the string {raw.text!r}"


def _value(doc: _Doc, raw: Any, path: Path) -> Any:
    """``raw``, with a recursive alias reported and read as null."""
    if isinstance(raw, BadAlias):
        doc.issue(path, "invalid YAML: an alias refers to a node that contains it")
        return None
    return raw


def _tag_ok(doc: _Doc, raw: Any, path: Path) -> bool:
    """Only !!str (or the non-specific !) may tag a scalar: it reads the same as no tag. Slurm
    converts !!int, !!float, !!bool and !!null values its own way (!!int 010 is 10 there, 8 in
    YAML 1.1), and ignores any other tag."""
    tag = raw.tag
    if tag is None or tag in ("!", _TAG + "str"):
        return True
    short = "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag
    if tag in (_TAG + name for name in ("int", "float", "bool", "null")):
        message = (
            f"unsupported tag {short!r}: write the value without a tag (Slurm converts tagged "
            "values its own way: !!int 010 is 10 in Slurm, 8 in YAML 1.1)"
        )
    else:
        message = f"invalid YAML: unsupported tag {short!r}"
    doc.issue(path, message, at=raw.at)
    return False


def _collection_tag(doc: _Doc, raw: Any, path: Path) -> None:
    if raw.tag not in (None, "!", _TAG + "map", _TAG + "seq"):
        short = "!!" + raw.tag[len(_TAG) :] if raw.tag.startswith(_TAG) else raw.tag
        doc.issue(path, f"invalid YAML: unsupported tag {short!r}", at=raw.at)


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


def _read_map(doc: _Doc, raw: Any, path: Path, table: tuple) -> Any:
    raw = _value(doc, raw, path)
    if not isinstance(raw, RawMap):
        doc.issue(path, f"expected a mapping, got {_describe(raw)}")
        return _BAD
    _collection_tag(doc, raw, path)
    options = {option.name: option for option in table}
    typed: dict[str, Any] = {}
    seen: set[str] = set()
    for key_raw, value_raw in raw.items:
        key_raw = _value(doc, key_raw, path)
        if not isinstance(key_raw, Scalar):
            doc.issue(path, f"a key must be text, got {_describe(key_raw)}", at=_raw_at(key_raw))
            continue
        key, where = key_raw.text, (*path, key_raw.text)
        if key in seen:
            doc.issue(where, "duplicate key", at=key_raw.at)
            continue
        seen.add(key)
        doc.marks[where] = key_raw.at
        if key not in options:
            doc.issue(where, _unknown_key(path, key, options))
            continue
        value = _READERS[options[key].kind](doc, value_raw, where)
        if value is _BAD:
            doc.bad.add(where)
        else:
            typed[key] = value
    for option in table:
        if option.required and option.name not in seen:
            doc.issue(path, f"missing required key '{option.name}'")
    return typed


def _raw_at(raw: Any) -> Optional[At]:
    return getattr(raw, "at", None)


def _read_list(doc: _Doc, raw: Any, path: Path) -> Any:
    """The items of a list, each with its position recorded; _BAD for anything else."""
    raw = _value(doc, raw, path)
    if not isinstance(raw, RawSeq):
        doc.issue(path, f"expected a list, got {_describe(raw)}")
        return _BAD
    _collection_tag(doc, raw, path)
    for index, item in enumerate(raw.items):
        doc.marks[(*path, index)] = _raw_at(item) or doc.position(path)
    return raw.items


def _read_bool(doc: _Doc, raw: Any, path: Path) -> Any:
    raw = _value(doc, raw, path)
    wanted = "expected a boolean (true or false)"
    if not isinstance(raw, Scalar):
        doc.issue(path, f"{wanted}, got {_describe(raw)}")
        return _BAD
    if not _tag_ok(doc, raw, path):
        return _BAD
    plain = raw.plain and raw.tag is None
    if plain and raw.text in _YAML_TRUE + _YAML_FALSE:
        return raw.text in _YAML_TRUE
    reading = "true" if slurm_bool(raw.text) else "false"
    hint = ""
    if raw.text.lower() in _SLURM_TRUE + _SLURM_FALSE:  # a word Slurm knows, as written here
        hint = f" (write {reading})"
        if not plain and raw.text in _YAML_TRUE + _YAML_FALSE:
            hint = " (drop the tag)" if raw.tag else " (drop the quotes)"
    doc.issue(path, f"{wanted}, got {_describe(raw)}; Slurm would read it as {reading}{hint}")
    return _BAD


def _read_wait(doc: _Doc, raw: Any, path: Path) -> Any:
    raw = _value(doc, raw, path)
    if not isinstance(raw, Scalar):
        doc.issue(path, f"expected a whole number, got {_describe(raw)}")
        return _BAD
    if not _tag_ok(doc, raw, path):
        return _BAD
    text, stored = raw.text, slurm_uint32(raw.text)
    if raw.plain and raw.tag is None and text.isdigit() and text.isascii():
        value = int(text)
        if text[0] == "0" and len(text) > 1:
            doc.issue(
                path,
                f"leading zero in {text}: Slurm reads it as {value}, but a leading 0 means "
                f"octal in YAML 1.1; write {value}",
            )
        elif value > cfg.MAX_WAIT:
            effect = "Slurm refuses it too"  # beyond what strtoll can read
            if stored is not None:
                effect = f"Slurm would {slurm_wait(stored)} (it counts milliseconds in 32 bits)"
            doc.issue(path, f"must be at most {cfg.MAX_WAIT}, got {text}; {effect}")
        else:
            return value
        return _BAD
    got = f"got {_describe(raw)}"
    if stored is None:
        doc.issue(path, f"expected a whole number, {got}; Slurm refuses it too")
    elif text.lstrip(_C_SPACE).startswith("-") and stored == _NO_VAL:
        doc.issue(path, f"must be 0 or more, got {text}; Slurm would {slurm_wait(stored)}")
    elif stored > cfg.MAX_WAIT:
        effect = f"read it as {stored} and {slurm_wait(stored)}"
        doc.issue(path, f"expected a whole number, {got}; Slurm would {effect}")
    else:
        hint = f"write {stored}" if raw.plain and raw.tag is None else "drop the quotes"
        hint = "drop the tag" if raw.tag else hint
        doc.issue(path, f"expected a whole number, {got}; Slurm would read it as {stored} ({hint})")
    return _BAD


def _read_text(doc: _Doc, raw: Any, path: Path) -> Any:
    raw = _value(doc, raw, path)
    if not isinstance(raw, Scalar):
        doc.issue(path, f"expected a string, got {_describe(raw)}")
        return _BAD
    if not _tag_ok(doc, raw, path):
        return _BAD
    if raw.plain and raw.tag is None and raw.text in _YAML_NULLS:
        doc.issue(
            path,
            f"{raw.text} is not null here: Slurm reads it as the text {raw.text!r}; for no "
            "value, leave the key out",
        )
        return _BAD
    return raw.text


def _read_texts(doc: _Doc, raw: Any, path: Path, kind: str) -> Any:
    """A text, or a list of texts (clone_ns_flags, nodes)."""
    raw = _value(doc, raw, path)
    if isinstance(raw, Scalar):
        return _read_text(doc, raw, path)
    if not isinstance(raw, RawSeq):
        doc.issue(path, f"{_ONE_OF[kind]}, got {_describe(raw)}")
        return _BAD
    items = [_read_text(doc, item, (*path, i)) for i, item in enumerate(_read_list(doc, raw, path))]
    return _BAD if _BAD in items else items


# Value rules (each runs only on a value that was read as the right kind)


def _absolute(doc: _Doc, path: Path, value: str, what: str) -> bool:
    if value and not value.startswith("/"):
        doc.issue(path, f"{what} must be an absolute path, got {value!r}")
        return False
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        doc.issue(path, f"{what} may not contain a control character")
        return False
    return bool(value)


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


def _read_base_path(doc: _Doc, raw: Any, path: Path) -> Any:
    value = _read_text(doc, raw, path)
    if value is _BAD or not value or value.lower() == "none":
        return value
    if value[:4].lower() == "none":
        doc.issue(
            path,
            f"base_path {value!r} is neither 'none' nor an absolute path (Slurm would treat "
            "anything starting with 'none' as none and silently disable the plugin)",
        )
    elif _absolute(doc, path, value, "base_path"):
        _check_escapes(doc, path, value, "hn", "base_path")
    return value


def _read_script(doc: _Doc, raw: Any, path: Path) -> Any:
    value = _read_text(doc, raw, path)
    if value is not _BAD:
        _absolute(doc, path, value, str(path[-1]))
    return value


def _check_dir_path(doc: _Doc, path: Path, value: str) -> None:
    if not value.startswith("/"):
        doc.issue(path, f"directory must be an absolute path, got {value!r}")
        return
    if "\\" in value:
        doc.issue(path, "backslash in a directory path (Slurm would drop it and skip expansion)")
    if "," in value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        doc.issue(path, "a directory path may not contain a comma or a control character")
    _check_escapes(doc, path, value, "jSu%", "a directory path")


def _read_dirs(doc: _Doc, raw: Any, path: Path) -> Any:
    if isinstance(raw, RawSeq):
        doc.issue(path, "dirs is a comma-separated string; did you mean dir_confs?")
        return _BAD
    value = _read_text(doc, raw, path)
    if value is _BAD or not value:
        return value
    for token in value.split(","):
        if not token:
            doc.issue(path, "empty entry in dirs (a stray comma?)")
        elif token != token.strip():
            doc.issue(path, f"whitespace around {token.strip()!r} in dirs (Slurm keeps it)")
        else:
            _check_dir_path(doc, path, token)
    return value


def _read_flags(doc: _Doc, raw: Any, path: Path) -> Any:
    value = _read_texts(doc, raw, path, cfg.FLAGS)
    if value is _BAD:
        return value
    listed = isinstance(value, list)
    tokens = value if listed else value.split(",")
    if value in ("", []):
        tokens = []
        if path[0] == "node_confs":
            doc.issue(
                path,
                "an empty clone_ns_flags does not clear the defaults' flags (Slurm only "
                "overrides with a non-empty value); write [CLONE_NEWNS] to drop PID and user "
                "namespaces",
                "warning",
            )
    for index, token in enumerate(tokens):
        where = (*path, index) if listed else path
        if not token.strip():
            doc.issue(where, "empty entry in clone_ns_flags (a stray comma?)")
        elif token.strip().upper() not in cfg.CLONE_FLAGS:
            shown = token if listed else token.strip()
            hint = _did_you_mean(token.strip().upper(), cfg.CLONE_FLAGS)
            doc.issue(
                where,
                f"unknown namespace flag {shown!r}{hint}; nsctl knows "
                + ", ".join(cfg.CLONE_FLAGS),
            )
    return value


def _read_hostlist(doc: _Doc, raw: Any, path: Path) -> Any:
    value = _read_texts(doc, raw, path, cfg.HOSTLIST)
    if value is _BAD:
        return value
    listed = isinstance(value, list)
    if value in ("", []):
        doc.issue(path, "must not be empty")
        return value
    for index, item in enumerate(value if listed else [value]):
        where = (*path, index) if listed else path
        if not item:
            doc.issue(where, "must not be empty")
        elif any(c in item for c in " \t\n"):
            doc.issue(
                where,
                f"whitespace in hostlist {item!r}: Slurm splits a hostlist at spaces as at "
                "commas; separate the names with commas only",
            )
        else:
            try:
                hostlist.expand_hostlist(item)
            except hostlist.BadHostlist as exc:
                doc.issue(where, f"bad hostlist {item!r}: {exc}")
    return value


def _read_dir_path(doc: _Doc, raw: Any, path: Path) -> Any:
    value = _read_text(doc, raw, path)
    if value == "":
        doc.issue(path, "must not be empty")
    elif value is not _BAD:
        _check_dir_path(doc, path, value)
    return value


def _read_dir_base(doc: _Doc, raw: Any, path: Path) -> Any:
    value = _read_text(doc, raw, path)
    if value == "":
        doc.issue(path, "must not be empty")
    elif value is not _BAD and _absolute(doc, path, value, "base_path"):
        _check_escapes(doc, path, value, "hn", "base_path")
    return value


def _read_mount_options(doc: _Doc, raw: Any, path: Path) -> Any:
    return _read_text(doc, raw, path)  # checked with its entry, which says whether it is a tmpfs


def _check_mount_options(doc: _Doc, path: Path, options: str, tmpfs: bool) -> None:
    for token in options.split(",") if options else []:
        word = token.strip()
        if not word:
            doc.issue(path, "empty mount option (two commas in a row?)")
            continue
        if token != word:
            lead, trail = token[0].isspace(), token[-1].isspace()
            side = "around" if lead and trail else ("before" if lead else "after")
            flag = word.lower()
            if flag in cfg.MOUNT_FLAGS:
                effect = (
                    f"Slurm reads {token!r} as tmpfs data, not as the {flag} flag (a bind mount "
                    f"then goes without {flag}, a tmpfs mount fails)"
                )
            else:
                effect = (
                    f"Slurm passes {token!r} to the mount as written (a tmpfs mount fails on "
                    "it, a bind mount ignores it)"
                )
            doc.issue(path, f"space {side} {word!r}: {effect}; remove the space")
            continue
        if word.lower() in cfg.MOUNT_FLAGS:
            continue
        key, eq, value = word.partition("=")
        if key not in cfg.TMPFS_DATA_KEYS or not eq:
            known = cfg.MOUNT_FLAGS + tuple(f"{k}=" for k in cfg.TMPFS_DATA_KEYS)
            doc.issue(path, f"unknown mount option {word!r}{_did_you_mean(word, known)}")
        elif not tmpfs:
            doc.issue(path, f"{word!r} is a tmpfs option; it has no effect on a bind mount")
        elif not _DATA_VALUE[key].match(value):
            doc.issue(path, f"bad value for {key}= in {word!r}")


def _read_dir_confs(doc: _Doc, raw: Any, path: Path) -> Any:
    items = _read_list(doc, raw, path)
    if items is _BAD:
        return _BAD
    entries: list[Any] = []
    for index, item in enumerate(items):
        where = (*path, index)
        entry = _read_map(doc, item, where, cfg.DIR_CONF_OPTIONS)
        if entry is _BAD:
            entries.append(None)  # keeps the indices of the others those of the file
            continue
        entries.append(entry)
        dir_path = entry.get("path")
        tmpfs = entry.get("tmpfs") is True or (
            isinstance(dir_path, str) and cfg.normalise_dir(dir_path) == cfg.DEV_SHM
        )
        if "options" in entry:
            _check_mount_options(doc, (*where, "options"), entry["options"], tmpfs)
        if tmpfs and str(entry.get("base_path", "")).startswith("/"):
            doc.issue((*where, "base_path"), "base_path is ignored for tmpfs", "warning")
    return entries


def _read_option_map(doc: _Doc, raw: Any, path: Path) -> Any:
    return _read_map(doc, raw, path, cfg.OPTIONS)


def _read_node_list(doc: _Doc, raw: Any, path: Path) -> Any:
    items = _read_list(doc, raw, path)
    if items is _BAD:
        return _BAD
    entries = [
        _read_map(doc, item, (*path, i), cfg.NODE_CONF_OPTIONS) for i, item in enumerate(items)
    ]
    return [None if entry is _BAD else entry for entry in entries]


_READERS = {
    cfg.BOOL: _read_bool,
    cfg.WAIT: _read_wait,
    cfg.BASE_PATH: _read_base_path,
    cfg.SCRIPT: _read_script,
    cfg.FLAGS: _read_flags,
    cfg.DIRS: _read_dirs,
    cfg.DIR_CONFS: _read_dir_confs,
    cfg.DIR_PATH: _read_dir_path,
    cfg.DIR_BASE: _read_dir_base,
    cfg.MOUNT_OPTIONS: _read_mount_options,
    cfg.HOSTLIST: _read_hostlist,
    cfg.OPTION_MAP: _read_option_map,
    cfg.NODE_LIST: _read_node_list,
}


_NO_CONTENT = (
    "the file has no configuration (it is empty, or only comments): Slurm's slurmd refuses it "
    "and does not start; to turn isolation off, write 'defaults: {base_path: none}'"
)


def _read_document(doc: _Doc, root: Any) -> Any:
    if isinstance(root, Scalar) and root.plain and not root.tag and not root.text:
        doc.issue((), _NO_CONTENT, at=(1, 1))  # a lone "---"
        return None
    doc.marks[()] = _raw_at(root) or (1, 1)
    data = _read_map(doc, root, (), cfg.TOP_OPTIONS)
    return None if data is _BAD else data


# ---------------------------------------------------------------------------------------------
# Rules on what each entry merges to (config.merge: the same code resolve runs)


_LAYOUT_KEYS = ("base_path", "dirs", "dir_confs")


def _check_layout(doc: _Doc, merged: dict[str, cfg.Setting]) -> None:
    """Overlaps and collisions among the directories one entry resolves to."""
    specs = [spec for spec in cfg.dir_specs(merged)[0] if spec.path.startswith("/")]
    setting = merged.get("base_path")
    base = setting.value if setting and isinstance(setting.value, str) else None
    base_where = setting.path if setting else ("defaults", "base_path")
    seen: dict[str, cfg.DirSpec] = {}
    backing: dict[tuple[Optional[str], str], cfg.DirSpec] = {}
    for d in specs:
        norm = cfg.normalise_dir(d.path)
        if norm in seen:
            doc.issue(
                d.where, f"duplicate directory {d.path!r} (already listed as {seen[norm].path!r})"
            )
            continue
        seen[norm] = d
        if norm == cfg.DEV_SHM and d.path != cfg.DEV_SHM:
            doc.issue(
                d.where,
                f"write {cfg.DEV_SHM}, not {d.path!r}: Slurm makes only the exact "
                f"{cfg.DEV_SHM!r} a tmpfs and bind-mounts {d.path!r} like any other directory",
            )
        if base and base.startswith("/"):
            if cfg.is_under(d.path, base) and not d.where:
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
            key = (d.base_path and cfg.normalise_dir(d.base_path), cfg.backing_name(norm))
            if key in backing:
                doc.issue(
                    d.where,
                    f"directories {backing[key].path!r} and {d.path!r} would share the backing "
                    f"directory {key[1]!r}",
                )
            backing.setdefault(key, d)
    for d in specs:
        if d.base_path and d.base_path.startswith("/"):
            for other in specs:
                if cfg.is_under(d.base_path, other.path):
                    doc.issue(
                        (*d.where[:-1], "base_path"),
                        f"base_path {d.base_path!r} is under the private directory {other.path!r}",
                    )


def _check_overrides(doc: _Doc, defaults: dict, options: dict, prefix: Path) -> None:
    """Node-level settings that Slurm's merge would ignore, each a warning."""
    for option in cfg.OPTIONS:
        value = options.get(option.name)
        if option.kind in (cfg.BASE_PATH, cfg.SCRIPT, cfg.DIRS) and value == "":
            kept = defaults.get(option.name) or (option.default if option.kind == cfg.DIRS else "")
            rule = "(Slurm only overrides with a non-empty value)"
            message = f"an empty {option.name} has no effect {rule}; leave it out"
            if kept:
                message = (
                    f"an empty {option.name} does not override the defaults {rule}: "
                    f"{option.name} stays {kept!r} on these nodes"
                )
            doc.issue((*prefix, option.name), message, "warning")
    if options.get("dirs"):
        if "dir_confs" in options:
            doc.issue((*prefix, "dirs"), "dirs is ignored because dir_confs is set", "warning")
        elif "dir_confs" in defaults:
            doc.issue(
                (*prefix, "dirs"),
                "dirs is ignored on these nodes because defaults sets dir_confs, which takes "
                "precedence; set dir_confs here instead",
                "warning",
            )


def _entry_checks(doc: _Doc, data: dict) -> None:
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    entries = data.get("node_confs") if isinstance(data.get("node_confs"), list) else []
    before = len(doc.issues)
    if defaults.get("dirs") and "dir_confs" in defaults:
        doc.issue(("defaults", "dirs"), "dirs is ignored because dir_confs is set", "warning")
    bad_defaults = any(("defaults", key) in doc.bad for key in _LAYOUT_KEYS)
    typed = {"defaults": defaults, "node_confs": entries}
    if not bad_defaults:
        _check_layout(doc, cfg.merge(typed, None))
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("options"), dict):
            continue
        prefix = ("node_confs", index, "options")
        _check_overrides(doc, defaults, entry["options"], prefix)
        if not bad_defaults and not any((*prefix, key) in doc.bad for key in _LAYOUT_KEYS):
            _check_layout(doc, cfg.merge(typed, index))
    # An error in defaults shows up once per entry that inherits it: report each once.
    doc.issues[before:] = list(dict.fromkeys(doc.issues[before:]))


# ---------------------------------------------------------------------------------------------
# Entry points


def schema() -> dict[str, Any]:
    """The JSON Schema shipped for editors (tests/test_schema.py holds it to the option table)."""
    return json.loads(resources.files("nsctl.schema").joinpath("namespace.schema.json").read_text())


def check_text(text: str, file: str) -> Checked:
    """Validate a namespace.yaml text completely; never raises for bad input."""
    root, issues = parse(text, file)
    doc = _Doc(file)
    doc.issues = list(issues)
    data = None if root is None else _read_document(doc, root)
    if root is None and not issues:  # no YAML error: nothing but comments and blank lines
        doc.issue((), _NO_CONTENT, at=(1, 1))
    if isinstance(data, dict):
        _entry_checks(doc, data)
    ordered = sorted(doc.issues, key=lambda i: (i.line, i.column, i.severity != "error"))
    return Checked(file, data, tuple(dict.fromkeys(ordered)))


def check_file(path: str, display: Optional[str] = None) -> Checked:
    """Read and validate a file; an unreadable file is one error."""
    display = display or path
    text = read_text(path, display)
    if isinstance(text, Checked):
        return text
    return check_text(text, display)


# ---------------------------------------------------------------------------------------------
# Per-node report


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
    multiple: dict[tuple[str, ...], list[str]] = {}
    used: set[int] = set()
    # node -> the entries naming it, in file order: one pass over the entries, not one per node
    entries_of: dict[str, list[int]] = {}
    for index, names in enumerate(names_by_entry):
        for name in names:
            entries_of.setdefault(name, []).append(index)

    def each_node() -> Iterator[cfg.NodeConfig]:  # one at a time: a report may cover 100,000 nodes
        for node in dict.fromkeys(nodes):
            matches = entries_of.get(node, [])
            used.update(matches[:1])
            if len(matches) > 1:
                multiple.setdefault(tuple(f"node_confs[{i}]" for i in matches), []).append(node)
            first = matches[0] if matches else None
            yield cfg.resolve(data, node, hostnames.get(node, node), index=first)

    groups = node_groups(each_node(), hostlist.collect_hostlist)
    return NodeReport(
        groups=groups,
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
