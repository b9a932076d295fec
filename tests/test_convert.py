"""`nsctl convert`: the namespace.yaml it prints gives every node what the job_container.conf
gave it (a property over generated files), says where each value came from, and refuses what
namespace.yaml cannot say the same way."""

from __future__ import annotations

import os
import textwrap

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_jcconf import SITE  # the site file whose resolution test_jcconf checks line by line

from nsctl import config, jcconf
from nsctl import validate as checker
from nsctl.convert import ConvertError, convert

FAST = settings(
    max_examples=int(os.environ.get("NSCTL_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def converted(text: str) -> str:
    checked = jcconf.check_text(text, "job_container.conf")
    assert checked.valid, [str(i) for i in checked.issues]
    return convert(checked.data, "job_container.conf")


def comparable(resolved: config.NodeConfig) -> dict:
    """What a node gets, without where it came from or which plugin's file said so."""
    if not resolved.enabled:
        return {"enabled": False}
    data = config.to_dict(resolved)
    for name in ("entry", *config.TMPFS_FIELDS):
        data.pop(name, None)
    return data


def assert_same_everywhere(text: str, nodes) -> str:
    yaml_text = converted(text)
    yaml_checked = checker.check_text(yaml_text, "namespace.yaml")
    assert yaml_checked.issues == (), [str(i) for i in yaml_checked.issues] + [yaml_text]
    jc = jcconf.check_text(text, "job_container.conf").data
    for node in nodes:
        want = comparable(jcconf.resolve(jc, node, f"h-{node}"))
        got = comparable(config.resolve(yaml_checked.data, node, f"h-{node}"))
        assert got == want, (node, text, yaml_text)
    return yaml_text


def test_a_site_file_converts_to_this():
    assert converted(SITE) == textwrap.dedent(
        """\
        # namespace.yaml converted by nsctl 0.1.0 from job_container.conf (namespace/tmpfs).
        # Every node gets what it gets from that file: defaults hold what the nodes that no
        # NodeName= line names get, each node_confs entry what one group of named nodes gets
        # on top (namespace.yaml applies only the first entry that matches a node).
        # What changes with namespace/linux's behaviour (nsctl follows the file it reads):
        # - the job directory stays mounted (root-only, 0700) inside the job; namespace/tmpfs
        #   unmounts it there.
        # - /dev/shm: namespace/tmpfs unmounts the node's /dev/shm and mounts a tmpfs without
        #   nosuid and nodev; namespace.yaml mounts a tmpfs with nosuid,nodev over it.
        # - init_script runs once BasePath/JOBID/.JOBID exists; InitScript ran before it
        #   was made.
        # - shared: namespace/tmpfs also unmounts the other jobs' directories inside a job;
        #   namespace/linux leaves them visible (and out of reach).
        defaults:
          base_path: "/var/ns"  # line 3: BasePath=/var/ns
          auto_base_path: true  # line 1: AutoBasePath=true
          dirs: "/tmp,/var/tmp,/dev/shm"  # line 2: Dirs=/tmp,/dev/shm,/var/tmp
        node_confs:
          # n[1-2]: lines 3, 4
          - nodes: "n[1-2]"
            options:
              base_path: "/scratch"  # line 4: NodeName=n[1-4]
              init_script: "/sbin/init-ns"  # line 4: NodeName=n[1-4]
              shared: true  # line 4: NodeName=n[1-4]
          # n[3-4]: lines 3, 4, 5
          - nodes: "n[3-4]"
            options:
              base_path: "/fast/%n"  # line 5: NodeName=n[3-4]
              clone_ns_script: "/sbin/clone"  # line 5: NodeName=n[3-4]
              init_script: "/sbin/init-ns"  # line 4: NodeName=n[1-4]
              shared: true  # line 4: NodeName=n[1-4]
              dirs: "/tmp"  # line 5: NodeName=n[3-4]
          # n9: lines 3, 6
          - nodes: "n9"
            options:
              base_path: "none"  # line 6: NodeName=n9
        """
    )
    assert_same_everywhere(SITE, [f"n{i}" for i in range(1, 11)])


def test_nodes_that_resolve_alike_share_one_entry_and_like_the_defaults_none():
    text = "BasePath=/all\nNodeName=n1 BasePath=/a\nNodeName=n2 BasePath=/a\n"
    text += "NodeName=n3 BasePath=/all\n"
    out = assert_same_everywhere(text, ["n1", "n2", "n3", "n4"])
    assert '  - nodes: "n[1-2]"\n' in out and "n3" not in out


def test_an_empty_dirs_is_an_empty_dir_confs_and_then_a_nodes_dirs_is_a_list():
    text = 'Dirs=""\nBasePath=/b\nNodeName=n1 BasePath=/b Dirs=/tmp,/dev/shm\n'
    out = assert_same_everywhere(text, ["n1", "n2"])
    assert "  dir_confs: []  # line 1: Dirs=: Dirs is empty\n" in out
    assert '      dir_confs:  # line 3: NodeName=n1\n        - path: "/tmp"\n' in out
    text = 'BasePath=/b\nNodeName=n1 BasePath=/b Dirs=""\n'
    assert "      dir_confs: []  # line 2: NodeName=n1: Dirs is empty\n" in (
        assert_same_everywhere(text, ["n1", "n2"])
    )


def test_a_file_without_basepath_lines_has_nothing_on_the_other_nodes():
    out = assert_same_everywhere("AutoBasePath=yes\nNodeName=n1 BasePath=/b\n", ["n1", "n2"])
    assert "defaults:\n  auto_base_path: true  # line 1: AutoBasePath=yes\n" in out
    empty = assert_same_everywhere("", ["n1"])  # comments alone would be refused by slurmd
    assert "\ndefaults: {}  # nothing to set" in empty and "node_confs:" not in empty


def test_entire_step_in_ns_is_a_note():
    out = assert_same_everywhere("EntireStepInNS=yes\nBasePath=/b\n", ["n1"])
    assert "# - EntireStepInNS (line 1: EntireStepInNS=yes) has no equivalent:" in out
    assert "entire_step" not in out.split("defaults:")[1]


def test_clone_ns_epilog_is_refused_with_the_reason():
    checked = jcconf.check_text("BasePath=/b CloneNSEpilog=/sbin/e\n", "job_container.conf")
    try:
        convert(checked.data, "job_container.conf")
    except ConvertError as exc:
        message = str(exc)
    else:
        raise AssertionError("converted a CloneNSEpilog")
    assert message.startswith("cannot convert CloneNSEpilog (line 1: BasePath=/b): ")
    assert "add clone_ns_epilog to the result once the script reads $SLURM_NS/mnt" in message


# ---------------------------------------------------------------------------------------------
# the property: whatever valid job_container.conf, every node gets the same from the output

NODES = [f"n{i}" for i in range(1, 7)]
HOSTLISTS = st.sampled_from(["n[1-3]", "n1,n5", "n[2-6]", "n4", "other", "n[1-6]", "n6"])
BASES = st.sampled_from(["/b1", "/b2", "/var/ns/%n", "/x/%h", "none", "NONE", "/b1/"])
DIRS = st.sampled_from(
    ["/tmp,/dev/shm", "/tmp", "/dev/shm", "/scratch,/tmp", '""', "/dev/shm,/tmp", "/s/%u", "/tmp/"]
)
BOOLS = st.sampled_from(["yes", "no", "true", "False", "1", "0", "UP", "down"])
WAITS = st.integers(min_value=1, max_value=50).map(str)
SCRIPTS = st.sampled_from(["/s/init", "/s/clone", "/s/a b"])
VALUES = {
    "AutoBasePath": BOOLS,
    "Shared": BOOLS,
    "EntireStepInNS": BOOLS,
    "Dirs": DIRS,
    "CloneNSScript_Wait": WAITS,
    "CloneNSEpilog_Wait": WAITS,
    "InitScript": SCRIPTS,
    "CloneNSScript": SCRIPTS,
}
GLOBALS = [name for name in VALUES if jcconf.KEY[name.lower()].alone == jcconf.GLOBAL]


@st.composite
def spelled(draw, key: str) -> str:
    """A key as an admin may write it (any case)."""
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in key)


@st.composite
def pair(draw, key: str, value: str) -> str:
    if " " in value or (value != '""' and draw(st.booleans())):
        value = f'"{value}"'
    space = draw(st.sampled_from(["", " "]))
    return f"{draw(spelled(key))}{space}={space}{value}"


@st.composite
def line_of(draw, first: str, first_value: str) -> str:
    keys = draw(st.lists(st.sampled_from(sorted(VALUES)), unique=True, max_size=4))
    pairs = [draw(pair(first, first_value))]
    if first == "NodeName":
        pairs.append(draw(pair("BasePath", draw(BASES))))
    pairs += [draw(pair(key, draw(VALUES[key]))) for key in keys]
    glue = draw(st.sampled_from([" ", "  ", " \\\n  "]))
    comment = draw(st.sampled_from(["", "  # a comment"]))
    return glue.join(pairs) + comment


@st.composite
def job_container_confs(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        if draw(st.booleans()):
            lines.append(draw(line_of("NodeName", draw(HOSTLISTS))))
        else:
            lines.append(draw(line_of("BasePath", draw(BASES))))
    for key in draw(st.lists(st.sampled_from(GLOBALS), unique=True, max_size=4)):
        at = draw(st.integers(min_value=0, max_value=len(lines)))
        lines.insert(at, draw(pair(key, draw(VALUES[key]))))
    if draw(st.booleans()):
        lines.insert(0, "# generated")
    return "\n".join(lines) + "\n"


@FAST
@given(job_container_confs())
def test_every_node_resolves_the_same_from_the_converted_file(text):
    checked = jcconf.check_text(text, "job_container.conf")
    assume(checked.valid)
    assert_same_everywhere(text, [*NODES, "other", "named-nowhere"])


def test_the_generator_makes_mostly_valid_files():
    """The property above would pass vacuously on files that never validate."""
    valid = []

    @settings(max_examples=100, deadline=None, database=None)
    @given(job_container_confs())
    def sample(text):
        valid.append(jcconf.check_text(text, "job_container.conf").valid)

    sample()
    assert sum(valid) >= len(valid) // 2, sum(valid)
