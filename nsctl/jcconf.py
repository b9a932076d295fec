"""job_container.conf, the file of Slurm's namespace/tmpfs (job_container/tmpfs before 25.11):
read it exactly as Slurm reads it, check it strictly, and resolve it for one node into the same
``NodeConfig`` namespace.yaml gives, recording the line each value came from.

How Slurm reads it (read_jcconf.c over the generic parser in src/common/parse_config.c;
paraphrased from the source, never copied):

- Physical lines: an unescaped ``#`` starts a comment; an odd number of backslashes at the end
  of a line (trailing blanks allowed) joins the next line on, with nothing in between; then
  every backslash is dropped and the character after it kept (``\\#`` is a ``#``).
- A line starting with ``include`` and a blank names another file (nsctl refuses it).
- Each line is ``Key=Value`` pairs: keys are letters, digits, ``_`` and ``.``, matched without
  regard to case; blanks may surround ``=``; a value is ``"quoted"`` (no quote inside) or runs
  to the next blank; ``Key=`` with nothing after it is a parse error. ``+=`` and the like are
  read as ``=``.
- A line whose first key is ``NodeName=HOSTLIST`` or ``BasePath=PATH`` holds more pairs (the
  line keys); every other line holds exactly one global key. Anything else on a line (an
  unknown key, a second global, stray text, a value that does not convert) makes slurmd exit.
- A ``BasePath=`` line applies to every node, a ``NodeName=`` line to the nodes of its hostlist
  (a malformed one to none of the nodes meant: Slurm reads ``n[1-`` as the name ``n]``). Every
  line that applies is applied in file order, each key it has overriding the earlier value: the
  last match wins, key by key. A global counts only for a key no applying line set. A
  ``NodeName=`` line that applies but has no ``BasePath`` makes slurmd exit. InitScript exists
  on lines only; CloneNSScript and CloneNSEpilog alone on a line are accepted and never read.
- Then: no BasePath on a node, or one starting with ``none`` (any case), turns the plugin off
  there (24.05 and later); a Dirs entry that starts with BasePath (a plain prefix) makes slurmd
  exit; ``/dev/shm`` is private when the Dirs text holds it (a case-insensitive search, then a
  comma or the end).

``KEYS`` is the one table of keys: where each may stand, what it becomes in ``NodeConfig``,
its default and the first Slurm release that reads it (``--slurm-version`` refuses what an older
release reads differently). Pure and import-light: text in, records out, no YAML, no I/O; the
Prolog's cold path imports it through loader.py.
"""

from __future__ import annotations

import difflib
import re

from . import config as cfg
from .deps import dependency
from .issues import Checked, Issue, NodeReport, node_groups, read_text
from .record import Record

hostlist = dependency("hostlist")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Optional

Version = tuple  # (major, minor) or (major, minor, patch): 22.05 is (22, 5)

FIRST = (20, 11, 5)  # job_container/tmpfs first shipped in 20.11.5
NEWEST = (26, 5)  # the newest release whose reader nsctl was checked against
EXPANDS = (23, 2, 4)  # %h and %n in BasePath (23.02.0 to 23.02.3 swapped them)
TURNS_OFF = (24, 5)  # no BasePath, or BasePath=none..., turns the plugin off

# Where a key may stand.
STARTS = "starts"  # begins a line: NodeName= (its nodes), BasePath= (every node)
GLOBAL = "global"  # alone on a line: counts where no applying line set it
IGNORED = "ignored"  # alone on a line it is accepted and never read
LINE = "line"  # only on a NodeName= or BasePath= line

NODE, BASE = "node", "base"  # the two kinds of line that apply to nodes


class Key(Record):
    name: str  # as Slurm's tables spell it (matched without regard to case)
    kind: str  # a config.py kind: how the value is read
    option: str  # the NodeConfig field (and namespace.yaml key) it becomes
    since: Version  # the first release that reads it
    alone: str  # STARTS, GLOBAL, IGNORED or LINE
    default: Any = None


KEYS = (
    Key("NodeName", cfg.HOSTLIST, "", FIRST, STARTS),
    Key("BasePath", cfg.BASE_PATH, "base_path", FIRST, STARTS),
    Key("AutoBasePath", cfg.BOOL, "auto_base_path", FIRST, GLOBAL, False),
    Key("InitScript", cfg.SCRIPT, "init_script", FIRST, LINE),
    Key("Dirs", cfg.DIRS, "dirs", (23, 2), GLOBAL, cfg.DEFAULT_DIRS),
    Key("Shared", cfg.BOOL, "shared", (23, 2), GLOBAL, False),
    Key("EntireStepInNS", cfg.BOOL, "entire_step_in_ns", (24, 11), GLOBAL, False),
    Key("CloneNSScript", cfg.SCRIPT, "clone_ns_script", (24, 11), IGNORED),
    Key("CloneNSEpilog", cfg.SCRIPT, "clone_ns_epilog", (24, 11), IGNORED),
    Key("CloneNSScript_Wait", cfg.WAIT, "clone_ns_script_wait", (24, 11), GLOBAL, cfg.DEFAULT_WAIT),
    Key("CloneNSEpilog_Wait", cfg.WAIT, "clone_ns_epilog_wait", (24, 11), GLOBAL, cfg.DEFAULT_WAIT),
)
KEY = {key.name.lower(): key for key in KEYS}
LINE_KEYS = tuple(key.name for key in KEYS if key.name != "NodeName")
OPTION_KEY = {key.option: key for key in KEYS if key.option}

TRUE_WORDS = ("yes", "up", "true", "1")  # s_p_handle_boolean, any case
FALSE_WORDS = ("no", "down", "false", "0")

_BLANK = " \t\n\r\f\v"  # C's isspace in the C locale
_B = "[ \t\n\r\f\v]"
_PAIR = re.compile(
    rf'{_B}*([A-Za-z0-9_.]+){_B}*([-*+/]?)={_B}*(?:"([^"]*)"|([^ \t\n\r\f\v]+))(?={_B}|\Z)'
)
_SHM = cfg.DEV_SHM


class Pair(Record):
    written: str  # the key as written
    key: Optional[Key]  # None when unknown
    operator: str  # "", or + - * / before the "="
    value: str
    end: int  # where the pair ends in its line


class Line(Record):
    """One line that applies to nodes (``kind`` NODE or BASE), or a global (kind GLOBAL)."""

    number: int  # its first physical line, from 1
    kind: str
    label: str  # "NodeName=n[1-4]", "BasePath=/x", "Dirs=/tmp": how messages name it
    values: Mapping[str, Any]  # Key.name -> the value, read; only keys read without error
    nodes: frozenset = frozenset()  # a NodeName= line's nodes

    @property
    def origin(self) -> str:
        return f"line {self.number}: {self.label}"


class Doc(Record):
    """A job_container.conf as Slurm reads it, every value read (``Checked.data``)."""

    lines: tuple[Line, ...]  # the NodeName= and BasePath= lines, in file order
    globals: Mapping[str, Line]  # Key.name -> the global line that sets it

    @property
    def base_lines(self) -> tuple[int, ...]:
        return tuple(i for i, line in enumerate(self.lines) if line.kind == BASE)


EMPTY = Doc((), {})


# ---------------------------------------------------------------------------------------------
# Versions


def parse_version(text: str) -> Version:
    """``22.05`` or ``22.05.8`` (a Slurm release); ValueError otherwise."""
    match = re.fullmatch(r"(\d{2})\.(\d{1,2})(?:\.(\d+))?", text.strip())
    if not match:
        raise ValueError(f"not a Slurm version: {text!r} (write it as 22.05 or 22.05.8)")
    version = tuple(int(part) for part in match.groups() if part is not None)
    if version[:2] < FIRST[:2] or (len(version) == 3 and version < FIRST):
        raise ValueError(
            f"Slurm {text} has no job_container/tmpfs (it first shipped in {show(FIRST)})"
        )
    return version


def show(version: Version) -> str:
    major, minor, *patch = version
    return f"{major}.{minor:02d}" + "".join(f".{p}" for p in patch)


def reads_older(version: Optional[Version], since: Version) -> bool:
    """Whether some release ``version`` names (all of a series when it has no patch level)
    is older than ``since``."""
    if version is None:
        return False
    return (*version, 0)[:3] < (*since, 0)[:3]


# ---------------------------------------------------------------------------------------------
# Slurm's conversions (parse_value.c), for what messages say Slurm would do


def slurm_uint32(text: str) -> Optional[int]:
    """What Slurm stores for ``text`` at a uint32 key: strtoul with base 0 (0x is hexadecimal,
    a leading 0 octal), an optional k (x1024), UNLIMITED and INFINITE; None: refused."""
    if text.lower() in ("unlimited", "infinite"):
        return 0xFFFFFFFF
    if text.startswith("-"):
        return None
    match = re.match(r"[ \t\n\r\f\v]*([-+]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    number, rest = 0, text
    if match:
        digits = match.group(2)
        base = 16 if digits[:2].lower() == "0x" else (8 if digits.startswith("0") else 10)
        number = int(digits, base)
        if match.group(1) == "-":
            number = (-number) % 2**64
        rest = text[match.end() :]
    if rest[:1] in ("k", "K"):
        number, rest = number * 1024, rest[1:]
    if rest or number >= 2**64 or number > 0xFFFFFFFF:
        return None
    return number


def _wait_effect(stored: int) -> str:
    # namespace/tmpfs has no "0 means 10": a limit of 0 ms is no limit in the script runner.
    return "wait without any time limit" if stored == 0 else cfg.slurm_wait(stored)


# ---------------------------------------------------------------------------------------------
# Reading the text


def logical_lines(text: str) -> list[tuple[int, str, list[str]]]:
    """(first physical line, the line as Slurm parses it, characters a backslash was dropped
    before that are neither # nor a backslash), for every line Slurm would parse."""
    physical = text.split("\n")
    pieces = [piece + "\n" for piece in physical[:-1]] + ([physical[-1]] if physical[-1] else [])
    result = []
    index = 0
    while index < len(pieces):
        start, joined = index + 1, ""
        while index < len(pieces):
            kept, continued = _strip_continuation(_strip_comment(pieces[index]))
            joined += kept
            index += 1
            if not continued:
                break
        line, dropped = _unescape(joined)
        if line:
            result.append((start, line, dropped))
    return result


def _strip_comment(piece: str) -> str:
    backslashes = 0
    for index, char in enumerate(piece):
        if char == "#" and backslashes % 2 == 0:
            return piece[:index]
        backslashes = backslashes + 1 if char == "\\" else 0
    return piece


def _strip_continuation(piece: str) -> tuple[str, bool]:
    """An odd run of backslashes at the end (blanks after it allowed) continues the line: the
    last backslash and everything after it go."""
    backslashes, index = 0, len(piece) - 1
    while index >= 0:
        if piece[index] == "\\":
            backslashes += 1
        elif not (piece[index] in _BLANK and backslashes == 0):
            break
        index -= 1
    if backslashes % 2 == 1:
        return piece[: index + backslashes], True
    return piece, False


def _unescape(line: str) -> tuple[str, list[str]]:
    out, dropped, index = [], [], 0
    while index < len(line):
        if line[index] == "\\":
            index += 1
            if index == len(line):
                break
            if line[index] not in "#\\\n":
                dropped.append(line[index])
        out.append(line[index])
        index += 1
    return "".join(out), dropped


def _pairs(line: str, start: int = 0) -> tuple[list[Pair], int]:
    """The key=value pairs from ``start`` on, and where they stop."""
    pairs, position = [], start
    while True:
        match = _PAIR.match(line, position)
        if not match:
            return pairs, position
        written, operator, quoted, bare = match.groups()
        value = quoted if quoted is not None else bare
        pairs.append(Pair(written, KEY.get(written.lower()), operator, value, match.end()))
        position = match.end()


# ---------------------------------------------------------------------------------------------
# The checks


class _Report:
    def __init__(self, file: str):
        self.file = file
        self.issues: list[Issue] = []

    def issue(self, number: int, label: str, message: str, severity: str = "error") -> None:
        self.issues.append(Issue(self.file, number, 0, label, message, severity))


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    by_lower = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[match[0]]}'?)" if match else ""


def _control(value: str) -> bool:
    return any(ord(c) < 0x20 or c == "\x7f" for c in value)


def _read_bool(value: str) -> tuple[Any, Optional[str]]:
    if value.lower() in TRUE_WORDS:
        return True, None
    if value.lower() in FALSE_WORDS:
        return False, None
    return None, (
        f"expected a boolean (yes or no), got {value!r}; Slurm refuses it too "
        f'("{value}" is not a valid option)'
    )


def _read_wait(value: str) -> tuple[Any, Optional[str]]:
    stored = slurm_uint32(value)
    if value.isascii() and value.isdigit() and (value == "0" or value[0] != "0"):
        number = int(value)
        if number == 0:
            return None, (
                "0 is no time limit in namespace/tmpfs (namespace/linux reads it as "
                f"{cfg.DEFAULT_WAIT}); nsctl needs a limit: give 1 to {cfg.MAX_WAIT} seconds"
            )
        if number <= cfg.MAX_WAIT:
            return number, None
        effect = "Slurm refuses it too" if stored is None else f"Slurm would {_wait_effect(stored)}"
        return None, f"must be at most {cfg.MAX_WAIT}, got {value}; {effect}"
    if stored is None:
        return None, f"expected a whole number of seconds, got {value!r}; Slurm refuses it too"
    if 1 <= stored <= cfg.MAX_WAIT:
        how = " (a leading 0 means octal)" if re.match(r"[0-7]+$", value) else ""
        return None, f"Slurm reads {value!r} as {stored}{how}; write {stored}"
    return None, (
        f"expected a whole number of seconds, got {value!r}; Slurm would read it as {stored} "
        f"and {_wait_effect(stored)}"
    )


def _not_absolute(name: str, value: str) -> str:
    hint = " (a # starts a comment even inside quotes: write \\#)" if value[:1] == '"' else ""
    return f"{name} must be an absolute path, got {value!r}{hint}"


def _read_script(name: str, value: str) -> tuple[Any, Optional[str]]:
    if not value:
        return None, f'an empty {name}: Slurm would try to run "" and fail every job'
    if not value.startswith("/"):
        return None, _not_absolute(name, value)
    if _control(value):
        return None, f"{name} may not contain a control character"
    return value, None


def _escape_problem(value: str) -> Optional[str]:
    for match in re.finditer(r"%(.?)", value, re.DOTALL):
        letter = match.group(1)
        if letter not in ("h", "n") or not letter:
            problem = f"unknown escape %{letter} in" if letter else "a lone % at the end of"
            return f"{problem} BasePath (nsctl expands %h and %n; Slurm leaves others as written)"
    return None


def _read_base_path(value: str) -> tuple[Any, Optional[str]]:
    if not value:
        return None, 'an empty BasePath: Slurm would put every job directory in "/"'
    if value.lower() == "none":
        return value, None
    if value[:4].lower() == "none":
        return None, (
            f"BasePath {value!r} is neither 'none' nor an absolute path (Slurm would treat "
            "anything starting with 'none' as none and silently turn the plugin off)"
        )
    if not value.startswith("/"):
        return None, _not_absolute("BasePath", value)
    if _control(value):
        return None, "BasePath may not contain a control character"
    return value, _escape_problem(value)


def dir_tokens(value: str) -> list[str]:
    """The Dirs entries as Slurm splits them (strtok: empty entries vanish)."""
    return [token for token in value.split(",") if token]


def _read_dirs(value: str) -> tuple[Any, list[tuple[str, str]]]:
    """The Dirs text, and (severity, message) for each problem."""
    problems: list[tuple[str, str]] = []
    if not value:
        problems.append(
            (
                "warning",
                "Dirs is empty: jobs get their own mount namespace and no private directory",
            )
        )
        return value, problems
    seen: dict[str, str] = {}
    backing: dict[str, str] = {}
    for token in value.split(","):
        if not token:
            problems.append(("error", "empty entry in Dirs (a stray comma?)"))
            continue
        if token != token.strip(_BLANK):
            problems.append(
                ("error", f"blank around {token.strip(_BLANK)!r} in Dirs (Slurm keeps it)")
            )
            continue
        if not token.startswith("/"):
            problems.append(("error", _not_absolute("a directory", token)))
            continue
        if "\\" in token or _control(token):
            problems.append(
                ("error", f"{token!r}: a directory may not hold a backslash or a control character")
            )
            continue
        if token != _SHM and _SHM in token.lower():
            problems.append(
                (
                    "error",
                    f"{token!r} holds /dev/shm: namespace/tmpfs decides whether /dev/shm is "
                    "private by a case-insensitive search of the whole Dirs text, which this "
                    "entry misleads; list /dev/shm exactly as /dev/shm",
                )
            )
            continue
        norm = cfg.normalise_dir(token)
        if norm in seen:
            problems.append(
                ("error", f"duplicate directory {token!r} (already listed as {seen[norm]!r})")
            )
            continue
        seen[norm] = token
        if norm != _SHM:
            name = cfg.backing_name(norm)
            if name in backing:
                problems.append(
                    (
                        "error",
                        f"directories {backing[name]!r} and {token!r} would share the backing "
                        f"directory {name!r}",
                    )
                )
            backing.setdefault(name, token)
    return value, problems


def _read_hostlist(value: str) -> tuple[Any, list[tuple[str, str]]]:
    if not value:
        return None, [("error", "an empty hostlist: this line applies to no node")]
    if any(c in value for c in _BLANK):
        return None, [
            (
                "error",
                f"blank in hostlist {value!r}: Slurm splits a hostlist at blanks as at commas; "
                "separate the names with commas only",
            )
        ]
    try:
        names = frozenset(hostlist.expand_hostlist(value))
    except hostlist.BadHostlist as exc:
        return None, [
            (
                "error",
                f"bad hostlist {value!r}: {exc} (Slurm reads no range in it: the line applies "
                "to none of the nodes meant)",
            )
        ]
    problems = []
    if value.upper() in ("ALL", "DEFAULT"):
        problems.append(
            (
                "warning",
                f"NodeName={value} names a node called {value!r}: job_container.conf has no "
                f"{value.upper()} (a BasePath= line applies to every node)",
            )
        )
    return names, problems


def _read_value(key: Key, value: str) -> tuple[Any, list[tuple[str, str]]]:
    if key.kind == cfg.DIRS:
        return _read_dirs(value)
    if key.kind == cfg.HOSTLIST:
        return _read_hostlist(value)
    if key.kind == cfg.BOOL:
        typed, problem = _read_bool(value)
    elif key.kind == cfg.WAIT:
        typed, problem = _read_wait(value)
    elif key.kind == cfg.BASE_PATH:
        typed, problem = _read_base_path(value)
    else:
        typed, problem = _read_script(key.name, value)
    return typed, [("error", problem)] if problem else []


def _label(pair: Pair) -> str:
    name = pair.key.name if pair.key else pair.written
    return f"{name}={pair.value}"


def _unknown(pair: Pair, on_line: bool) -> str:
    if pair.key is not None and pair.key.name == "NodeName":
        return "NodeName must begin its line (Slurm refuses it anywhere else)"
    if pair.key is not None and pair.key.alone == LINE and not on_line:
        return (
            f"{pair.key.name} may only stand on a NodeName= or BasePath= line (alone, Slurm "
            f'refuses it: "Parsing error at unrecognized key: {pair.written}")'
        )
    choices = LINE_KEYS if on_line else (k.name for k in KEYS if k.alone != LINE)
    return f"unknown key '{pair.written}'{_did_you_mean(pair.written, choices)}"


def _read_line(report: _Report, number: int, text: str, dropped: Sequence[str]) -> Optional[Line]:
    """One logical line, every problem reported; the Line with what could be read."""
    if text[:7].lower() == "include" and text[7:8] and text[7] in _BLANK:
        report.issue(
            number,
            "",
            "Include is not supported by nsctl: put the lines of the included file here",
        )
        return None
    pairs, end = _pairs(text)
    if not pairs:
        if text.strip(_BLANK):
            report.issue(number, "", _not_a_pair(text.strip(_BLANK)))
        return None
    first = pairs[0]
    label = _label(first)
    for character in dict.fromkeys(dropped):
        report.issue(
            number,
            label,
            f"a backslash before {character!r} is dropped (Slurm's escapes are \\# and \\\\)",
            "warning",
        )
    if first.key is None or first.key.alone == LINE:
        report.issue(number, label, _unknown(first, on_line=False))
        return None
    if first.key.alone == STARTS:
        leftover = text[end:].strip(_BLANK)
        if leftover:
            report.issue(number, label, _not_a_pair(leftover, after=True))
    elif text[first.end :].strip(_BLANK):
        if len(pairs) > 1:
            report.issue(
                number,
                label,
                f"one key per line outside NodeName= and BasePath= lines: Slurm refuses "
                f"'{_label(pairs[1])}' after {first.key.name}= (\"Parse error\")",
            )
        else:
            report.issue(number, label, _not_a_pair(text[first.end :].strip(_BLANK), True))
        pairs = pairs[:1]
    values: dict[str, Any] = {}
    nodes: frozenset = frozenset()
    for pair in pairs:
        if pair is not first and (pair.key is None or pair.key.name == "NodeName"):
            report.issue(number, label, _unknown(pair, on_line=True))
            continue
        key = pair.key
        assert key is not None
        if pair.operator:
            report.issue(
                number,
                label,
                f"'{pair.written}{pair.operator}=': Slurm reads it as '{key.name}=' (this file has "
                "no operators); write '='",
            )
            continue
        if key.name in values:
            # A BasePath= line's own value wins over a BasePath later on it; else the last.
            which = "the first" if key is first.key else "the last"
            report.issue(number, label, f"{key.name} given twice on this line (Slurm uses {which})")
            continue
        typed, problems = _read_value(key, pair.value)
        for severity, message in problems:
            # The label names the line's first key; any other key is named in the message.
            named = message
            if pair is not first and not message.startswith(key.name):
                named = f"{key.name}: {message}"
            report.issue(number, label, named, severity)
        if any(severity == "error" for severity, _ in problems) or typed is None:
            continue
        if key.name == "NodeName":
            nodes = typed
        else:
            values[key.name] = typed
    kind = {"NodeName": NODE, "BasePath": BASE}.get(first.key.name, GLOBAL)
    if (
        kind == NODE
        and "BasePath" not in values
        and not any(p.key is not None and p.key.name == "BasePath" for p in pairs)
    ):
        report.issue(
            number,
            label,
            'no BasePath on this NodeName= line: slurmd exits on its nodes ("empty basepath '
            'detected")',
        )
    if kind == GLOBAL and first.key.alone == IGNORED:
        report.issue(
            number,
            label,
            f"{first.key.name} alone on a line is accepted and never read by Slurm: put it on "
            "the NodeName= or BasePath= lines it is for",
        )
        return None
    return Line(number, kind, label, values, nodes)


def _not_a_pair(text: str, after: bool = False) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    match = re.match(r"([A-Za-z0-9_.]+)[ \t]*=[ \t]*$", text)
    if match:
        return (
            f"'{match.group(1)}=' has no value: Slurm refuses the line (\"Parse error\"); to set "
            'an empty text, write ""'
        )
    where = "unexpected text" if after else "not a Key=Value pair"
    return f'{where}: {shown!r} (Slurm refuses the line: "Parse error")'


def parse(text: str, file: str) -> tuple[Doc, list[Issue]]:
    """Every line read (problems reported, never raised) into a Doc of what could be read."""
    report = _Report(file)
    lines: list[Line] = []
    globals_: dict[str, Line] = {}
    for number, line_text, dropped in logical_lines(text):
        line = _read_line(report, number, line_text, dropped)
        if line is None:
            continue
        if line.kind != GLOBAL:
            lines.append(line)
            continue
        for name in line.values:
            if name in globals_:
                report.issue(
                    number,
                    line.label,
                    f"{name} is already set on line {globals_[name].number} (Slurm uses the last)",
                )
            else:
                globals_[name] = line
    return Doc(tuple(lines), globals_), report.issues


# ---------------------------------------------------------------------------------------------
# Resolution


class Setting(Record):
    value: Any
    line: Optional[Line]  # None: the built-in default

    @property
    def origin(self) -> str:
        return self.line.origin if self.line else cfg.BUILTIN


def applying(doc: Doc, node: str) -> tuple[int, ...]:
    """The lines that apply to ``node``, in file order."""
    return tuple(i for i, line in enumerate(doc.lines) if line.kind == BASE or node in line.nodes)


def merge(doc: Doc, indices: Iterable[int]) -> dict[str, Setting]:
    """Slurm's merge: the lines ``indices`` in order, each key overriding (the last match wins,
    key by key), then the globals for what no line set. By option name; only what is set."""
    merged: dict[str, Setting] = {}
    for index in indices:
        line = doc.lines[index]
        for name, value in line.values.items():
            merged[KEY[name.lower()].option] = Setting(value, line)
    for name, line in doc.globals.items():
        option = KEY[name.lower()].option
        if option not in merged and name in line.values:
            merged[option] = Setting(line.values[name], line)
    return merged


def dir_paths(dirs: str) -> list[str]:
    """The private directories of a Dirs text, as dir_confs paths: normalised, a literal %
    written %% (namespace/tmpfs expands nothing in them), /dev/shm last (tmpfs mounts it after
    the others)."""
    paths = [cfg.normalise_dir(token) for token in dir_tokens(dirs)]
    paths = [p for p in paths if p != _SHM] + [p for p in paths if p == _SHM]
    return [p.replace("%", "%%") for p in paths]


def entry_label(doc: Doc, indices: Sequence[int]) -> str:
    """How a report names the lines that apply: "line 3", "lines 2, 5" ("": none)."""
    numbers = [str(doc.lines[i].number) for i in indices]
    if not numbers:
        return ""
    return ("line " if len(numbers) == 1 else "lines ") + ", ".join(numbers)


def resolve(
    doc: Optional[Doc],
    node: str,
    hostname: Optional[str] = None,
    *,
    indices: Optional[Sequence[int]] = None,
) -> cfg.NodeConfig:
    """What ``node`` gets from a checked job_container.conf, with where each value came from.

    ``indices`` are the lines that apply (``applying``), when the caller knows them already.
    """
    doc = doc or EMPTY
    hostname = hostname or node
    indices = applying(doc, node) if indices is None else indices
    merged = merge(doc, indices)
    entry = entry_label(doc, indices)
    tmpfs = cfg.TMPFS_PLUGIN
    base = merged.get("base_path")
    if base is None:
        reason = "no NodeName= or BasePath= line applies to this node"
        if not doc.lines and not doc.globals:
            reason = "job_container.conf sets nothing"
        return cfg.NodeConfig(node, entry, False, reason, plugin=tmpfs)
    origins = {option: setting.origin for option, setting in merged.items() if option != "dirs"}
    if base.value[:4].lower() == "none":
        reason = f"BasePath is none ({base.origin})"
        return cfg.NodeConfig(node, entry, False, reason, origins=origins, plugin=tmpfs)
    dirs = merged.get("dirs", Setting(cfg.DEFAULT_DIRS, None))
    dir_confs = tuple(cfg.DirConf(path, path == _SHM) for path in dir_paths(dirs.value))
    values = {}
    for key in KEYS:
        if key.option and key.option not in ("base_path", "dirs"):
            setting = merged.get(key.option)
            values[key.option] = key.default if setting is None else setting.value
    origins["dir_confs"] = dirs.origin
    origins["clone_ns_flags"] = "namespace/tmpfs (a mount namespace only)"
    names = (*cfg.RESOLVED_KEYS, "entire_step_in_ns")
    return cfg.NodeConfig(
        node=node,
        entry=entry,
        enabled=True,
        base_path=cfg.normalise_dir(cfg.expand_node_escapes(base.value, node, hostname)),
        dir_confs=dir_confs,
        origins={name: origins.get(name, cfg.BUILTIN) for name in names},
        plugin=tmpfs,
        **values,
    )


# ---------------------------------------------------------------------------------------------
# Rules on what each node resolves to


def signatures(doc: Doc) -> dict[tuple[int, ...], list[str]]:
    """Each distinct set of applying lines, with the named nodes it is for; the set of the
    nodes no NodeName= line names (the BasePath= lines alone) is there too, with no node."""
    base = doc.base_lines
    own: dict[str, list[int]] = {}
    for index, line in enumerate(doc.lines):
        for name in line.nodes:
            own.setdefault(name, []).append(index)
    groups: dict[tuple[int, ...], list[str]] = {base: []}
    for name, indices in own.items():
        groups.setdefault(tuple(sorted(base + tuple(indices))), []).append(name)
    return groups


def _layout(report: _Report, merged: Mapping[str, Setting], node: Optional[str]) -> None:
    base, dirs = merged.get("base_path"), merged.get("dirs")
    if base is None or base.value[:4].lower() == "none":
        return
    dirs = dirs or Setting(cfg.DEFAULT_DIRS, None)
    where = base.line
    # Slurm compares the expanded BasePath (of this node) with each entry, as plain text.
    expanded = cfg.expand_node_escapes(base.value, node, node) if node else base.value
    came = f"Dirs of {dirs.origin}" if dirs.line else f"the default Dirs ({cfg.DEFAULT_DIRS})"
    for token in dir_tokens(dirs.value):
        if token.startswith(expanded):
            report.issue(
                where.number,
                where.label,
                f"{came} has {token!r}, which starts with BasePath: Slurm refuses the file "
                f'("BasePath({expanded}) cannot also be in Dirs."; its test is a plain prefix)',
            )
        elif cfg.is_under(token, base.value):
            report.issue(where.number, where.label, f"{came} has {token!r}, at or under BasePath")
        elif cfg.is_under(base.value, token):
            report.issue(
                where.number,
                where.label,
                f"BasePath is under the private directory {token!r} ({came}): the job's own "
                "mount would hide it",
            )


def _version_rules(
    report: _Report,
    doc: Doc,
    text_lines: Sequence[tuple[int, str, list[str]]],
    version: Version,
    nodes: Sequence[str],
) -> None:
    """What Slurm ``version`` reads differently from nsctl (which reads it as 24.11 and later)."""
    name = show(version)
    for number, text, _ in text_lines:
        pairs, _ = _pairs(text)
        label = _label(pairs[0]) if pairs else ""
        for pair in pairs:
            if pair.key is not None and reads_older(version, pair.key.since):
                report.issue(
                    number,
                    label,
                    f"Slurm {name} does not know {pair.key.name} (read from "
                    f'{show(pair.key.since)}): its slurmd refuses the file ("Parsing error at '
                    f'unrecognized key: {pair.written}")',
                )
    for line in doc.lines:
        base = line.values.get("BasePath")
        if not isinstance(base, str):
            continue
        if ("%h" in base or "%n" in base) and reads_older(version, EXPANDS):
            report.issue(
                line.number,
                line.label,
                f"Slurm {name} does not expand %h and %n in BasePath as nsctl does (from "
                f"{show(EXPANDS)}; 23.02.0 to 23.02.3 swap them): write the path out",
            )
        if base[:4].lower() == "none" and reads_older(version, TURNS_OFF):
            report.issue(
                line.number,
                line.label,
                f"Slurm {name} takes BasePath={base} for a relative directory named {base!r} "
                f"(it turns the plugin off from {show(TURNS_OFF)})",
            )
    if not reads_older(version, TURNS_OFF) or doc.base_lines:
        return
    uncovered = [node for node in nodes if not applying(doc, node)]
    consequence = (
        f'Slurm {name}\'s slurmd exits there ("Configuration for this node not found"; from '
        f"{show(TURNS_OFF)} the plugin is off on such nodes)"
    )
    if uncovered:
        report.issue(
            0,
            "",
            f"no NodeName= or BasePath= line applies to {hostlist.collect_hostlist(uncovered)}: "
            + consequence,
        )
    elif not nodes:
        report.issue(
            0,
            "",
            "no BasePath= line: on the nodes no NodeName= line names, " + consequence,
            "warning",
        )


def check_text(
    text: str,
    file: str,
    slurm_version: Optional[Version] = None,
    nodes: Sequence[str] = (),
) -> Checked:
    """Check a job_container.conf completely; never raises for bad input. ``slurm_version``
    also refuses what that release reads differently; ``nodes`` are the nodes it must serve
    (an older release's slurmd exits on a node no line applies to)."""
    doc, issues = parse(text, file)
    report = _Report(file)
    report.issues = issues
    for indices, names in signatures(doc).items():
        _layout(report, merge(doc, indices), names[0] if names else None)
    if slurm_version is not None:
        _version_rules(report, doc, logical_lines(text), slurm_version, nodes)
    ordered = sorted(report.issues, key=lambda i: (i.line, i.severity != "error"))
    return Checked(file, doc, tuple(dict.fromkeys(ordered)))


def check_file(
    path: str,
    display: Optional[str] = None,
    slurm_version: Optional[Version] = None,
    nodes: Sequence[str] = (),
) -> Checked:
    """Read and check a file; an unreadable file is one error."""
    display = display or path
    text = read_text(path, display)
    if isinstance(text, Checked):
        return text
    return check_text(text, display, slurm_version, nodes)


# ---------------------------------------------------------------------------------------------
# Per-node report


def no_effect(doc: Doc) -> list[dict[str, Any]]:
    """Lines every key of which a later applying line sets again, on every node they apply to."""
    overridden: dict[int, bool] = {}
    for indices in signatures(doc):
        for position, index in enumerate(indices):
            later: set[str] = set()
            for after in indices[position + 1 :]:
                later.update(doc.lines[after].values)
            gone = set(doc.lines[index].values) <= later
            overridden[index] = overridden.get(index, True) and gone
    result = []
    for index, gone in sorted(overridden.items()):
        line = doc.lines[index]
        if gone and (line.kind == BASE or line.nodes):
            nodes = hostlist.collect_hostlist(line.nodes) if line.nodes else "every node"
            result.append({"entry": f"line {line.number}", "nodes": nodes})
    return result


def node_report(doc: Optional[Doc], nodes: Iterable[str], hostnames: Optional[dict] = None):
    """What each node resolves to, folded back into hostlists. ``doc`` must be valid."""
    doc = doc or EMPTY
    hostnames = hostnames or {}
    base = doc.base_lines
    own: dict[str, list[int]] = {}
    for index, line in enumerate(doc.lines):
        for name in line.nodes:
            own.setdefault(name, []).append(index)
    used: set[int] = set()

    def each_node():  # resolved one at a time: a report may cover 100,000 nodes
        for node in dict.fromkeys(nodes):
            indices = tuple(sorted(base + tuple(own.get(node, ()))))
            used.update(own.get(node, ()))
            yield resolve(doc, node, hostnames.get(node, node), indices=indices)

    groups = node_groups(each_node(), hostlist.collect_hostlist)
    return NodeReport(
        groups=groups,
        shadowed=tuple(no_effect(doc)),
        multiple=(),
        unused=tuple(
            f"line {line.number}"
            for index, line in enumerate(doc.lines)
            if line.kind == NODE and index not in used
        ),
    )
