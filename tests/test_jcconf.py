"""job_container.conf: Slurm's grammar fact by fact, nsctl's refusals with their messages, the
last-match-wins resolution with its provenance, the per-node report and the Slurm-version rules.

Each grammar fact is from read_jcconf.c and src/common/parse_config.c (job_container.conf(5)
lists them); the real Slurm 22.05 reads the corpus in tests/configs/jobcontainer in the e2e test.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsctl import config, jcconf

FILE = "job_container.conf"


def check(text: str, version=None, nodes=()):
    return jcconf.check_text(text, FILE, version and jcconf.parse_version(version), nodes)


def errors(text: str, version=None, nodes=()) -> list[str]:
    return [str(issue) for issue in check(text, version, nodes).errors]


def only_error(text: str, version=None, nodes=()) -> str:
    (message,) = errors(text, version, nodes)
    return message


def resolve(text: str, node: str = "n1", hostname=None) -> config.NodeConfig:
    checked = check(text)
    assert checked.valid, [str(i) for i in checked.issues]
    return jcconf.resolve(checked.data, node, hostname)


# ---------------------------------------------------------------------------------------------
# the text as Slurm's parser sees it


def test_the_issues_example_message():
    text = "AutoBasePath=true\nBasePath=/var/ns\nNodeName=n[1-4] BasePth=/scratch BasePath=/s\n"
    assert only_error(text) == (
        "job_container.conf:3: NodeName=n[1-4]: unknown key 'BasePth' (did you mean 'BasePath'?)"
    )


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("BasePath=/a # a comment\n", [(1, "BasePath=/a ")]),
        ("# only a comment\n\nBasePath=/a\n", [(2, "\n"), (3, "BasePath=/a\n")]),
        ("BasePath=/a\\#b\n", [(1, "BasePath=/a#b\n")]),  # \# is a #
        ("BasePath=/a\\\\#b\n", [(1, "BasePath=/a\\")]),  # \\ is a \, then a comment
        ("NodeName=n1 \\\n  BasePath=/x\n", [(1, "NodeName=n1   BasePath=/x\n")]),
        # The next line is joined on with nothing in between, blanks after the \ allowed.
        ("BasePath=/a\\  \nb\nDirs=/tmp\n", [(1, "BasePath=/ab\n"), (3, "Dirs=/tmp\n")]),
        ("BasePath=/a\\\\\nb\n", [(1, "BasePath=/a\\\n"), (2, "b\n")]),  # an even run: no join
        ("BasePath=/a # a \\\nDirs=/tmp\n", [(1, "BasePath=/a "), (2, "Dirs=/tmp\n")]),
        ("BasePath=/a\r\nDirs=/tmp", [(1, "BasePath=/a\r\n"), (2, "Dirs=/tmp")]),
    ],
)
def test_logical_lines_are_slurms(text, lines):
    assert [(number, line) for number, line, _ in jcconf.logical_lines(text)] == lines


def test_keys_ignore_case_values_do_not_and_quotes_hold_blanks():
    resolved = resolve('autobasepath = YES\nBASEPATH="/var/a b"\nnodename=N1 basepath=/n\n', "n1")
    assert resolved.auto_base_path is True and resolved.base_path == "/var/a b"
    assert resolve("NodeName=N1 BasePath=/n\n", "n1").enabled is False  # node names do


def test_crlf_files_read_the_same():
    text = "AutoBasePath=yes\r\nNodeName=n1 BasePath=/n Shared=yes\r\n"
    assert resolve(text) == resolve(text.replace("\r\n", "\n"))


def test_an_escaped_hash_is_part_of_the_value():
    assert resolve("BasePath=/var/a\\#b\n").base_path == "/var/a#b"
    assert only_error('BasePath="/var/a#b"\n') == (
        'job_container.conf:1: BasePath="/var/a: BasePath must be an absolute path, got '
        "'\"/var/a' (a # starts a comment even inside quotes: write \\#)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Dirs=\n", "'Dirs=' has no value: Slurm refuses the line (\"Parse error\")"),
        ("foo\n", "not a Key=Value pair: 'foo'"),
        ("BasePath=/a junk\n", "BasePath=/a: unexpected text: 'junk'"),
        (
            "AutoBasePath=yes BasePath=/a\n",
            "AutoBasePath=yes: one key per line outside NodeName= and BasePath= lines: Slurm "
            "refuses 'BasePath=/a' after AutoBasePath=",
        ),
        ("BasePath+=/a\n", "'BasePath+=': Slurm reads it as 'BasePath=' (this file has no "),
        ("include other.conf\n", "Include is not supported by nsctl"),
        (
            "InitScript=/i\n",
            "InitScript may only stand on a NodeName= or BasePath= line (alone, Slurm refuses",
        ),
        (
            "CloneNSEpilog=/e\n",
            "CloneNSEpilog alone on a line is accepted and never read by Slurm",
        ),
        ("BasePath=/a NodeName=n1\n", "NodeName must begin its line"),
        ("Basepath=/a Dir=/tmp\n", "unknown key 'Dir' (did you mean 'Dirs'?)"),
        ("BasePaht=/a\n", "unknown key 'BasePaht' (did you mean 'BasePath'?)"),
        ("NodeName=n1 AutoBasePath=yes\n", "no BasePath on this NodeName= line: slurmd exits"),
        ("BasePath=/a BasePath=/b\n", "BasePath given twice on this line (Slurm uses the first)"),
        ("NodeName=n1 BasePath=/a basepath=/b\n", "given twice on this line (Slurm uses the last)"),
        ("Shared=yes\nshared=no\nBasePath=/b\n", "Shared is already set on line 1 (Slurm uses"),
    ],
)
def test_what_slurm_refuses_or_misreads_is_refused(text, message):
    assert message in only_error(text)


def test_a_nodename_line_without_basepath_is_refused_even_for_nodes_it_does_not_match():
    # Slurm checks only on the nodes the line matches; a file is for every node.
    text = "BasePath=/a\nNodeName=other AutoBasePath=no\n"
    assert only_error(text).startswith("job_container.conf:2: NodeName=other: no BasePath")


@pytest.mark.parametrize("word", ["yes", "YES", "up", "true", "1", "True"])
def test_slurms_true_words(word):
    assert resolve(f"BasePath=/a Shared={word}\n").shared is True


@pytest.mark.parametrize("word", ["no", "Down", "false", "0"])
def test_slurms_false_words(word):
    assert (
        resolve(f"BasePath=/a Shared=yes\nNodeName=n1 BasePath=/a Shared={word}\n").shared is False
    )


@pytest.mark.parametrize("word", ["maybe", "on", "off", "y", "2", '""'])
def test_any_other_boolean_is_refused_as_slurm_refuses_it(word):
    assert "Slurm refuses it too" in only_error(f"BasePath=/a Shared={word}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "0 is no time limit in namespace/tmpfs (namespace/linux reads it as 10)"),
        ("010", "Slurm reads '010' as 8 (a leading 0 means octal); write 8"),
        ("0x10", "Slurm reads '0x10' as 16; write 16"),
        ("2k", "Slurm reads '2k' as 2048; write 2048"),
        ("2147484", "must be at most 2147483, got 2147484; Slurm would wait without any time"),
        ("UNLIMITED", "Slurm would read it as 4294967295 and wait without any time limit"),
        ("-5", "expected a whole number of seconds, got '-5'; Slurm refuses it too"),
        ("5s", "expected a whole number of seconds, got '5s'; Slurm refuses it too"),
    ],
)
def test_waits(text, message):
    assert message in only_error(f"BasePath=/a CloneNSScript_Wait={text}\n")


def test_waits_default_to_10_and_read_plain_seconds():
    resolved = resolve("CloneNSEpilog_Wait=30\nBasePath=/a CloneNSScript_Wait=5\n")
    assert (resolved.clone_ns_script_wait, resolved.clone_ns_epilog_wait) == (5, 30)
    assert resolve("BasePath=/a\n").clone_ns_script_wait == config.DEFAULT_WAIT


@pytest.mark.parametrize(
    ("dirs", "message"),
    [
        ("/tmp,,/x", "empty entry in Dirs (a stray comma?)"),
        ('"/tmp, /x"', "blank around '/x' in Dirs (Slurm keeps it)"),
        ("tmp", "a directory must be an absolute path, got 'tmp'"),
        ("/tmp,/tmp/", "duplicate directory '/tmp/' (already listed as '/tmp')"),
        ("/a/b,/a_b", "directories '/a/b' and '/a_b' would share the backing directory '_a_b'"),
        ("/dev/SHM", "'/dev/SHM' holds /dev/shm: namespace/tmpfs decides"),
        ("/dev/shm/", "'/dev/shm/' holds /dev/shm"),
        ("/dev/shmx,/dev/shm", "'/dev/shmx' holds /dev/shm"),
        ("/x\\\\y", "'/x\\\\y': a directory may not hold a backslash or a control character"),
    ],
)
def test_dirs_are_checked_entry_by_entry(dirs, message):
    assert message in only_error(f"BasePath=/b Dirs={dirs}\n")


def test_an_empty_dirs_means_no_private_directory_with_a_warning():
    checked = check('BasePath=/b Dirs=""\n')
    assert checked.valid
    assert [i.message for i in checked.warnings] == [
        "Dirs is empty: jobs get their own mount namespace and no private directory"
    ]
    assert jcconf.resolve(checked.data, "n1").dir_confs == ()


def test_dirs_become_dir_confs_with_dev_shm_last_and_a_literal_percent():
    resolved = resolve("BasePath=/b Dirs=/dev/shm,/tmp/,/s/%u\n")
    assert resolved.dir_confs == (
        config.DirConf("/tmp", False),
        config.DirConf("/s/%%u", False),  # namespace/tmpfs expands nothing in Dirs
        config.DirConf("/dev/shm", True),
    )


def test_basepath_in_dirs_is_slurms_plain_prefix_test_and_nsctls_both_ways():
    assert 'Slurm refuses the file ("BasePath(/tm) cannot also be in Dirs."' in only_error(
        "BasePath=/tm\n"  # /tmp of the default Dirs starts with it
    )
    assert "has '/x/y', which starts with BasePath" in only_error("BasePath=/x Dirs=/x/y\n")
    assert "BasePath is under the private directory '/tmp' (the default Dirs" in only_error(
        "BasePath=/tmp/slurm\n"
    )
    # Lines apart: the node's BasePath (line 2) against the global Dirs (line 1).
    assert only_error("Dirs=/scratch\nNodeName=n1 BasePath=/scratch/b\n").startswith(
        "job_container.conf:2: NodeName=n1: BasePath is under the private directory '/scratch' "
        "(Dirs of line 1: Dirs=/scratch)"
    )


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("", 'an empty BasePath: Slurm would put every job directory in "/"'),
        ("nonexistent", "BasePath 'nonexistent' is neither 'none' nor an absolute path"),
        ("var/ns", "BasePath must be an absolute path, got 'var/ns'"),
        ("/v/%u", "unknown escape %u in BasePath (nsctl expands %h and %n"),
        ("/v/%", "a lone % at the end of BasePath"),
    ],
)
def test_basepath_values(base, message):
    value = base or '""'
    assert message in only_error(f"BasePath={value}\n")


@pytest.mark.parametrize(
    ("hosts", "message", "severity"),
    [
        ("n[1-", "bad hostlist 'n[1-'", "error"),
        ('"n1 n2"', "blank in hostlist 'n1 n2'", "error"),
        ('""', "an empty hostlist", "error"),
        ("ALL", "NodeName=ALL names a node called 'ALL'", "warning"),
    ],
)
def test_hostlists(hosts, message, severity):
    (issue,) = check(f"NodeName={hosts} BasePath=/b\n").issues
    assert message in issue.message and issue.severity == severity


def test_a_dropped_backslash_is_a_warning():
    (issue,) = check("BasePath=/v\\ar\n").issues
    assert issue.severity == "warning"
    assert issue.message == "a backslash before 'a' is dropped (Slurm's escapes are \\# and \\\\)"


# ---------------------------------------------------------------------------------------------
# resolution: every applying line in order, the last match winning key by key


SITE = """\
AutoBasePath=true
Dirs=/tmp,/dev/shm,/var/tmp
BasePath=/var/ns
NodeName=n[1-4] BasePath=/scratch Shared=yes InitScript=/sbin/init-ns
NodeName=n[3-4] BasePath=/fast/%n CloneNSScript=/sbin/clone Dirs=/tmp
NodeName=n9 BasePath=none
"""


def test_last_match_wins_key_by_key_and_globals_fill_the_rest():
    n3 = resolve(SITE, "n3")
    assert n3.entry == "lines 3, 4, 5"
    assert n3.base_path == "/fast/n3"
    assert n3.shared is True and n3.init_script == "/sbin/init-ns"  # from line 4, kept
    assert n3.clone_ns_script == "/sbin/clone"
    assert [d.path for d in n3.dir_confs] == ["/tmp"]
    assert n3.auto_base_path is True  # the global
    assert dict(n3.origins) == {
        "base_path": "line 5: NodeName=n[3-4]",
        "auto_base_path": "line 1: AutoBasePath=true",
        "clone_ns_flags": "namespace/tmpfs (a mount namespace only)",
        "clone_ns_script": "line 5: NodeName=n[3-4]",
        "clone_ns_script_wait": config.BUILTIN,
        "clone_ns_epilog": config.BUILTIN,
        "clone_ns_epilog_wait": config.BUILTIN,
        "init_script": "line 4: NodeName=n[1-4]",
        "user_ns_script": config.BUILTIN,
        "shared": "line 4: NodeName=n[1-4]",
        "disable_bpf_token": config.BUILTIN,
        "dir_confs": "line 5: NodeName=n[3-4]",
        "entire_step_in_ns": config.BUILTIN,
    }
    n1 = resolve(SITE, "n1")
    assert n1.base_path == "/scratch" and [d.path for d in n1.dir_confs] == [
        "/tmp",
        "/var/tmp",
        "/dev/shm",
    ]
    assert n1.origins["dir_confs"] == "line 2: Dirs=/tmp,/dev/shm,/var/tmp"
    elsewhere = resolve(SITE, "n7")
    assert (elsewhere.entry, elsewhere.base_path, elsewhere.shared) == ("line 3", "/var/ns", False)


def test_a_later_basepath_line_overrides_an_earlier_nodename_line():
    text = "NodeName=n1 BasePath=/mine Shared=yes\nBasePath=/all\n"
    resolved = resolve(text)
    assert (resolved.base_path, resolved.shared) == ("/all", True)  # Shared was not set again


def test_a_line_setting_a_key_beats_the_global_wherever_the_global_stands():
    assert (
        resolve("NodeName=n1 BasePath=/a AutoBasePath=no\nAutoBasePath=yes\n").auto_base_path
        is False
    )
    assert resolve("NodeName=n1 BasePath=/a\nAutoBasePath=yes\n").auto_base_path is True


def test_disabled_nodes_and_their_reasons():
    none = resolve(SITE, "n9")
    assert not none.enabled and none.disabled_reason == "BasePath is none (line 6: NodeName=n9)"
    assert resolve("NodeName=n1 BasePath=/a\n", "n2").disabled_reason == (
        "no NodeName= or BasePath= line applies to this node"
    )
    assert resolve("", "n2").disabled_reason == "job_container.conf sets nothing"
    assert resolve("# nothing\n", "n2").disabled_reason == "job_container.conf sets nothing"
    assert resolve("BasePath=NONE\n").enabled is False


def test_a_job_container_conf_gives_a_mount_namespace_only_and_says_its_plugin():
    resolved = resolve("BasePath=/a\n")
    assert resolved.clone_ns_flags == ("CLONE_NEWNS",) and not resolved.pid_ns
    assert resolved.plugin == config.TMPFS_PLUGIN and resolved.tmpfs_plugin
    assert resolved.entire_step_in_ns is False
    assert resolve("EntireStepInNS=yes\nBasePath=/a\n").entire_step_in_ns is True


def test_percent_h_and_n_are_expanded_once_each():
    assert resolve("BasePath=/v/%h/%n/%n\n", "n1", "host1").base_path == "/v/host1/n1/%n"


def test_the_cache_format_carries_a_job_container_conf_resolution():
    for node in ("n3", "n9", "n7"):
        resolved = resolve(SITE, node)
        again = config.from_dict(config.to_dict(resolved), resolved.origins)
        assert again == resolved


def test_namespace_yaml_output_has_no_tmpfs_fields():
    data = config.to_dict(config.resolve({"defaults": {"base_path": "/b"}}, "n1"))
    assert not set(config.TMPFS_FIELDS) & set(data)
    tmpfs = config.to_dict(resolve("BasePath=/b\n"))
    assert list(tmpfs)[:4] == ["node", "entry", "enabled", "plugin"]
    assert list(tmpfs)[-1] == "entire_step_in_ns"


# ---------------------------------------------------------------------------------------------
# the per-node report


def test_node_report_names_the_lines_that_apply():
    checked = check(SITE)
    report = jcconf.node_report(checked.data, [f"n{i}" for i in range(1, 11)])
    assert report.as_dict()["nodes"] == [
        {"nodes": "n[1-2]", "entry": "lines 3, 4", "enabled": True, "base_path": "/scratch"},
        {"nodes": "n3", "entry": "lines 3, 4, 5", "enabled": True, "base_path": "/fast/n3"},
        {"nodes": "n4", "entry": "lines 3, 4, 5", "enabled": True, "base_path": "/fast/n4"},
        {"nodes": "n[5-8,10]", "entry": "line 3", "enabled": True, "base_path": "/var/ns"},
        {
            "nodes": "n9",
            "entry": "lines 3, 6",
            "enabled": False,
            "reason": "BasePath is none (line 6: NodeName=n9)",
        },
    ]
    assert report.unused == () and report.multiple == ()
    assert jcconf.node_report(checked.data, ["n1"]).unused == ("line 5", "line 6")


def test_lines_that_change_nothing_are_reported():
    text = "NodeName=n[1-2] BasePath=/a\nNodeName=n[1-2] BasePath=/b\nNodeName=n1 BasePath=/c\n"
    report = jcconf.node_report(check(text).data, ["n1", "n2"])
    assert report.shadowed == ({"entry": "line 1", "nodes": "n[1-2]"},)
    every = "NodeName=n1 BasePath=/a Shared=yes\nBasePath=/b\n"
    assert jcconf.node_report(check(every).data, ["n1"]).shadowed == ()  # Shared stays
    assert jcconf.node_report(check("BasePath=/a\nBasePath=/b\n").data, []).shadowed == (
        {"entry": "line 1", "nodes": "every node"},
    )


# ---------------------------------------------------------------------------------------------
# what an older Slurm reads differently (--slurm-version)


@pytest.mark.parametrize(
    ("text", "version", "message"),
    [
        ("BasePath=/a Dirs=/tmp\n", "22.05", "Slurm 22.05 does not know Dirs (read from 23.02)"),
        ("Shared=yes\nBasePath=/a\n", "22.05.8", "Slurm 22.05.8 does not know Shared"),
        ("BasePath=/a EntireStepInNS=no\n", "24.05", "does not know EntireStepInNS (read from"),
        ("BasePath=/a CloneNSScript_Wait=5\n", "23.11", "does not know CloneNSScript_Wait"),
        ("BasePath=/v/%n\n", "22.05", "Slurm 22.05 does not expand %h and %n in BasePath"),
        ("BasePath=/v/%n\n", "23.02", "from 23.02.4; 23.02.0 to 23.02.3 swap them"),
        ("BasePath=none\n", "23.11", "Slurm 23.11 takes BasePath=none for a relative directory"),
        (
            "NodeName=n1 BasePath=/a\n",
            "22.05",
            "no NodeName= or BasePath= line applies to n2: Slurm 22.05's slurmd exits there",
        ),
        ("", "24.05.0-rc", None),
    ],
)
def test_an_older_slurm_release(text, version, message):
    if message is None:
        with pytest.raises(ValueError, match="not a Slurm version"):
            jcconf.parse_version(version)
        return
    assert message in only_error(text, version, ["n1", "n2"])
    assert check(text, None, ["n1", "n2"]).valid  # nsctl itself reads them as 24.11+ does


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("BasePath=/v/%n\n", "23.02.4"),
        ("BasePath=none\n", "24.05"),
        ("BasePath=/a Dirs=/tmp Shared=yes\n", "23.02"),
        ("BasePath=/a EntireStepInNS=yes CloneNSEpilog_Wait=3\n", "24.11"),
        ("NodeName=n1 BasePath=/a\n", "24.05"),
        ("AutoBasePath=yes\nNodeName=n[1-2] BasePath=/a InitScript=/i\n", "20.11.5"),
    ],
)
def test_what_a_release_reads_as_nsctl_does_passes(text, version):
    assert check(text, version, ["n1", "n2"]).issues == ()


def test_versions_before_job_container_tmpfs_are_refused():
    with pytest.raises(ValueError, match="first shipped in 20.11.5"):
        jcconf.parse_version("20.11.4")
    with pytest.raises(ValueError, match="no job_container/tmpfs"):
        jcconf.parse_version("20.02")
    assert jcconf.parse_version("22.05") == (22, 5) and jcconf.show((22, 5, 8)) == "22.05.8"


def test_an_uncovered_node_without_a_node_list_is_a_warning():
    (issue,) = check("NodeName=n1 BasePath=/a\n", "22.05").issues
    assert issue.severity == "warning" and issue.line == 0
    assert str(issue).startswith("job_container.conf: warning: no BasePath= line")


def test_the_key_table_is_slurms():
    """The line keys and the global keys of read_jcconf.c (26.05), in its spelling."""
    assert {k.name for k in jcconf.KEYS} == {
        "AutoBasePath",
        "BasePath",
        "Dirs",
        "EntireStepInNS",
        "InitScript",
        "NodeName",
        "Shared",
        "CloneNSScript",
        "CloneNSEpilog",
        "CloneNSScript_Wait",
        "CloneNSEpilog_Wait",
    }
    alone = {k.name for k in jcconf.KEYS if k.alone != jcconf.LINE}
    assert alone == {k.name for k in jcconf.KEYS} - {"InitScript"}
    for key in jcconf.KEYS:
        if key.option:
            assert key.option in config.NodeConfig._fields or key.option == "dirs", key


# ---------------------------------------------------------------------------------------------
# nothing, however odd, makes the reader raise


PIECES = st.sampled_from(
    [
        "NodeName=",
        "BasePath=",
        "Dirs=",
        "AutoBasePath=",
        "Shared=",
        "InitScript=",
        "CloneNSScript_Wait=",
        "n[1-3]",
        "n1",
        "/tmp",
        "/dev/shm",
        "/var/ns/%n",
        "none",
        "yes",
        "0",
        "010",
        '"',
        '""',
        "#",
        "\\",
        "\\#",
        " ",
        "\t",
        "\n",
        "\r\n",
        ",",
        "+=",
        "include ",
        "%",
        "\x00",
        "é",
    ]
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(PIECES, max_size=40).map("".join))
def test_any_text_is_checked_without_raising_and_what_passes_resolves(text):
    checked = jcconf.check_text(text, FILE, (22, 5), ["n1"])
    assert all(i.line >= 0 for i in checked.issues)
    if checked.valid:
        for node in ("n1", "n2"):
            resolved = jcconf.resolve(checked.data, node)
            assert config.from_dict(config.to_dict(resolved), resolved.origins) == resolved
        jcconf.node_report(checked.data, ["n1", "n2", "n3"])
