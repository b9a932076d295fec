"""The strict validator, rule by rule, with exact messages (E3-E10 where they concern config)."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from nsctl import config
from nsctl import validate as checker
from nsctl.validate import Issue

F = "ns.yaml"


NO_CONTENT = (
    "the file has no configuration (it is empty, or only comments): Slurm's slurmd refuses it "
    "and does not start; to turn isolation off, write 'defaults: {base_path: none}'"
)
ALIASES = (
    "YAML aliases: Slurm's YAML reader refuses them, and slurmd does not start with this file; "
    "write the values out"
)


def check(text: str) -> checker.Checked:
    return checker.check_text(textwrap.dedent(text).lstrip("\n"), F)


def lines(text: str) -> list[str]:
    return [str(issue) for issue in check(text).issues]


def one(text: str) -> str:
    found = lines(text)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------------
# unknown keys (E7)


def test_e7_unknown_key_with_did_you_mean():
    assert lines(
        """
        defaults:
          base_paht: /var/ns
          sharde: true
          completely_else: 1
        """
    ) == [
        "ns.yaml:2:3: defaults.base_paht: unknown key 'base_paht' (did you mean 'base_path'?)",
        "ns.yaml:3:3: defaults.sharde: unknown key 'sharde' (did you mean 'shared'?)",
        "ns.yaml:4:3: defaults.completely_else: unknown key 'completely_else'",
    ]


def test_e7_unknown_keys_are_rejected_at_every_level():
    assert lines(
        """
        defualts: {}
        node_confs:
          - nodes: n1
            option: {}
            options:
              dir_confs:
                - path: /tmp
                  tmpf: true
        """
    ) == [
        "ns.yaml:1:1: defualts: unknown key 'defualts' (did you mean 'defaults'?)",
        "ns.yaml:4:5: node_confs[0].option: unknown key 'option' (did you mean 'options'?)",
        "ns.yaml:8:11: node_confs[0].options.dir_confs[0].tmpf: unknown key 'tmpf' "
        "(did you mean 'tmpfs'?)",
    ]


def test_e7_top_level_disable_bpf_token_gets_a_hint():
    assert one("disable_bpf_token: true\n") == (
        "ns.yaml:1:1: disable_bpf_token: unknown top-level key 'disable_bpf_token': it belongs "
        "inside defaults or node_confs[].options (namespace.yaml(5) lists it at the top level, "
        "but Slurm ignores it there)"
    )


def test_option_key_at_top_level_and_nodes_inside_options_get_hints():
    assert lines(
        """
        base_path: /var/ns
        node_confs:
          - nodes: n1
            options:
              nodes: n2
        """
    ) == [
        "ns.yaml:1:1: base_path: unknown top-level key 'base_path': it belongs inside defaults "
        "or node_confs[].options",
        "ns.yaml:5:7: node_confs[0].options.nodes: unknown key 'nodes': it belongs in the "
        "node_confs entry, beside options",
    ]


def test_keys_are_case_sensitive():
    assert one("defaults: {Base_Path: /x}") == (
        "ns.yaml:1:12: defaults.Base_Path: unknown key 'Base_Path' (did you mean 'base_path'?)"
    )


# ---------------------------------------------------------------------------------------------
# types (E8)


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ('"maybe"', "the string 'maybe'; Slurm would read it as true"),
        ('"yes"', "the string 'yes'; Slurm would read it as true (drop the quotes)"),
        ('"true"', "the string 'true'; Slurm would read it as true (drop the quotes)"),
        ("1", "the number 1; Slurm would read it as true"),
        ("null", "nothing (null); Slurm would read it as false"),
        ("[true]", "a list"),
    ],
)
def test_e8_only_yaml_booleans_are_booleans(value, got):
    """E8: Slurm turns any non-empty string (even "maybe") into true; nsctl refuses, and says
    what Slurm would read."""
    assert one(f"defaults:\n  shared: {value}\n") == (
        f"ns.yaml:2:3: defaults.shared: expected a boolean (true or false), got {got}"
    )


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", "True", "FALSE"])
def test_e8_unquoted_yaml_1_1_boolean_words_are_booleans(value):
    """PyYAML reads unquoted yes/no/on/off as YAML 1.1 booleans; quoted they are strings."""
    checked = check(f"defaults:\n  base_path: /x\n  shared: {value}\n")
    assert checked.valid
    assert isinstance(checked.data["defaults"]["shared"], bool)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-5", "must be 0 or more, got -5; Slurm would wait without any time limit"),
        ("2.5", "expected a whole number, got the number 2.5; Slurm refuses it too"),
        (
            '"20"',
            "expected a whole number, got the string '20'; Slurm would read it as 20 (drop the "
            "quotes)",
        ),
        ("true", "expected a whole number, got the boolean true; Slurm refuses it too"),
        (
            "4294968",
            "must be at most 2147483, got 4294968; Slurm would wait 0.704 s (it counts "
            "milliseconds in 32 bits)",
        ),
    ],
)
def test_e8_waits_are_non_negative_integers(value, message):
    assert one(f"defaults:\n  clone_ns_epilog_wait: {value}\n") == (
        f"ns.yaml:2:3: defaults.clone_ns_epilog_wait: {message}"
    )


def test_wait_limits_accept_zero_and_the_maximum():
    """2,147,483 s is the largest wait whose milliseconds fit Slurm's signed int."""
    assert check("defaults: {clone_ns_script_wait: 0, clone_ns_epilog_wait: 2147483}").valid


def test_wrong_shapes():
    assert lines(
        """
        defaults:
          base_path: 123
          dirs: [/tmp]
          dir_confs: /tmp
          init_script: true
        node_confs:
          n1: {}
        """
    ) == [
        # Slurm reads 123 and true as text: a relative base_path and a relative script.
        "ns.yaml:2:3: defaults.base_path: base_path must be an absolute path, got '123'",
        "ns.yaml:3:3: defaults.dirs: dirs is a comma-separated string; did you mean dir_confs?",
        "ns.yaml:4:3: defaults.dir_confs: expected a list, got the string '/tmp'",
        "ns.yaml:5:3: defaults.init_script: init_script must be an absolute path, got 'true'",
        "ns.yaml:6:1: node_confs: expected a list, got a mapping",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "ns.yaml:1:1: expected a mapping, got the string 'hello'"),
        ("- a", "ns.yaml:1:1: expected a mapping, got a list"),
        ("defaults:", "ns.yaml:1:1: defaults: expected a mapping, got nothing (null)"),
    ],
)
def test_document_shapes(text, message):
    assert one(text) == message


def test_required_keys_and_empty_values():
    assert lines(
        """
        node_confs:
          - nodes: n1
          - options: {}
          - nodes: ""
            options: {}
          - nodes: []
            options:
              base_path: ""
              dir_confs:
                - options: noexec
                - /tmp
        """
    ) == [
        "ns.yaml:2:5: node_confs[0]: missing required key 'options'",
        "ns.yaml:3:5: node_confs[1]: missing required key 'nodes'",
        "ns.yaml:4:5: node_confs[2].nodes: must not be empty",
        "ns.yaml:6:5: node_confs[3].nodes: must not be empty",
        "ns.yaml:8:7: node_confs[3].options.base_path: warning: an empty base_path has no "
        "effect (Slurm only overrides with a non-empty value); leave it out",
        "ns.yaml:10:11: node_confs[3].options.dir_confs[0]: missing required key 'path'",
        "ns.yaml:11:11: node_confs[3].options.dir_confs[1]: expected a mapping, got the string "
        "'/tmp'",
    ]


def test_a_bad_item_inside_a_list_is_reported_at_the_item():
    """A list-or-string key must not hide which list item is wrong. 3 and 5 are text to Slurm:
    3 is no flag name, while 5 is a node name."""
    assert lines(
        """
        defaults:
          clone_ns_flags: [CLONE_NEWPID, 3]
        node_confs:
          - nodes: [n1, 5, [n2]]
            options: {}
        """
    ) == [
        "ns.yaml:2:34: defaults.clone_ns_flags[1]: unknown namespace flag '3'; nsctl knows "
        "CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER",
        "ns.yaml:4:20: node_confs[0].nodes[2]: expected a string, got a list",
    ]


def test_oneof_with_neither_shape():
    assert lines(
        """
        defaults:
          clone_ns_flags: {a: 1}
        node_confs:
          - nodes: {n7: 1}
            options: {}
        """
    ) == [
        "ns.yaml:2:3: defaults.clone_ns_flags: expected a list of flag names or a "
        "comma-separated string, got a mapping",
        "ns.yaml:4:5: node_confs[0].nodes: expected a hostlist string or a non-empty list of "
        "hostlist strings, got a mapping",
    ]


def test_bad_hostlists():
    assert lines(
        """
        node_confs:
          - nodes: "n[1-"
            options: {}
          - nodes: [n1, "x[3-1]"]
            options: {}
        """
    ) == [
        "ns.yaml:2:5: node_confs[0].nodes: bad hostlist 'n[1-': unbalanced brackets",
        "ns.yaml:4:17: node_confs[1].nodes[1]: bad hostlist 'x[3-1]': start > stop",
    ]


# ---------------------------------------------------------------------------------------------
# scalars, read as Slurm reads them: one test per row of namespace.yaml(5), HOW VALUES ARE READ


def value_of(key: str, text: str, where: str = "defaults") -> object:
    """The typed value validate reads for ``key: text`` (the document must validate)."""
    checked = check(f"{where}:\n  {key}: {text}\n")
    assert checked.valid, [str(i) for i in checked.errors]
    return checked.data[where][key]


def refusal(key: str, text: str) -> str:
    """The one message validate gives for ``defaults: {key: text}``, without its location."""
    found = [i for i in check(f"defaults:\n  {key}: {text}\n").issues if i.path]
    assert len(found) == 1 and found[0].severity == "error", [str(i) for i in found]
    return found[0].message


BOOL_WORDS = [
    (word, value)
    for words, value in ((("yes", "true", "on"), True), (("no", "false", "off"), False))
    for w in words
    for word in (w, w.capitalize(), w.upper())
]


@pytest.mark.parametrize(("text", "value"), BOOL_WORDS)
def test_booleans_are_the_words_slurm_and_yaml_1_1_both_read_the_same(text, value):
    assert value_of("shared", text) is value


@pytest.mark.parametrize(
    ("text", "reading"),
    [
        # Slurm's own words that YAML 1.1 reads as strings: refused, with the fix.
        ("y", "the string 'y'; Slurm would read it as true (write true)"),
        ("T", "the string 'T'; Slurm would read it as true (write true)"),
        ("n", "the string 'n'; Slurm would read it as false (write false)"),
        ("f", "the string 'f'; Slurm would read it as false (write false)"),
        ("tRuE", "the string 'tRuE'; Slurm would read it as true (write true)"),
        # numbers: Slurm compares them with 0
        ("0", "the number 0; Slurm would read it as false"),
        ("1", "the number 1; Slurm would read it as true"),
        ("-0", "the number -0; Slurm would read it as false"),
        ("0.0", "the number 0.0; Slurm would read it as false"),
        ("0x0", "the string '0x0'; Slurm would read it as false"),
        ("2", "the number 2; Slurm would read it as true"),
        (".inf", "the string '.inf'; Slurm would read it as true"),
        ("nan", "the string 'nan'; Slurm would read it as true"),
        # empty and null forms are false to Slurm
        ("", "nothing (null); Slurm would read it as false"),
        ("~", "nothing (null); Slurm would read it as false"),
        ("NULL", "nothing (null); Slurm would read it as false"),
        # anything else is true to Slurm
        ("maybe", "the string 'maybe'; Slurm would read it as true"),
        ("2024-01-01", "the string '2024-01-01'; Slurm would read it as true"),
        # quoting or tagging makes a string: refused even for a word Slurm knows
        ('"yes"', "the string 'yes'; Slurm would read it as true (drop the quotes)"),
        ("'off'", "the string 'off'; Slurm would read it as false (drop the quotes)"),
        ('"y"', "the string 'y'; Slurm would read it as true (write true)"),
        ('""', "the string ''; Slurm would read it as false"),
        ("!!str true", "the string 'true'; Slurm would read it as true (drop the tag)"),
    ],
)
def test_other_boolean_texts_are_refused_with_what_slurm_would_read(text, reading):
    assert refusal("shared", text) == f"expected a boolean (true or false), got {reading}"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # Slurm's type detection: null forms, then integers, floats, forced integers, words
        ("", False),
        ("~", False),
        ("~anything", False),
        ("nULL", False),
        ("0", False),
        ("-0", False),
        ("+0", False),
        ("00", False),
        ("0x0", False),
        ("-0x0", False),
        ("0.0", False),
        ("0.", False),
        ("0e5", False),
        ("1e-999", False),  # underflows to zero
        (" 0", False),  # strtoll skips leading blanks (only a quoted value can have them)
        ("nO", False),
        ("F", False),
        ("Off", False),
        ("1", True),
        ("0x", True),  # not a number: any other text
        ("nan", True),  # NaN is not equal to 0
        ("-inf", True),
        ("1e99999", True),
        (".5", True),
        ("0b0", True),
        ("yEs", True),
        ("maybe", True),
    ],
)
def test_slurm_bool_is_slurms_conversion(text, value):
    assert checker.slurm_bool(text) is value


@pytest.mark.parametrize(
    ("text", "stored", "effect"),
    [
        ("0", 0, "wait the default 10 s"),
        ("-0", 0, "wait the default 10 s"),
        ("7", 7, "wait 7 s"),
        (" 7", 7, "wait 7 s"),
        ("+7", 7, "wait 7 s"),
        ("007", 7, "wait 7 s"),
        ("0x10", 16, "wait 16 s"),
        ("2147483", 2147483, "wait 2147483 s"),
        ("2147484", 2147484, "wait without any time limit"),
        ("4294968", 4294968, "wait 0.704 s"),
        ("5000000", 5000000, "wait 705032.704 s"),
        ("4294967295", 4294967295, "wait without any time limit"),
        ("4294967296", 0xFFFFFFFE, "wait without any time limit"),  # NO_VAL
        ("-1", 0xFFFFFFFE, "wait without any time limit"),
        ("0xFFFFFFFFFFFFFFFF", 0xFFFFFFFE, "wait without any time limit"),
        ("9223372036854775807", 0xFFFFFFFE, "wait without any time limit"),
        ("9223372036854775808", None, None),  # strtoll: out of range
        ("0x10000000000000000", None, None),
        ("", None, None),
        ("0x", None, None),
        ("7 ", None, None),
        ("1_000", None, None),
        ("2.5", None, None),
    ],
)
def test_slurm_uint32_and_wait_are_slurms_conversion(text, stored, effect):
    assert checker.slurm_uint32(text) == stored
    if stored is not None:
        assert checker.slurm_wait(stored) == effect


@pytest.mark.parametrize("text", ["0", "1", "10", "30", "2147483"])
def test_waits_are_plain_decimal_seconds(text):
    assert value_of("clone_ns_script_wait", text) == int(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "010",
            "leading zero in 010: Slurm reads it as 10, but a leading 0 means octal in YAML "
            "1.1; write 10",
        ),
        (
            "00",
            "leading zero in 00: Slurm reads it as 0, but a leading 0 means octal in YAML 1.1; "
            "write 0",
        ),
        # Slurm multiplies by 1000 in 32 bits and reads the milliseconds as a signed int
        (
            "2147484",
            "must be at most 2147483, got 2147484; Slurm would wait without any time limit (it "
            "counts milliseconds in 32 bits)",
        ),
        (
            "4294967",
            "must be at most 2147483, got 4294967; Slurm would wait without any time limit (it "
            "counts milliseconds in 32 bits)",
        ),
        (
            "4294968",
            "must be at most 2147483, got 4294968; Slurm would wait 0.704 s (it counts "
            "milliseconds in 32 bits)",
        ),
        (
            "4294967296",
            "must be at most 2147483, got 4294967296; Slurm would wait without any time limit "
            "(it counts milliseconds in 32 bits)",
        ),
        (
            "99999999999999999999",
            "must be at most 2147483, got 99999999999999999999; Slurm refuses it too",
        ),
        ("-1", "must be 0 or more, got -1; Slurm would wait without any time limit"),
        ("-0", "expected a whole number, got the number -0; Slurm would read it as 0 (write 0)"),
        ("+5", "expected a whole number, got the number +5; Slurm would read it as 5 (write 5)"),
        (
            "0x10",
            "expected a whole number, got the string '0x10'; Slurm would read it as 16 (write 16)",
        ),
        (
            '"4294968"',
            "expected a whole number, got the string '4294968'; Slurm would read it as 4294968 "
            "and wait 0.704 s",
        ),
        (
            "0xFFFFFFFF",
            "expected a whole number, got the string '0xFFFFFFFF'; Slurm would read it as "
            "4294967295 and wait without any time limit",
        ),
        ("1_000", "expected a whole number, got the string '1_000'; Slurm refuses it too"),
        ("1:30", "expected a whole number, got the string '1:30'; Slurm refuses it too"),
        ("0b1", "expected a whole number, got the string '0b1'; Slurm refuses it too"),
        ("0o7", "expected a whole number, got the string '0o7'; Slurm refuses it too"),
        ("1e3", "expected a whole number, got the number 1e3; Slurm refuses it too"),
        ("2.5", "expected a whole number, got the number 2.5; Slurm refuses it too"),
        (".inf", "expected a whole number, got the string '.inf'; Slurm refuses it too"),
        ("true", "expected a whole number, got the boolean true; Slurm refuses it too"),
        (
            "2024-01-01",
            "expected a whole number, got the string '2024-01-01'; Slurm refuses it too",
        ),
        ("", "expected a whole number, got nothing (null); Slurm refuses it too"),
        ("~", "expected a whole number, got nothing (null); Slurm refuses it too"),
        ("null", "expected a whole number, got nothing (null); Slurm refuses it too"),
        (
            '"20"',
            "expected a whole number, got the string '20'; Slurm would read it as 20 (drop the "
            "quotes)",
        ),
        (
            "!!str 20",
            "expected a whole number, got the string '20'; Slurm would read it as 20 (drop the "
            "tag)",
        ),
        ("[20]", "expected a whole number, got a list"),
        ("{a: 1}", "expected a whole number, got a mapping"),
    ],
)
def test_other_wait_texts_are_refused_with_what_slurm_would_do(text, message):
    assert refusal("clone_ns_epilog_wait", text) == message


@pytest.mark.parametrize("text", ["~", "null", "Null", "NULL"])
def test_null_words_are_text_to_slurm_so_refused_for_strings(text):
    message = (
        f"{text} is not null here: Slurm reads it as the text {text!r}; for no value, leave the "
        "key out"
    )
    for key in ("base_path", "init_script", "dirs", "clone_ns_flags"):
        assert refusal(key, text) == message, key
    found = lines(f"node_confs:\n  - nodes: {text}\n    options: {{}}\n")
    assert found == [f"ns.yaml:2:5: node_confs[0].nodes: {message}"]


def test_quoted_null_words_are_plain_text():
    assert refusal("init_script", '"null"') == "init_script must be an absolute path, got 'null'"
    assert refusal("base_path", "'~'") == "base_path must be an absolute path, got '~'"


@pytest.mark.parametrize("text", ["", '""', "''"])
def test_an_empty_string_in_defaults_means_unset(text):
    for key in ("base_path", "init_script", "clone_ns_script", "dirs", "clone_ns_flags"):
        checked = check(f"defaults:\n  {key}: {text}\n")
        assert checked.issues == (), key
        assert checked.data["defaults"][key] == ""
    resolved = config.resolve(check("defaults:\n  base_path: /v\n  dirs: ''\n").data, "n1")
    assert [d.path for d in resolved.dir_confs] == ["/tmp", "/dev/shm"]  # dirs unset: built in


@pytest.mark.parametrize("text", ["", '""'])
def test_an_empty_string_on_a_node_keeps_the_default_with_a_warning(text):
    """Slurm overrides only with a non-empty text: what an admin clearing a script means is not
    what happens."""
    checked = check(
        f"""
        defaults:
          base_path: /v
          init_script: /etc/init
        node_confs:
          - nodes: n1
            options:
              init_script: {text}
              clone_ns_script: {text}
              dirs: {text}
        """
    )
    assert checked.valid
    assert [str(i) for i in checked.issues] == [
        "ns.yaml:7:7: node_confs[0].options.init_script: warning: an empty init_script does not "
        "override the defaults (Slurm only overrides with a non-empty value): init_script stays "
        "'/etc/init' on these nodes",
        "ns.yaml:8:7: node_confs[0].options.clone_ns_script: warning: an empty clone_ns_script "
        "has no effect (Slurm only overrides with a non-empty value); leave it out",
        "ns.yaml:9:7: node_confs[0].options.dirs: warning: an empty dirs does not override the "
        "defaults (Slurm only overrides with a non-empty value): dirs stays '/tmp,/dev/shm' on "
        "these nodes",
    ]
    resolved = config.resolve(checked.data, "n1")
    assert resolved.init_script == "/etc/init" and resolved.origins["init_script"] == "defaults"
    assert resolved.clone_ns_script is None


@pytest.mark.parametrize(
    ("text", "read"),
    [("123", "123"), ("true", "true"), ("010", "010"), ("2024-01-01", "2024-01-01")],
)
def test_plain_scalars_are_text_for_string_keys(text, read):
    """YAML 1.1 would make these a number, a boolean, 8 and a date; Slurm sees the text."""
    assert refusal("init_script", text) == f"init_script must be an absolute path, got {read!r}"


@pytest.mark.parametrize("text", ["5", "010", "yes", "1e3"])
def test_plain_scalars_are_node_names_as_in_slurm(text):
    data = check(f"node_confs:\n  - nodes: {text}\n    options: {{base_path: /v}}\n").data
    assert data["node_confs"][0]["nodes"] == text
    assert config.resolve(data, text).entry == "node_confs[0]"


@pytest.mark.parametrize("text", ["!!str /x", "! /x", '"/x"', "'/x'", "/x"])
def test_str_tags_and_quotes_read_the_same_as_plain_text(text):
    assert value_of("init_script", text) == "/x"


@pytest.mark.parametrize(
    ("text", "tag"), [("!!int 5", "!!int"), ("!!float 5", "!!float"), ("!!bool true", "!!bool")]
)
def test_converting_tags_are_refused_everywhere(text, tag):
    message = (
        f"unsupported tag {tag!r}: write the value without a tag (Slurm converts tagged values "
        "its own way: !!int 010 is 10 in Slurm, 8 in YAML 1.1)"
    )
    for key in ("shared", "clone_ns_script_wait", "init_script"):
        assert refusal(key, text) == message, key


def test_null_tag_is_refused():
    assert refusal("shared", "!!null ''").startswith("unsupported tag '!!null': ")
    assert refusal("init_script", "!!null").startswith("unsupported tag '!!null': ")


def test_keys_are_text_too():
    assert lines("1: a\ntrue: b\n~: c\n? [d]\n: e\n") == [
        "ns.yaml:1:1: 1: unknown key '1'",
        "ns.yaml:2:1: true: unknown key 'true'",
        "ns.yaml:3:1: ~: unknown key '~'",
        "ns.yaml:4:3: a key must be text, got a list",
    ]


def test_a_lone_document_marker_or_a_null_root():
    assert lines("---\n") == [f"ns.yaml:1:1: {NO_CONTENT}"] and check("---\n").data is None
    assert lines("~\n") == ["ns.yaml:1:1: expected a mapping, got nothing (null)"]


# ---------------------------------------------------------------------------------------------
# wrong types and shapes at the keys a type fuzz found crashing (issue 7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dirs: [/tmp, /dev/shm]", "dirs is a comma-separated string; did you mean dir_confs?"),
        ("dirs: []", "dirs is a comma-separated string; did you mean dir_confs?"),
        ("dirs: {a: b}", "expected a string, got a mapping"),
        ("dirs: 5", "directory must be an absolute path, got '5'"),
        ("dir_confs: true", "expected a list, got the boolean true"),
        ("dir_confs: /tmp", "expected a list, got the string '/tmp'"),
        ("dir_confs: {path: /tmp}", "expected a list, got a mapping"),
        ("dir_confs:", "expected a list, got nothing (null)"),
        (
            "clone_ns_flags: {a: b}",
            "expected a list of flag names or a comma-separated string, got a mapping",
        ),
        ("clone_ns_flags: [[a]]", "expected a string, got a list"),
        ("base_path: [/v]", "expected a string, got a list"),
    ],
)
def test_wrong_shapes_are_located_messages(text, message):
    checked = check(f"defaults:\n  {text}\n")
    errors = [i for i in checked.errors if i.message == message]
    assert len(errors) == 1, [str(i) for i in checked.issues]
    assert errors[0].line == 2 and errors[0].path.startswith("defaults.")


@pytest.mark.parametrize(
    "entry",
    ["true", "[/tmp]", "~", "{path: [/tmp]}", "{path: /t, tmpfs: [x]}", "{path: /t, options: {}}"],
)
def test_wrong_dir_confs_entries_do_not_break_the_layout_checks(entry):
    text = f"defaults:\n  base_path: /v\n  dir_confs:\n    - {entry}\n    - path: /v/x\n"
    found = lines(text)
    assert (
        "ns.yaml:5:7: defaults.dir_confs[1].path: directory '/v/x' is at or under base_path "
        "'/v'" in found
    )
    assert all(line.startswith("ns.yaml:4:") or line.startswith("ns.yaml:5:") for line in found)


# ---------------------------------------------------------------------------------------------
# spaces Slurm keeps: mount options and hostlists


@pytest.mark.parametrize(
    ("options", "tmpfs", "message"),
    [
        (
            "noexec, nosuid",
            False,
            "space before 'nosuid': Slurm reads ' nosuid' as tmpfs data, not as the nosuid flag "
            "(a bind mount then goes without nosuid, a tmpfs mount fails); remove the space",
        ),
        (
            "noexec ,nosuid",
            True,
            "space after 'noexec': Slurm reads 'noexec ' as tmpfs data, not as the noexec flag "
            "(a bind mount then goes without noexec, a tmpfs mount fails); remove the space",
        ),
        (
            "nosuid, size=1g ",
            True,
            "space around 'size=1g': Slurm passes ' size=1g ' to the mount as written (a tmpfs "
            "mount fails on it, a bind mount ignores it); remove the space",
        ),
    ],
)
def test_spaces_in_mount_options_are_refused(options, tmpfs, message):
    text = f"defaults:\n  dir_confs:\n    - path: /t\n      tmpfs: {str(tmpfs).lower()}\n"
    assert one(text + f"      options: '{options}'\n") == (
        f"ns.yaml:5:7: defaults.dir_confs[0].options: {message}"
    )


def test_spaces_in_hostlists_are_refused():
    """Slurm splits 'n1, n2' into n1 and n2; python-hostlist would make ' n2' a name."""
    assert lines(
        "node_confs:\n  - nodes: n1, n2\n    options: {}\n  - nodes: ['a\tb']\n    options: {}\n"
    ) == [
        "ns.yaml:2:5: node_confs[0].nodes: whitespace in hostlist 'n1, n2': Slurm splits a "
        "hostlist at spaces as at commas; separate the names with commas only",
        "ns.yaml:4:13: node_confs[1].nodes[0]: whitespace in hostlist 'a\\tb': Slurm splits a "
        "hostlist at spaces as at commas; separate the names with commas only",
    ]


def test_empty_entries_in_clone_ns_flags_are_refused():
    assert lines("defaults:\n  clone_ns_flags: 'CLONE_NEWPID,,CLONE_NEWUSER'\n") == [
        "ns.yaml:2:3: defaults.clone_ns_flags: empty entry in clone_ns_flags (a stray comma?)"
    ]
    assert lines("defaults:\n  clone_ns_flags: [CLONE_NEWPID, ' ']\n") == [
        "ns.yaml:2:34: defaults.clone_ns_flags[1]: empty entry in clone_ns_flags (a stray comma?)"
    ]


def test_control_characters_in_base_paths_and_scripts():
    assert refusal("base_path", '"/v\\nx"') == "base_path may not contain a control character"
    assert refusal("init_script", '"/i\\tx"') == "init_script may not contain a control character"


# ---------------------------------------------------------------------------------------------
# where nsctl and Slurm would resolve the same file differently: warnings


def test_dev_shm_with_a_trailing_slash_is_refused_and_no_collision():
    """Slurm 26.05 bind-mounts /dev/shm/ (only the exact /dev/shm is a tmpfs), nsctl would make
    it a tmpfs: refused, so that no file is read two ways (tests/configs/linux_corpus, 32). It
    has no backing directory to collide with /dev_shm's (both use config.dir_specs)."""
    checked = check("defaults:\n  base_path: /v\n  dirs: /dev/shm/,/dev_shm\n")
    assert [str(i) for i in checked.issues] == [
        "ns.yaml:3:3: defaults.dirs: write /dev/shm, not '/dev/shm/': Slurm makes only the "
        "exact '/dev/shm' a tmpfs and bind-mounts '/dev/shm/' like any other directory"
    ]


def test_aliases_are_refused_because_slurm_refuses_them():
    checked = check("defaults: &d\n  base_path: /v\nnode_confs:\n  - {nodes: n1, options: *d}\n")
    assert [str(i) for i in checked.issues] == [f"ns.yaml:4:26: {ALIASES}"]


# ---------------------------------------------------------------------------------------------
# paths, base_path, escapes (E10)


def test_relative_paths_are_errors():
    assert lines(
        """
        defaults:
          base_path: var/ns
          dirs: /tmp,scratch
          clone_ns_script: ns.sh
          clone_ns_epilog: ./epi
          init_script: init
          user_ns_script: user
        node_confs:
          - nodes: n1
            options:
              dir_confs:
                - path: tmp
                  base_path: data
        """
    ) == [
        "ns.yaml:2:3: defaults.base_path: base_path must be an absolute path, got 'var/ns'",
        "ns.yaml:3:3: defaults.dirs: directory must be an absolute path, got 'scratch'",
        "ns.yaml:4:3: defaults.clone_ns_script: clone_ns_script must be an absolute path, "
        "got 'ns.sh'",
        "ns.yaml:5:3: defaults.clone_ns_epilog: clone_ns_epilog must be an absolute path, "
        "got './epi'",
        "ns.yaml:6:3: defaults.init_script: init_script must be an absolute path, got 'init'",
        "ns.yaml:7:3: defaults.user_ns_script: user_ns_script must be an absolute path, got 'user'",
        "ns.yaml:12:11: node_confs[0].options.dir_confs[0].path: directory must be an absolute "
        "path, got 'tmp'",
        "ns.yaml:13:11: node_confs[0].options.dir_confs[0].base_path: base_path must be an "
        "absolute path, got 'data'",
    ]


@pytest.mark.parametrize("value", ["none", "None", "NONE"])
def test_base_path_none_is_valid_in_any_case(value):
    assert check(f"defaults: {{base_path: {value}}}").valid


def test_e20_base_path_starting_with_none_is_an_error():
    """E20: Slurm disables the plugin for anything that starts with "none" (4-char prefix)."""
    assert one("defaults: {base_path: nonexistent}") == (
        "ns.yaml:1:12: defaults.base_path: base_path 'nonexistent' is neither 'none' nor an "
        "absolute path (Slurm would treat anything starting with 'none' as none and silently "
        "disable the plugin)"
    )


def test_e10_escapes_in_dir_paths():
    """E10: Slurm's stdio expander would act on %x, %J, %s...; nsctl allows %j %S %u %% only."""
    assert lines(
        """
        defaults:
          base_path: /var/ns
          dirs: /d/%j,/e/%%x,/f/%n
          dir_confs:
            - path: /s/%u/%S/%j/100%%
            - path: /s/%x
            - path: /t/%J
            - path: /u/%
        """
    ) == [
        "ns.yaml:3:3: defaults.dirs: unknown escape %n in a directory path (nsctl expands %j, "
        "%S, %u and %%)",
        "ns.yaml:3:3: defaults.dirs: warning: dirs is ignored because dir_confs is set",
        "ns.yaml:6:7: defaults.dir_confs[1].path: unknown escape %x in a directory path (nsctl "
        "expands %j, %S, %u and %%)",
        "ns.yaml:7:7: defaults.dir_confs[2].path: unknown escape %J in a directory path (nsctl "
        "expands %j, %S, %u and %%)",
        "ns.yaml:8:7: defaults.dir_confs[3].path: a lone % at the end of a directory path (nsctl "
        "expands %j, %S, %u and %%)",
    ]


def test_e10_backslash_in_a_dir_path():
    """E10: a backslash anywhere makes Slurm skip expansion and drop the backslashes."""
    assert one("defaults:\n  dir_confs:\n    - path: '/s/a\\b'\n") == (
        "ns.yaml:3:7: defaults.dir_confs[0].path: backslash in a directory path (Slurm would "
        "drop it and skip expansion)"
    )


def test_dir_path_with_a_comma_or_control_character():
    """The runtime index lists the dirs comma-separated, one key per line."""
    assert lines("defaults:\n  dir_confs:\n    - path: '/a,b'\n    - path: \"/c\\td\"\n") == [
        "ns.yaml:3:7: defaults.dir_confs[0].path: a directory path may not contain a comma or a "
        "control character",
        "ns.yaml:4:7: defaults.dir_confs[1].path: a directory path may not contain a comma or a "
        "control character",
    ]


def test_e20_escapes_in_base_paths():
    """base_path and dir base_path expand %h and %n only (and %% is not special there)."""
    assert lines(
        """
        defaults:
          base_path: /v/%h/%n/%j
          dir_confs:
            - path: /s
              base_path: /d/%u/%%
            - path: /t
              base_path: /e/%
        """
    ) == [
        "ns.yaml:2:3: defaults.base_path: unknown escape %j in base_path (nsctl expands %h and %n)",
        "ns.yaml:5:7: defaults.dir_confs[0].base_path: unknown escape %u in base_path (nsctl "
        "expands %h and %n)",
        "ns.yaml:5:7: defaults.dir_confs[0].base_path: unknown escape %% in base_path (nsctl "
        "expands %h and %n)",
        "ns.yaml:7:7: defaults.dir_confs[1].base_path: a lone % at the end of base_path (nsctl "
        "expands %h and %n)",
    ]


def test_dirs_string_formatting():
    assert lines("defaults: {dirs: '/tmp, /dev/shm,'}") == [
        "ns.yaml:1:12: defaults.dirs: whitespace around '/dev/shm' in dirs (Slurm keeps it)",
        "ns.yaml:1:12: defaults.dirs: empty entry in dirs (a stray comma?)",
    ]


# ---------------------------------------------------------------------------------------------
# clone_ns_flags (E4)


def test_e4_unknown_flags_are_errors_with_did_you_mean():
    assert lines(
        """
        defaults:
          clone_ns_flags: CLONE_NEWPID,CLONE_NEWNET
        node_confs:
          - nodes: n1
            options:
              clone_ns_flags: [clone_newuser, CLONE_NEWPIDX, newpid]
        """
    ) == [
        "ns.yaml:2:3: defaults.clone_ns_flags: unknown namespace flag 'CLONE_NEWNET' (did you "
        "mean 'CLONE_NEWNS'?); nsctl knows CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER",
        "ns.yaml:6:39: node_confs[0].options.clone_ns_flags[1]: unknown namespace flag "
        "'CLONE_NEWPIDX' (did you mean 'CLONE_NEWPID'?); nsctl knows CLONE_NEWNS, "
        "CLONE_NEWPID, CLONE_NEWUSER",
        "ns.yaml:6:54: node_confs[0].options.clone_ns_flags[2]: unknown namespace flag 'newpid' "
        "(did you mean 'CLONE_NEWPID'?); "
        "nsctl knows CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER",
    ]


def test_e4_substring_matches_are_not_flags():
    """E4: Slurm would find CLONE_NEWPID inside 'XCLONE_NEWPID'; nsctl wants exact names."""
    assert one("defaults: {clone_ns_flags: 'XCLONE_NEWPID'}") == (
        "ns.yaml:1:12: defaults.clone_ns_flags: unknown namespace flag 'XCLONE_NEWPID' (did you "
        "mean 'CLONE_NEWPID'?); nsctl knows CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER"
    )


@pytest.mark.parametrize("empty", ["[]", "''"])
def test_e4_empty_node_flags_warn_that_they_do_not_clear(empty):
    checked = check(f"node_confs:\n  - nodes: n1\n    options:\n      clone_ns_flags: {empty}\n")
    assert checked.valid
    assert [str(w) for w in checked.warnings] == [
        "ns.yaml:4:7: node_confs[0].options.clone_ns_flags: warning: an empty clone_ns_flags "
        "does not clear the defaults' flags (Slurm only overrides with a non-empty value); "
        "write [CLONE_NEWNS] to drop PID and user namespaces"
    ]


def test_empty_flags_in_defaults_are_fine():
    assert check("defaults: {clone_ns_flags: []}").issues == ()


# ---------------------------------------------------------------------------------------------
# mount options (E11)


def test_mount_option_tokens():
    assert lines(
        """
        defaults:
          dir_confs:
            - path: /tmp
              options: "noexec,exec,size=1g"
            - path: /scratch
              options: "nosuid,mode=0700,,NODEV"
            - path: /dev/shm
              options: "size=lots,huge=never,Size=1g"
            - path: /t2
              tmpfs: true
              options: "rw,nr_inodes=10k,uid=0,gid=x,mode=1777,size=50%,relatime"
        """
    ) == [
        "ns.yaml:4:7: defaults.dir_confs[0].options: unknown mount option 'exec' (did you mean "
        "'noexec'?)",
        "ns.yaml:4:7: defaults.dir_confs[0].options: 'size=1g' is a tmpfs option; it has no "
        "effect on a bind mount",
        "ns.yaml:6:7: defaults.dir_confs[1].options: 'mode=0700' is a tmpfs option; it has no "
        "effect on a bind mount",
        "ns.yaml:6:7: defaults.dir_confs[1].options: empty mount option (two commas in a row?)",
        "ns.yaml:8:7: defaults.dir_confs[2].options: bad value for size= in 'size=lots'",
        "ns.yaml:8:7: defaults.dir_confs[2].options: unknown mount option 'Size=1g' (did you "
        "mean 'size='?)",
        "ns.yaml:11:7: defaults.dir_confs[3].options: unknown mount option 'rw'",
        "ns.yaml:11:7: defaults.dir_confs[3].options: bad value for gid= in 'gid=x'",
    ]


def test_all_known_mount_options_are_accepted_on_tmpfs():
    options = "noexec,nosuid,nodev,ro,noatime,nodiratime,relatime,size=8g,mode=1777,"
    options += "nr_inodes=1m,uid=0,gid=0,huge=within_size"
    assert check(
        f"defaults:\n  dir_confs:\n    - {{path: /t, tmpfs: true, options: '{options}'}}"
    ).valid


def test_tmpfs_base_path_is_a_warning():
    checked = check("defaults:\n  dir_confs:\n    - {path: /t, tmpfs: true, base_path: /d}\n")
    assert checked.valid
    assert [str(w) for w in checked.warnings] == [
        "ns.yaml:3:31: defaults.dir_confs[0].base_path: warning: base_path is ignored for tmpfs"
    ]


# ---------------------------------------------------------------------------------------------
# layout: overlaps (E5), duplicates and collisions (E9), ignored dirs (E3)


def test_dir_at_or_under_base_path():
    assert lines(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - path: /var/ns/tmp
            - path: /var/ns
            - path: /var/nsx
        """
    ) == [
        "ns.yaml:4:7: defaults.dir_confs[0].path: directory '/var/ns/tmp' is at or under "
        "base_path '/var/ns'",
        "ns.yaml:5:7: defaults.dir_confs[1].path: directory '/var/ns' is at or under base_path "
        "'/var/ns'",
    ]


def test_e5_base_path_under_a_private_dir():
    """E5: Slurm accepts base_path /tmp/slurm with /tmp private; nsctl checks both directions."""
    assert one("defaults:\n  base_path: /tmp/slurm\n  dirs: /tmp,/dev/shm\n") == (
        "ns.yaml:2:3: defaults.base_path: base_path '/tmp/slurm' is under the private directory "
        "'/tmp': the job's own mount would hide it"
    )


def test_e5_node_base_path_under_the_built_in_dirs():
    assert lines(
        """
        node_confs:
          - nodes: n1
            options: {base_path: /tmp/x}
          - nodes: n2
            options: {base_path: /dev}
        """
    ) == [
        "ns.yaml:3:15: node_confs[0].options.base_path: base_path '/tmp/x' is under the private "
        "directory '/tmp': the job's own mount would hide it",
        "ns.yaml:5:15: node_confs[1].options.base_path: the private directory '/dev/shm' is at or "
        "under base_path '/dev' (dirs defaults to /tmp,/dev/shm)",
    ]


def test_e5_e6_dir_base_path_under_a_dir_target():
    """E5/E6: mounts are made in list order, so a backing path under an earlier dir target would
    resolve into the job's private copy; nsctl refuses it."""
    assert one(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - path: /scratch
            - path: /data
              base_path: /scratch/back
        """
    ) == (
        "ns.yaml:6:7: defaults.dir_confs[1].base_path: base_path '/scratch/back' is under the "
        "private directory '/scratch'"
    )


def test_e5_node_entry_is_checked_against_inherited_dirs():
    assert one(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - path: /scratch
        node_confs:
          - nodes: n1
            options:
              base_path: /scratch/ns
        """
    ) == (
        "ns.yaml:8:7: node_confs[0].options.base_path: base_path '/scratch/ns' is under the "
        "private directory '/scratch': the job's own mount would hide it"
    )


def test_dir_base_path_equal_to_base_path_is_fine():
    """The man page example does this: the backing dir then sits beside .ns and .J."""
    assert (
        check(
            "defaults:\n  base_path: /v\n  dir_confs:\n    - {path: /scratch, base_path: /v}\n"
        ).issues
        == ()
    )


def test_e9_duplicates_after_trailing_slash_normalisation():
    assert lines(
        """
        defaults:
          base_path: /var/ns
          dirs: /tmp,/tmp/,/dev/shm
          dir_confs:
            - path: /scratch
            - path: /scratch//
        """
    )[1:] == [
        "ns.yaml:6:7: defaults.dir_confs[1].path: duplicate directory '/scratch//' (already "
        "listed as '/scratch')",
    ]
    assert one("defaults:\n  dirs: /tmp,/tmp/,/dev/shm\n") == (
        "ns.yaml:2:3: defaults.dirs: duplicate directory '/tmp/' (already listed as '/tmp')"
    )


def test_e9_backing_name_collisions():
    assert one(
        """
        defaults:
          dir_confs:
            - path: /a/b
            - path: /a_b
            - path: /c/d
              base_path: /elsewhere
            - path: /c_d
            - path: /e_f
              tmpfs: true
            - path: /e/f
        """
    ) == (
        "ns.yaml:4:7: defaults.dir_confs[1].path: directories '/a/b' and '/a_b' would share the "
        "backing directory '_a_b'"
    )


def test_e3_node_dirs_ignored_when_defaults_has_dir_confs_is_a_warning():
    checked = check(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - path: /tmp
        node_confs:
          - nodes: n1
            options:
              dirs: /tmp,/scratch
        """
    )
    assert checked.valid
    assert [str(i) for i in checked.issues] == [
        "ns.yaml:8:7: node_confs[0].options.dirs: warning: dirs is ignored on these nodes because "
        "defaults sets dir_confs, which takes precedence; set dir_confs here instead"
    ]


def test_an_error_inherited_from_defaults_is_reported_once():
    text = "defaults:\n  base_path: /v\n  dirs: /v/t\n"
    text += "node_confs:\n" + "".join(f"  - {{nodes: n{i}, options: {{}}}}\n" for i in range(5))
    assert one(text) == "ns.yaml:3:3: defaults.dirs: directory '/v/t' is at or under base_path '/v'"


# ---------------------------------------------------------------------------------------------
# YAML itself


def parser_problem(text: str) -> str:
    """What PyYAML's parser (the one nsctl uses) says about a broken text: nsctl's report is
    compared with it, never with the parser's wording, which is PyYAML's and libyaml's."""
    with pytest.raises(yaml.MarkedYAMLError) as excinfo:
        for _event in yaml.parse(text, Loader=checker._Loader):
            pass
    return excinfo.value.problem


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("defaults:\n  base_path: /v\n   shared: true\n", "ns.yaml:3:10"),
        ("defaults:\n  base_path: [/v\nnode_confs: 1\n", "ns.yaml:3:11"),
        ("defaults:\n\tbase_path: /v\n", "ns.yaml:2:1"),
        ("a: 'unterminated\n", "ns.yaml:2:1"),
    ],
)
def test_malformed_yaml_gives_the_parser_line_and_column(text, where):
    checked = checker.check_text(text, F)
    assert [str(i) for i in checked.issues] == [f"{where}: invalid YAML: {parser_problem(text)}"]
    assert checked.data is None and not checked.valid


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: *nowhere\n", "ns.yaml:1:4: invalid YAML: found undefined alias"),
        (
            "--- a\n--- b\n",
            "ns.yaml:2:1: invalid YAML: expected a single document in the stream: but found "
            "another document",
        ),
    ],
)
def test_yaml_that_parses_but_cannot_be_a_document(text, message):
    checked = checker.check_text(text, F)
    assert [str(i) for i in checked.issues] == [message]
    assert checked.data is None and not checked.valid


def test_duplicate_keys_are_errors():
    assert lines(
        """
        defaults:
          base_path: /var/ns
          shared: true
          base_path: /var/other
        defaults: {}
        """
    ) == [
        "ns.yaml:4:3: defaults.base_path: duplicate key",
        "ns.yaml:5:1: defaults: duplicate key",
    ]


def test_recursive_aliases_are_reported_not_a_crash():
    assert lines("defaults: &x\n  base_path: *x\n") == [
        "ns.yaml:2:3: defaults.base_path: invalid YAML: an alias refers to a node that contains it",
        "ns.yaml:2:3: defaults.base_path: expected a string, got nothing (null)",
        f"ns.yaml:2:14: {ALIASES}",
    ]


def test_alias_bombs_are_reported_not_expanded():
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in range(1, 7):
        prev, name = chr(96 + level), chr(97 + level)
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    assert lines(text)[0].startswith("ns.yaml:")
    assert (
        "invalid YAML: more than 1000000 values (aliases nested inside aliases?)" in lines(text)[0]
    )


def test_deep_nesting_is_reported_not_a_crash():
    """libyaml's composer recurses in C: 200,000 levels would overflow the stack (a segfault)."""
    text = "a: " + "[" * 200_000 + "]" * 200_000 + "\n"
    assert lines(text) == ["ns.yaml:1:53: invalid YAML: nested more than 50 levels deep"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # past the 1,000 levels the libyaml inside PyYAML 6.0.4 refuses (its scanner looks that
        # far ahead, so it stops before nsctl counts 51): nsctl's limit is still the one reported
        ("a: " + "[" * 1_001 + "]" * 1_001 + "\n", "1:53"),
        ("a: " + "{b: " * 1_001 + "c" + "}" * 1_001 + "\n", "1:200"),
        # deep, then broken: the nesting comes first in the file, so it is what is reported
        ("a: " + "[" * 60 + "\n", "1:53"),
        ("a: " + "[" * 2_000 + "\n", "1:53"),
        # block nesting: one mapping per line, each indented one more
        ("".join(" " * i + f"k{i}:\n" for i in range(60)) + " " * 60 + "x\n", "51:51"),
    ],
)
def test_deep_nesting_is_nsctls_own_finding_whatever_the_parser(text, where):
    """The same report for any PyYAML from 5.4 (whose libyaml has no nesting limit) to 6.0.4."""
    assert lines(text) == [f"ns.yaml:{where}: invalid YAML: nested more than 50 levels deep"]


def test_fifty_levels_are_not_too_deep():
    text = "a: " + "[" * 49 + "]" * 49 + "\n"  # the top mapping and 49 lists: 50 levels
    assert lines(text) == ["ns.yaml:1:1: a: unknown key 'a'"]


def test_an_anchor_alone_is_fine_an_alias_is_not():
    assert check("defaults: &d\n  base_path: /v\n").valid
    text = "defaults: &d\n  base_path: /v\nnode_confs:\n  - nodes: n1\n    options: *d\n"
    assert lines(text) == [f"ns.yaml:5:14: {ALIASES}"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "defaults: {base_path: !foo /x}",
            "ns.yaml:1:23: defaults.base_path: invalid YAML: unsupported tag '!foo'",
        ),
        (
            "defaults: {shared: !!binary eA==}",
            "ns.yaml:1:20: defaults.shared: invalid YAML: unsupported tag '!!binary'",
        ),
        (
            "defaults: {clone_ns_script_wait: !!int abc}",
            "ns.yaml:1:34: defaults.clone_ns_script_wait: unsupported tag '!!int': write the value "
            "without a tag (Slurm converts tagged values its own way: !!int 010 is 10 in Slurm, 8 "
            "in YAML 1.1)",
        ),
        ("defaults: !!set {a}", "ns.yaml:1:11: defaults: invalid YAML: unsupported tag '!!set'"),
    ],
)
def test_yaml_tags_other_than_plain_scalars_are_reported(text, message):
    assert message in lines(text)


def test_dates_are_text():
    """YAML 1.1 would make 2024-01-01 a date; Slurm (and nsctl) see the text."""
    assert one("defaults: {base_path: 2024-01-01}") == (
        "ns.yaml:1:12: defaults.base_path: base_path must be an absolute path, got '2024-01-01'"
    )


@pytest.mark.parametrize("text", ["", "# just a comment\n", "\n\n", "---\n"])
def test_a_file_without_configuration_is_refused_as_slurm_refuses_it(text):
    """slurmd 26.05 does not start with an empty or comment-only namespace.yaml
    (tests/configs/linux_corpus, 01 and 02)."""
    checked = checker.check_text(text, F)
    assert [str(i) for i in checked.issues] == [f"ns.yaml:1:1: {NO_CONTENT}"]


def test_an_empty_mapping_is_valid_and_isolates_nothing():
    checked = checker.check_text("{}", F)
    assert checked.valid and checked.issues == ()


# ---------------------------------------------------------------------------------------------
# positions, reporting


def test_all_errors_are_reported_in_one_run_in_file_order():
    found = lines(
        """
        defaults:
          base_paht: /var/ns
          shared: "maybe"
          clone_ns_script_wait: -1
        node_confs:
          - nodes: n1
            options:
              base_path: relative
          - nodes: n2
            options:
              clone_ns_flags: CLONE_NEWNET
              dir_confs:
                - path: /tmp
                  options: size=1g
        """
    )
    assert [line.split(": ", 2)[:2] for line in found] == [
        ["ns.yaml:2:3", "defaults.base_paht"],
        ["ns.yaml:3:3", "defaults.shared"],
        ["ns.yaml:4:3", "defaults.clone_ns_script_wait"],
        ["ns.yaml:8:7", "node_confs[0].options.base_path"],
        ["ns.yaml:11:7", "node_confs[1].options.clone_ns_flags"],
        ["ns.yaml:14:11", "node_confs[1].options.dir_confs[0].options"],
    ]


def test_nested_key_positions_follow_the_issue_example():
    """The issue's example: `namespace.yaml:14:7: node_confs[1].options.base_path: ...`."""
    text = "\n".join(
        [
            "# line 1",
            "defaults:",
            "  base_path: /var/ns",
            "node_confs:",
            "  - nodes: n1",
            "    options:",
            "      shared: true",
            "",
            "",
            "",
            "",
            "  - nodes: n2",
            "    options:",
            "      base_path: x",
        ]
    )
    issue = checker.check_text(text, "namespace.yaml").errors[0]
    assert (issue.line, issue.column, issue.path) == (14, 7, "node_confs[1].options.base_path")
    assert str(issue).startswith("namespace.yaml:14:7: node_confs[1].options.base_path: ")


def test_issue_formatting_and_json_form():
    issue = Issue("f.yaml", 3, 5, "defaults.shared", "bad", "warning")
    assert str(issue) == "f.yaml:3:5: defaults.shared: warning: bad"
    assert str(Issue("f.yaml", 0, 0, "", "cannot read: x")) == "f.yaml: cannot read: x"
    assert issue.as_dict() == {
        "file": "f.yaml",
        "line": 3,
        "column": 5,
        "path": "defaults.shared",
        "severity": "warning",
        "message": "bad",
    }
    assert checker.format_path(("node_confs", 1, "options", "dir_confs", 0, "path")) == (
        "node_confs[1].options.dir_confs[0].path"
    )


def test_check_file_reads_files_and_reports_unreadable_ones(tmp_path):
    good = tmp_path / "ns.yaml"
    good.write_text("defaults: {base_path: /v}\n")
    assert checker.check_file(str(good)).valid
    assert checker.check_file(str(good), display="shown.yaml").file == "shown.yaml"
    missing = checker.check_file(str(tmp_path / "nope.yaml"))
    assert [str(i) for i in missing.issues] == [
        f"{tmp_path}/nope.yaml: cannot read: No such file or directory"
    ]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert checker.check_file(str(binary)).issues[0].message.startswith("cannot read: ")


def test_example_is_valid_without_warnings():
    checked = checker.check_file("examples/namespace.yaml")
    assert checked.valid and checked.issues == ()


# ---------------------------------------------------------------------------------------------
# the per-node report


REPORT_DOC = """
defaults:
  base_path: /var/x
node_confs:
  - nodes: "n[01-04]"
    options: {base_path: /var/a}
  - nodes: ["n[03-04]", "n05"]
    options: {base_path: /var/b}
  - nodes: "n[01-02]"
    options: {base_path: /var/c}
  - nodes: "gpu[1-2]"
    options: {base_path: none}
  - nodes: "zz1"
    options: {shared: true}
"""


def test_node_report_groups_shadowed_multiple_and_unused():
    data = check(REPORT_DOC).data
    report = checker.node_report(data, ["n01", "n02", "n03", "n04", "n05", "n06", "gpu1", "gpu2"])
    assert report.as_dict() == {
        "nodes": [
            {"nodes": "n[01-04]", "entry": "node_confs[0]", "enabled": True, "base_path": "/var/a"},
            {"nodes": "n05", "entry": "node_confs[1]", "enabled": True, "base_path": "/var/b"},
            {"nodes": "n06", "entry": "defaults", "enabled": True, "base_path": "/var/x"},
            {
                "nodes": "gpu[1-2]",
                "entry": "node_confs[3]",
                "enabled": False,
                "reason": "base_path is none (node_confs[3])",
            },
        ],
        "shadowed": [{"entry": "node_confs[2]", "nodes": "n[01-02]"}],
        "multiple_matches": [
            {
                "nodes": "n[01-02]",
                "entries": ["node_confs[0]", "node_confs[2]"],
                "applies": "node_confs[0]",
            },
            {
                "nodes": "n[03-04]",
                "entries": ["node_confs[0]", "node_confs[1]"],
                "applies": "node_confs[0]",
            },
        ],
        "unused_entries": ["node_confs[2]", "node_confs[4]"],
    }


def test_shadowing_needs_every_node_claimed_by_earlier_entries_together():
    data = check(
        """
        node_confs:
          - {nodes: "a[1-2]", options: {}}
          - {nodes: "a[3-4]", options: {}}
          - {nodes: "a[2-3]", options: {}}
          - {nodes: "a[4-5]", options: {}}
        """
    ).data
    assert checker.shadowed_entries(data) == [{"entry": "node_confs[2]", "nodes": "a[2-3]"}]


def test_node_report_with_no_configuration():
    report = checker.node_report(None, ["n1", "n2"])
    assert report.as_dict()["nodes"] == [
        {
            "nodes": "n[1-2]",
            "entry": None,
            "enabled": False,
            "reason": "namespace.yaml sets nothing",
        }
    ]
