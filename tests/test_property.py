"""Property-based: no document, however odd, makes the validator raise; every wrong type or shape
at every key it knows gives a located message; and whatever it accepts, the resolver can resolve
for any node and the cache format can carry."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nsctl import config
from nsctl import validate as checker

EXAMPLE = (Path(__file__).parent.parent / "examples" / "namespace.yaml").read_text()
KEYS = sorted(
    set(config.TOP_KEYS + config.OPTION_KEYS + config.NODE_CONF_KEYS + config.DIR_CONF_KEYS)
)
# 150 examples per test keeps the file at a few seconds; raise it for a deeper search, e.g.
# NSCTL_HYPOTHESIS_EXAMPLES=5000 python3 -m pytest tests/test_property.py
FAST = settings(
    max_examples=int(os.environ.get("NSCTL_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

# Scalars that reach the interesting branches: paths, escapes, flags, option tokens, hostlists.
PATHS = st.sampled_from(
    [
        "/tmp",
        "/tmp/",
        "/dev/shm",
        "/var/ns",
        "/var/ns/x",
        "/a/b",
        "/a_b",
        "/s/%u/%j",
        "/s/%x",
        "/p/%",
        "/v/%h/%n",
        "none",
        "NONE",
        "nonexistent",
        "rel/path",
        "",
        "/b\\s",
    ]
)
WORDS = st.sampled_from(
    [
        "CLONE_NEWPID",
        "clone_newuser",
        "CLONE_NEWNET",
        "CLONE_NEWNS,CLONE_NEWPID",
        "noexec,size=1g",
        "nosuid,,mode=0700",
        "huge=sometimes",
        "n[1-4]",
        "n[01-04],gpu1",
        "n[1-",
        "/tmp,/dev/shm",
        "/tmp, /x,",
        "maybe",
        "yes",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | PATHS
    | WORDS
)
KEY = st.sampled_from(KEYS) | st.text(max_size=10) | st.integers(-3, 3)
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY, inner, max_size=5),
    max_leaves=25,
)


def dir_conf():
    return st.fixed_dictionaries(
        {"path": PATHS},
        optional={
            "tmpfs": st.booleans(),
            "options": WORDS | st.just("noexec,nosuid"),
            "base_path": PATHS,
        },
    )


def options():
    return st.fixed_dictionaries(
        {},
        optional={
            "base_path": PATHS,
            "dirs": WORDS | PATHS,
            "dir_confs": st.lists(dir_conf(), max_size=3),
            "clone_ns_flags": WORDS | st.lists(WORDS, max_size=3),
            "clone_ns_script_wait": st.integers(-2, 30),
            "shared": st.booleans() | WORDS,
            "auto_base_path": st.booleans(),
            "init_script": PATHS,
        },
    )


# Namespace.yaml-shaped documents: they get past the schema and exercise the semantic checks.
SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "defaults": options(),
        "node_confs": st.lists(
            st.fixed_dictionaries(
                {"nodes": WORDS | st.lists(WORDS, min_size=1, max_size=2), "options": options()}
            ),
            max_size=4,
        ),
    },
)
NODES = ["n1", "n01", "n4", "gpu1", "x9"]


def check_never_crashes(text: str) -> checker.Checked:
    checked = checker.check_text(text, "ns.yaml")  # must not raise, whatever the input
    assert checked.valid or checked.errors
    for issue in checked.issues:
        assert issue.line >= 1 and issue.column >= 1, issue
        assert str(issue).startswith("ns.yaml:")
    return checked


def resolves_everywhere(checked: checker.Checked) -> None:
    """A document the validator accepts never breaks the resolver or the cache format."""
    if not checked.valid:
        return
    for node in NODES:
        resolved = config.resolve(checked.data, node, "host")
        assert config.from_dict(config.to_dict(resolved), resolved.origins) == resolved
        if resolved.enabled:
            assert "CLONE_NEWNS" in resolved.clone_ns_flags
            assert resolved.base_path.startswith("/")
            for wait in (resolved.clone_ns_script_wait, resolved.clone_ns_epilog_wait):
                assert 1 <= wait <= config.MAX_WAIT


@FAST
@given(DOCS)
def test_random_documents_never_crash(data):
    resolves_everywhere(check_never_crashes(yaml.safe_dump(data)))


@FAST
@given(SHAPED)
def test_namespace_shaped_documents_never_crash_and_valid_ones_resolve(data):
    resolves_everywhere(check_never_crashes(yaml.safe_dump(data, sort_keys=False)))


@FAST
@given(st.text(alphabet=st.sampled_from(list(" \t\n:-[]{},&*!|>'\"%#?@`abn01/")), max_size=80))
def test_random_yaml_like_text_never_crashes(text):
    resolves_everywhere(check_never_crashes(text))


@FAST
@given(st.text(max_size=60))
def test_random_unicode_text_never_crashes(text):
    check_never_crashes(text)


@FAST
@given(st.integers(0, len(EXAMPLE) - 1), st.integers(1, 8), st.text(max_size=4))
def test_mutated_example_never_crashes(start, length, insert):
    text = EXAMPLE[:start] + insert + EXAMPLE[start + length :]
    assume(text != EXAMPLE)
    resolves_everywhere(check_never_crashes(text))


# ---------------------------------------------------------------------------------------------
# Every wrong type at every key path the option tables know


class Raw(str):
    """YAML text put into a document as written (a plain scalar, a tag, a quoted form...)."""


def emit(value: object) -> str:
    """A document in YAML's flow style: JSON for Python values (JSON is YAML), Raw as written."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{emit(k)}: {emit(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):  # an empty item cannot be written in a flow list: quote it
        return "[" + ", ".join(emit(v) or "''" for v in value) + "]"
    text = json.dumps(value, ensure_ascii=False)
    return "".join(f"\\u{ord(c):04x}" if _UNPRINTABLE.match(c) else c for c in text)


# Characters YAML accepts only escaped, or reads as line breaks (JSON leaves them as they are).
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufffe\uffff]")


# A valid document with every container a key path below needs.
SKELETON = {
    "defaults": {"base_path": "/var/ns", "dir_confs": [{"path": "/tmp", "tmpfs": True}]},
    "node_confs": [
        {"nodes": "n[1-4]", "options": {"base_path": "/var/n", "dir_confs": [{"path": "/s"}]}}
    ],
}
ENTRY = "an entry"  # the kind of a list item that must be a mapping


def key_paths() -> list[tuple[tuple, str]]:
    """(key path, kind) for every key and list entry the tables describe."""
    paths = [(("defaults",), config.OPTION_MAP), (("node_confs",), config.NODE_LIST)]
    paths.append((("node_confs", 0), ENTRY))
    paths += [(("node_confs", 0, o.name), o.kind) for o in config.NODE_CONF_OPTIONS]
    for prefix in (("defaults",), ("node_confs", 0, "options")):
        paths += [((*prefix, o.name), o.kind) for o in config.OPTIONS]
        paths.append(((*prefix, "dir_confs", 0), ENTRY))
        paths += [((*prefix, "dir_confs", 0, o.name), o.kind) for o in config.DIR_CONF_OPTIONS]
    return paths


KEY_PATHS = key_paths()
# Kinds that only a scalar can be, and what each collection kind must be.
SCALAR_KINDS = {
    config.BOOL,
    config.WAIT,
    config.BASE_PATH,
    config.SCRIPT,
    config.DIRS,
    config.DIR_PATH,
    config.DIR_BASE,
    config.MOUNT_OPTIONS,
}
MAPPING_KINDS = {config.OPTION_MAP, ENTRY}
LIST_KINDS = {config.NODE_LIST, config.DIR_CONFS}
TEXT_OR_LIST_KINDS = {config.FLAGS, config.HOSTLIST}
assert {kind for _, kind in KEY_PATHS} == (
    SCALAR_KINDS | MAPPING_KINDS | LIST_KINDS | TEXT_OR_LIST_KINDS
)

JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | PATHS
    | WORDS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# Scalars whose meaning differs between Slurm and YAML 1.1, as they would be written in a file.
RAW_TEXTS = (
    [
        "010", "00", "0x10", "1_000", "1:30", "0b1", "0o7", ".inf", ".nan", "1e3", "-0", "+5",
        "-1", "2147483", "2147484", "4294968", "4294967296", "99999999999999999999",
        "~", "null", "Null", "NULL", "", '""', "''", '"yes"', "'off'", "y", "n", "t", "F",
        "tRuE", "maybe", "2024-01-01", "!!int 5", "!!int abc", "!!str 5", "!!str true",
        "!!null ''", "!!bool yes", "!!float 1", "!foo x", "! x", "!!binary eA==",
        "!!timestamp 2024-01-01", '"noexec, nosuid"', '"n1, n2"', '"/dev/shm/"', '"/a,,/b"',
        '"CLONE_NEWPID,,"', "' '",
    ]
)  # fmt: skip
RAW = st.sampled_from(RAW_TEXTS).map(Raw)
WRONG = JUNK | RAW


def with_values(changes: list[tuple[tuple, object]]) -> dict:
    document = copy.deepcopy(SKELETON)
    # Deepest first: a change above one made earlier replaces it, never breaks the path to it.
    for path, value in sorted(changes, key=lambda change: -len(change[0])):
        target = document
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return document


def shape_is_wrong(kind: str, value: object) -> bool:
    """Whether ``value`` can never be right for ``kind``, whatever its text."""
    if kind in SCALAR_KINDS:
        return isinstance(value, (list, dict))
    if kind in MAPPING_KINDS:
        return not isinstance(value, dict)
    if kind in LIST_KINDS:
        return not isinstance(value, list)
    return isinstance(value, dict)  # TEXT_OR_LIST_KINDS


# One of each YAML type, and nested junk: checked at every key path, not sampled.
EVERY_TYPE = [None, True, False, 0, 7, -1, 2.5, float("inf"), "", "x", "/abs", [], ["x"], [[1]]]
EVERY_TYPE += [{}, {"a": 1}, {"path": "/t"}, [{"a": [None, {"b": []}]}], Raw("~"), Raw("!!int 5")]


def test_every_type_at_every_key_path():
    """issue 7: every wrong type or shape at every known key is reported at that key, and no
    value anywhere makes the validator raise."""
    for path, kind in KEY_PATHS:
        for value in EVERY_TYPE:
            checked = check_never_crashes(emit(with_values([(path, value)])))
            assert all(i.path for i in checked.errors), (path, value, checked.issues)
            if shape_is_wrong(kind, value):
                where = checker.format_path(path)
                assert any(i.path == where for i in checked.errors), (path, value, checked.issues)
            resolves_everywhere(checked)


@FAST
@given(st.sampled_from(KEY_PATHS), WRONG)
def test_a_wrong_type_at_any_key_is_a_located_message(key_path, value):
    """issue 7: every wrong type or shape at every known key is reported at that key."""
    path, kind = key_path
    checked = check_never_crashes(emit(with_values([(path, value)])))
    for issue in checked.issues:
        assert issue.path or issue.severity == "warning", issue  # no error without a key path
    if shape_is_wrong(kind, value):
        where = checker.format_path(path)
        assert any(i.path == where for i in checked.errors), (where, value, checked.issues)
    resolves_everywhere(checked)


@FAST
@given(st.lists(st.tuples(st.sampled_from(KEY_PATHS), WRONG), min_size=1, max_size=4))
def test_wrong_types_at_several_keys_at_once(changes):
    checked = check_never_crashes(emit(with_values([(path, v) for (path, _), v in changes])))
    for issue in checked.errors:
        assert issue.path, issue
    resolves_everywhere(checked)


def test_the_skeleton_and_every_raw_scalar_are_valid_yaml():
    """So that an issue without a key path in the tests above is nsctl's fault, never a YAML
    syntax error made by the test."""
    assert checker.check_text(emit(SKELETON), "ns.yaml").issues == ()
    for text in RAW_TEXTS:
        for path, _ in KEY_PATHS:
            checked = checker.check_text(emit(with_values([(path, Raw(text))])), "ns.yaml")
            assert all(i.path for i in checked.errors), (text, path, checked.issues)
