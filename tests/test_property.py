"""Property-based: no document, however odd, makes the validator raise; and whatever it accepts,
the resolver can resolve for any node and the cache format can carry."""

from __future__ import annotations

import os
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
            assert resolved.clone_ns_script_wait >= 1


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
