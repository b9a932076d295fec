"""The pure config layer: Slurm's merge rules (E2, E3, E4, E20), paths, escapes, serialisation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from typing import Any, Optional

import pytest
import yaml

from nsctl import config
from nsctl import validate as checker
from nsctl.config import BUILTIN, DirConf, NodeConfig

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "namespace.yaml")


def example() -> Any:
    checked = checker.check_file(EXAMPLE)
    assert checked.valid
    return checked.data


def doc(text: str, *, valid: bool = True) -> Any:
    """The typed document validate builds, which is what resolve() takes; with valid=False, a
    document validate refuses, as PyYAML reads it (None for a null), to show that resolve still
    follows Slurm's merge for what Slurm would accept."""
    text = textwrap.dedent(text)
    if not valid:
        return yaml.safe_load(text)
    checked = checker.check_text(text, "ns.yaml")
    assert checked.valid, [str(i) for i in checked.errors]
    return checked.data


def resolve(text: str, node: str = "n1", hostname: Optional[str] = None, **kw) -> NodeConfig:
    return config.resolve(doc(text, **kw), node, hostname)


def paths(resolved: NodeConfig) -> list[tuple[str, bool]]:
    return [(d.path, d.tmpfs) for d in resolved.dir_confs]


# ---------------------------------------------------------------------------------------------
# defaults, then only the first matching entry (E2)


def test_defaults_only_apply_to_an_unlisted_node():
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          shared: true
        node_confs:
          - nodes: n1
            options: {base_path: /var/other}
        """,
        node="n2",
    )
    assert resolved.enabled and resolved.entry == "defaults"
    assert resolved.base_path == "/var/ns"
    assert resolved.shared is True
    assert resolved.origins["base_path"] == "defaults"


def test_e2_first_matching_entry_wins_and_later_matches_are_ignored_entirely():
    """E2: n1 matches entries 0 and 1; nothing of entry 1 (not even keys entry 0 lacks) applies."""
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          init_script: /etc/init-default
        node_confs:
          - nodes: "n[1-2]"
            options:
              base_path: /var/first
          - nodes: n1
            options:
              base_path: /var/second
              shared: true
              init_script: /etc/init-second
              clone_ns_flags: [CLONE_NEWPID]
        """
    )
    assert resolved.entry == "node_confs[0]"
    assert resolved.base_path == "/var/first"
    assert resolved.shared is False
    assert resolved.init_script == "/etc/init-default"
    assert resolved.clone_ns_flags == ("CLONE_NEWNS",)
    assert resolved.origins["init_script"] == "defaults"


def test_e2_later_entry_applies_to_nodes_the_first_does_not_cover():
    text = """
        defaults: {base_path: /var/ns}
        node_confs:
          - nodes: "n[1-2]"
            options: {base_path: /var/first}
          - nodes: "n[2-3]"
            options: {base_path: /var/second}
        """
    assert resolve(text, node="n2").base_path == "/var/first"
    assert resolve(text, node="n3").base_path == "/var/second"
    assert resolve(text, node="n3").entry == "node_confs[1]"


def test_matching_entry_returns_the_first_index_or_none():
    data = doc(
        """
        node_confs:
          - nodes: a
            options: {}
          - nodes: "a,b"
            options: {}
        """
    )
    assert config.matching_entry(data, "a") == 0
    assert config.matching_entry(data, "b") == 1
    assert config.matching_entry(data, "c") is None
    assert config.matching_entry({}, "a") is None


def test_resolve_with_a_known_entry_index_skips_the_search():
    """node_report passes the index it already computed; the result must be the same."""
    data = doc(
        """
        defaults: {base_path: /var/ns}
        node_confs:
          - {nodes: "n[1-2]", options: {base_path: /var/a}}
          - {nodes: "n[2-3]", options: {base_path: /var/b}}
        """
    )
    for node, index in (("n1", 0), ("n2", 0), ("n3", 1), ("n4", None)):
        assert config.resolve(data, node, index=index) == config.resolve(data, node)
    assert config.resolve(data, "n2", index=1).base_path == "/var/b"
    assert config.resolve(data, "n2", index=None).entry == "defaults"


def test_hostlist_zero_padding_matters():
    """n[01-04] covers n01..n04, and n1 is a different node."""
    text = """
        defaults: {base_path: /var/ns}
        node_confs:
          - nodes: "n[01-04]"
            options: {base_path: /var/padded}
        """
    assert resolve(text, node="n01").base_path == "/var/padded"
    assert resolve(text, node="n04").base_path == "/var/padded"
    assert resolve(text, node="n1").base_path == "/var/ns"
    assert resolve(text, node="n05").entry == "defaults"


def test_nodes_may_be_a_list_of_hostlist_strings():
    text = """
        defaults: {base_path: /var/ns}
        node_confs:
          - nodes: ["gpu[1-2]", "n7", "cpu[01-02],big1"]
            options: {base_path: /var/list}
        """
    for node in ("gpu1", "gpu2", "n7", "cpu02", "big1"):
        assert resolve(text, node=node).base_path == "/var/list", node
    assert resolve(text, node="gpu3").base_path == "/var/ns"
    assert config.hostlist_names(["a[1-2]", "b"]) == {"a1", "a2", "b"}
    assert config.hostlist_names("a[1-2]") == {"a1", "a2"}


# ---------------------------------------------------------------------------------------------
# how a node entry overrides the defaults


def test_strings_override_only_when_non_empty():
    """Slurm: a node cannot clear a default script with "" (validate warns that the default
    stays), nor with a real null (Slurm's !!null; validate refuses it, and the plain null here,
    which Slurm would read as the text 'null')."""
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          init_script: /etc/init
          clone_ns_script: /etc/ns
          clone_ns_epilog: /etc/epi
          user_ns_script: /etc/user
        node_confs:
          - nodes: n1
            options:
              base_path: ""
              init_script: ""
              clone_ns_script: null
              clone_ns_epilog: /etc/node-epi
        """,
        valid=False,
    )
    assert resolved.base_path == "/var/ns"
    assert resolved.init_script == "/etc/init"
    assert resolved.clone_ns_script == "/etc/ns"
    assert resolved.clone_ns_epilog == "/etc/node-epi"
    assert resolved.user_ns_script == "/etc/user"
    assert resolved.origins["init_script"] == "defaults"
    assert resolved.origins["clone_ns_epilog"] == "node_confs[0]"


def test_bools_and_ints_override_whenever_the_key_is_present():
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          shared: true
          auto_base_path: true
          disable_bpf_token: true
          clone_ns_script_wait: 30
          clone_ns_epilog_wait: 40
        node_confs:
          - nodes: n1
            options:
              shared: false
              auto_base_path: false
              clone_ns_script_wait: 0
        """
    )
    assert resolved.shared is False
    assert resolved.auto_base_path is False
    assert resolved.disable_bpf_token is True  # key absent at node level: defaults stay
    assert resolved.clone_ns_script_wait == 10  # present as 0: overrides 30, and 0 means 10
    assert resolved.clone_ns_epilog_wait == 40
    assert resolved.origins["shared"] == "node_confs[0]"
    assert resolved.origins["disable_bpf_token"] == "defaults"


def test_null_bool_and_wait_at_node_level_still_override():
    """Slurm: key present with a real null (!!null) -> false / 0 (= 10). validate refuses any
    null there, the resolver still follows Slurm for it."""
    resolved = resolve(
        """
        defaults: {base_path: /var/ns, shared: true, clone_ns_epilog_wait: 50}
        node_confs:
          - nodes: n1
            options: {shared: null, clone_ns_epilog_wait: null}
        """,
        valid=False,
    )
    assert resolved.shared is False
    assert resolved.clone_ns_epilog_wait == 10


@pytest.mark.parametrize(
    "text",
    [
        "defaults: {base_path: /x}",
        "defaults: {base_path: /x, clone_ns_script_wait: 0, clone_ns_epilog_wait: 0}",
    ],
)
def test_wait_zero_or_absent_means_ten(text):
    resolved = resolve(text)
    assert resolved.clone_ns_script_wait == 10
    assert resolved.clone_ns_epilog_wait == 10


def test_wait_values_are_kept():
    resolved = resolve(
        "defaults: {base_path: /x, clone_ns_script_wait: 1, clone_ns_epilog_wait: 99}"
    )
    assert (resolved.clone_ns_script_wait, resolved.clone_ns_epilog_wait) == (1, 99)


# ---------------------------------------------------------------------------------------------
# private directories


def test_default_dirs_are_tmp_and_dev_shm_with_dev_shm_a_tmpfs():
    resolved = resolve("defaults: {base_path: /var/ns}")
    assert resolved.dir_confs == (DirConf("/tmp", False), DirConf("/dev/shm", True))
    assert resolved.origins["dir_confs"] == BUILTIN
    assert config.DEFAULT_DIRS == "/tmp,/dev/shm"


def test_dirs_string_replaces_the_default_and_dev_shm_stays_tmpfs():
    resolved = resolve("defaults: {base_path: /var/ns, dirs: '/scratch,/dev/shm,/tmp'}")
    assert paths(resolved) == [("/scratch", False), ("/dev/shm", True), ("/tmp", False)]
    assert resolved.origins["dir_confs"] == "defaults"


def test_node_dirs_replace_default_dirs_when_nobody_sets_dir_confs():
    resolved = resolve(
        """
        defaults: {base_path: /var/ns, dirs: /tmp}
        node_confs:
          - nodes: n1
            options: {dirs: "/scratch"}
        """
    )
    assert paths(resolved) == [("/scratch", False)]
    assert resolved.origins["dir_confs"] == "node_confs[0]"


def test_e3_node_dirs_are_ignored_when_defaults_has_dir_confs():
    """E3: defaults' dir_confs survives the merge, so the node's dirs string has no effect."""
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - path: /tmp
              tmpfs: true
        node_confs:
          - nodes: n1
            options:
              dirs: /scratch,/dev/shm
        """
    )
    assert paths(resolved) == [("/tmp", True)]
    assert resolved.origins["dir_confs"] == "defaults"


def test_dir_confs_replaces_the_whole_list_without_merging_paths():
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - {path: /tmp, tmpfs: true, options: "size=1g"}
            - {path: /dev/shm}
        node_confs:
          - nodes: n1
            options:
              dir_confs:
                - {path: /tmp, options: noexec}
        """
    )
    assert resolved.dir_confs == (DirConf("/tmp", False, ("noexec",)),)
    assert resolved.origins["dir_confs"] == "node_confs[0]"


def test_node_dir_confs_overrides_defaults_dirs_string():
    resolved = resolve(
        """
        defaults: {base_path: /var/ns, dirs: "/a,/b"}
        node_confs:
          - nodes: n1
            options:
              dir_confs: [{path: /c}]
        """
    )
    assert paths(resolved) == [("/c", False)]


def test_e3_empty_dir_confs_means_no_private_mounts():
    """E3: `dir_confs: []` at node level wipes defaults' list and the dirs default alike."""
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          dirs: /tmp,/dev/shm
        node_confs:
          - nodes: n1
            options: {dir_confs: []}
        """
    )
    assert resolved.enabled and resolved.dir_confs == ()
    assert resolve("defaults: {base_path: /x, dir_confs: []}").dir_confs == ()


def test_dev_shm_is_always_tmpfs_and_ignores_its_base_path():
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - {path: /dev/shm, tmpfs: false, base_path: /data, options: "size=1g,noexec"}
        """
    )
    assert resolved.dir_confs == (DirConf("/dev/shm", True, ("noexec",), ("size=1g",), None),)


def test_trailing_slashes_are_normalised():
    resolved = resolve("defaults: {base_path: /var/ns/, dir_confs: [{path: /tmp/}, {path: /s//}]}")
    assert resolved.base_path == "/var/ns"
    assert paths(resolved) == [("/tmp", False), ("/s", False)]
    # (validate refuses /dev/shm/, which Slurm bind-mounts; resolve would make it a tmpfs)
    unchecked = config.resolve({"defaults": {"base_path": "/v", "dirs": "/dev/shm/"}}, "n1")
    assert paths(unchecked) == [("/dev/shm", True)]
    assert config.normalise_dir("/") == "/"
    assert config.normalise_dir("///") == "/"


def test_mount_options_split_into_flags_and_tmpfs_data_like_slurm():
    flags, data = config.parse_mount_options("NOEXEC,size=8g,nosuid,mode=0700,RO")
    assert flags == ("noexec", "nosuid", "ro")
    assert data == ("size=8g", "mode=0700")
    assert config.parse_mount_options(None) == ((), ())
    assert config.parse_mount_options("") == ((), ())
    assert DirConf("/t", True, flags, data).options == "noexec,nosuid,ro,size=8g,mode=0700"


def test_dir_base_path_is_expanded_and_kept_for_bind_mounts_only():
    resolved = resolve(
        """
        defaults:
          base_path: /var/ns
          dir_confs:
            - {path: /scratch, base_path: "/data/%n/"}
            - {path: /fast, base_path: /nvme, tmpfs: true}
        """
    )
    assert [d.base_path for d in resolved.dir_confs] == ["/data/n1", None]


# ---------------------------------------------------------------------------------------------
# namespaces (E4)


def test_clone_newns_is_always_on():
    assert resolve("defaults: {base_path: /x}").clone_ns_flags == ("CLONE_NEWNS",)
    resolved = resolve("defaults: {base_path: /x, clone_ns_flags: [CLONE_NEWPID]}")
    assert resolved.clone_ns_flags == ("CLONE_NEWNS", "CLONE_NEWPID")
    assert resolved.pid_ns and not resolved.user_ns
    assert resolved.origins["clone_ns_flags"] == "defaults"


@pytest.mark.parametrize(
    "flags",
    [
        "'clone_newuser, Clone_NewPid'",
        "[clone_newuser, CLONE_NEWPID]",
        "'CLONE_NEWUSER,CLONE_NEWPID,CLONE_NEWNS,clone_newuser'",
    ],
)
def test_e4_flags_are_case_insensitive_as_a_list_or_a_comma_string(flags):
    resolved = resolve(f"defaults: {{base_path: /x, clone_ns_flags: {flags}}}")
    assert resolved.clone_ns_flags == ("CLONE_NEWNS", "CLONE_NEWUSER", "CLONE_NEWPID")
    assert resolved.user_ns and resolved.pid_ns


@pytest.mark.parametrize("empty", ["[]", "''"])
def test_e4_node_level_empty_flags_do_not_clear_the_defaults(empty):
    resolved = resolve(
        f"""
        defaults: {{base_path: /x, clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]}}
        node_confs:
          - nodes: n1
            options: {{clone_ns_flags: {empty}}}
        """
    )
    assert resolved.clone_ns_flags == ("CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER")
    assert resolved.origins["clone_ns_flags"] == "defaults"


def test_e4_node_level_newns_alone_drops_pid_and_user():
    resolved = resolve(
        """
        defaults: {base_path: /x, clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]}
        node_confs:
          - nodes: n1
            options: {clone_ns_flags: [CLONE_NEWNS]}
        """
    )
    assert resolved.clone_ns_flags == ("CLONE_NEWNS",)
    assert resolved.origins["clone_ns_flags"] == "node_confs[0]"


def test_flag_tokens_accepts_lists_and_comma_strings():
    assert config.flag_tokens(" a , b,,") == ["a", "b"]
    assert config.flag_tokens(["a ", " ", "b"]) == ["a", "b"]
    assert config.flag_tokens("") == []


# ---------------------------------------------------------------------------------------------
# %h, %n and none (E20)


def test_e20_only_the_first_h_and_first_n_are_expanded():
    resolved = resolve(
        "defaults: {base_path: '/v/%h/%n/%h/%n'}", node="n1", hostname="host1.example"
    )
    assert resolved.base_path == "/v/host1.example/n1/%h/%n"
    assert config.expand_node_escapes("%n%h%n", "n", "h") == "nh%n"


def test_e20_h_defaults_to_the_node_name_when_no_hostname_is_given():
    assert resolve("defaults: {base_path: '/v/%h'}", node="n9").base_path == "/v/n9"


def test_e20_h_is_nodehostname_from_slurm_conf(tmp_path):
    slurm_conf = tmp_path / "slurm.conf"
    slurm_conf.write_text(
        "ClusterName=c\n"
        "NodeName=DEFAULT CPUs=2\n"
        "NodeName=n[1-3] NodeHostname=host[7-9] CPUs=4  # comment\n"
        "nodename=solo\n"
        "# NodeName=n9 NodeHostname=ignored\n"
        "NodeName=bad[ NodeHostname=x\n"
    )
    env = {"SLURM_CONF": str(slurm_conf)}
    assert config.slurm_node_hostnames(str(slurm_conf)) == {
        "n1": "host7",
        "n2": "host8",
        "n3": "host9",
    }
    assert config.node_hostname("n2", env) == "host8"
    # Without NodeHostname (or without slurm.conf) %h is the short host name, as in Slurm.
    short = socket.gethostname().split(".", 1)[0]
    assert config.node_hostname("solo", env) == short
    assert config.node_hostname("n2", {}) == short
    assert config.short_hostname() == short
    names = [names for names, _ in config.slurm_conf_nodes(str(slurm_conf))]
    assert names == [["n1", "n2", "n3"], ["solo"]]
    assert config.slurm_conf_nodes(str(tmp_path / "missing.conf")) == []
    assert config.slurm_conf_nodes(None) == []


@pytest.mark.parametrize("none", ["none", "None", "NONE", "nOnE"])
def test_base_path_none_in_any_case_disables(none):
    resolved = resolve(
        f"""
        defaults: {{base_path: /var/ns}}
        node_confs:
          - nodes: n1
            options: {{base_path: {none}}}
        """
    )
    assert not resolved.enabled
    assert resolved.entry == "node_confs[0]"
    assert resolved.disabled_reason == "base_path is none (node_confs[0])"
    assert resolved.dir_confs == ()


def test_no_base_path_disables():
    resolved = resolve("defaults: {shared: true}")
    assert not resolved.enabled
    assert resolved.disabled_reason == "no base_path applies to this node"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_disables_everywhere(text):
    resolved = config.resolve(yaml.safe_load(text), "n1")
    assert resolved == NodeConfig(
        node="n1", entry="", enabled=False, disabled_reason="namespace.yaml sets nothing"
    )


def test_origins_name_where_every_value_came_from():
    resolved = config.resolve(example(), "n3")
    assert resolved.origins["base_path"] == "node_confs[0]"
    assert resolved.origins["clone_ns_flags"] == "defaults"
    assert resolved.origins["disable_bpf_token"] == BUILTIN
    assert resolved.origins["user_ns_script"] == "node_confs[0]"
    assert "dirs" not in resolved.origins


def test_example_node_n3():
    resolved = config.resolve(example(), "n3")
    assert resolved.base_path == "/var/nvme/storage_1"
    assert resolved.clone_ns_script_wait == 20
    assert resolved.clone_ns_flags == ("CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER")
    assert resolved.dir_confs == (
        DirConf("/tmp", True, ("noexec", "nosuid"), ("size=8g",)),
        DirConf("/scratch", False, ("noexec", "nosuid"), (), "/var/nvme/storage_1"),
    )


# ---------------------------------------------------------------------------------------------
# job paths


def test_expand_job_path_escapes():
    assert config.expand_job_path("/s/%u/%j", "42", "alice") == "/s/alice/42"
    assert config.expand_job_path("/s/%S-%j", "42", "al", sluid="sABC") == "/s/sABC-42"
    assert config.expand_job_path("/s/100%%/%j%%", "7", "al") == "/s/100%/7%"
    assert config.expand_job_path("/plain", "7", "al") == "/plain"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("/s/%x", "unknown escape %x in '/s/%x'"),
        ("/s/%J", "unknown escape %J in '/s/%J'"),
        ("/s/%h", "unknown escape %h in '/s/%h'"),
        ("/s/%", "a lone % at the end of '/s/%'"),
        ("/s/%S", "'/s/%S' uses %S but the job has no SLUID"),
    ],
)
def test_expand_job_path_errors(template, message):
    with pytest.raises(ValueError) as excinfo:
        config.expand_job_path(template, "1", "u")
    assert str(excinfo.value) == message


# ---------------------------------------------------------------------------------------------
# where the file and the node name come from


def test_config_path_resolution_order():
    env = {"NSCTL_CONFIG": "/env/ns.yaml", "SLURM_CONF": "/etc/x/slurm.conf"}
    assert config.config_path("/explicit.yaml", env) == "/explicit.yaml"
    assert config.config_path(None, env) == "/env/ns.yaml"
    assert config.config_path(None, {"SLURM_CONF": "/run/slurm/conf/slurm.conf"}) == (
        "/run/slurm/conf/namespace.yaml"
    )
    assert config.config_path(None, {"NSCTL_CONFIG": "", "SLURM_CONF": ""}) == (
        "/etc/slurm/namespace.yaml"
    )
    assert config.config_path(None, {}) == config.DEFAULT_CONFIG


def test_node_name_resolution_order():
    assert config.node_name("cli", {"SLURMD_NODENAME": "env"}) == "cli"
    assert config.node_name(None, {"SLURMD_NODENAME": "env"}) == "env"
    assert config.node_name(None, {}) == socket.gethostname().split(".", 1)[0]


# ---------------------------------------------------------------------------------------------
# small helpers and the data classes


def test_is_under_respects_path_boundaries():
    assert config.is_under("/tmp", "/tmp")
    assert config.is_under("/tmp/x", "/tmp/")
    assert not config.is_under("/tmpfoo", "/tmp")
    assert config.is_under("/anything", "/")
    assert not config.is_under("/", "/tmp")


def test_backing_name_collides_for_a_b_and_a_underscore_b():
    assert config.backing_name("/tmp") == "_tmp"
    assert config.backing_name("/a/b") == config.backing_name("/a_b") == "_a_b"


def test_resolved_config_is_frozen():
    resolved = resolve("defaults: {base_path: /x}")
    with pytest.raises(AttributeError):
        resolved.base_path = "/y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        resolved.dir_confs[0].path = "/y"  # type: ignore[misc]


@pytest.mark.parametrize("node", ["n1", "n3", "n5", "n8"])
def test_to_dict_from_dict_round_trip(node):
    resolved = config.resolve(example(), node)
    data = config.to_dict(resolved)
    again = config.from_dict(data, resolved.origins)
    assert again == resolved
    assert again.origins == resolved.origins
    assert config.to_dict(again) == data


def test_to_dict_of_a_disabled_node():
    resolved = resolve("defaults: {base_path: NONE}")
    assert config.to_dict(resolved) == {
        "node": "n1",
        "entry": "defaults",
        "enabled": False,
        "reason": "base_path is none (defaults)",
    }
    assert config.from_dict(config.to_dict(resolved), resolved.origins) == resolved


def test_option_key_tables_match_the_schema():
    """One source of truth: the resolver's key lists and the shipped schema name the same keys."""
    schema = checker.schema()
    assert set(schema["$defs"]["options"]["properties"]) == set(config.OPTION_KEYS)
    assert set(schema["$defs"]["dir_conf"]["properties"]) == set(config.DIR_CONF_KEYS)
    assert set(schema["$defs"]["node_conf"]["properties"]) == set(config.NODE_CONF_KEYS)
    assert set(schema["properties"]) == set(config.TOP_KEYS)


# ---------------------------------------------------------------------------------------------
# the option table, and the merge that resolve and validate share


def test_every_option_but_dirs_is_a_resolved_field_in_table_order():
    """A new key is one row of OPTIONS plus its NodeConfig field; show-config prints them in
    table order, after node, entry and enabled."""
    fields = [f for f in NodeConfig._fields if f not in ("node", "entry", "enabled")]
    fields = [f for f in fields if f not in ("disabled_reason", "origins", *config.TMPFS_FIELDS)]
    assert fields == list(config.RESOLVED_KEYS)
    assert tuple(k for k in config.OPTION_KEYS if k != "dirs") == config.RESOLVED_KEYS
    assert list(config.to_dict(resolve("defaults: {base_path: /x}")))[3:] == fields
    for option in config.OPTIONS:
        assert option.kind in config.MERGE_RULE, option
    assert config.STRING_KEYS == (
        "base_path",
        "clone_ns_script",
        "clone_ns_epilog",
        "init_script",
        "user_ns_script",
        "dirs",
    )
    assert config.BOOL_KEYS == ("auto_base_path", "shared", "disable_bpf_token")
    assert config.WAIT_KEYS == ("clone_ns_script_wait", "clone_ns_epilog_wait")


def test_built_in_defaults_come_from_the_table():
    resolved = resolve("defaults: {base_path: /x}")
    for option in config.OPTIONS:
        if option.kind in (config.BOOL, config.WAIT):
            assert getattr(resolved, option.name) == option.default, option
        if option.kind == config.SCRIPT:
            assert getattr(resolved, option.name) is None, option
        if option.name != "base_path" and option.name in resolved.origins:
            assert resolved.origins[option.name] == BUILTIN, option


def test_merge_records_the_key_path_of_every_value():
    data = doc(
        """
        defaults: {base_path: /v, shared: true, dirs: /a}
        node_confs:
          - {nodes: n1, options: {shared: false, init_script: /i}}
        """
    )
    assert config.merge(data, 0) == {
        "base_path": config.Setting("/v", ("defaults", "base_path")),
        "shared": config.Setting(False, ("node_confs", 0, "options", "shared")),
        "dirs": config.Setting("/a", ("defaults", "dirs")),
        "init_script": config.Setting("/i", ("node_confs", 0, "options", "init_script")),
    }
    assert config.merge(data, None)["shared"] == config.Setting(True, ("defaults", "shared"))
    assert config.merge(data, 0)["shared"].origin == "node_confs[0]"
    assert config.merge(data, None)["shared"].origin == "defaults"
    assert config.Setting(10).origin == BUILTIN
    assert config.merge(None, None) == {}


@pytest.mark.parametrize(
    ("node_flags", "expected"),
    [
        ("''", ("CLONE_NEWNS", "CLONE_NEWPID")),  # empty: the defaults' flags stay
        ("[]", ("CLONE_NEWNS", "CLONE_NEWPID")),
        ("' '", ("CLONE_NEWNS",)),  # not empty to Slurm: it overrides, with no flag in it
        ("','", ("CLONE_NEWNS",)),
        ("[CLONE_NEWUSER]", ("CLONE_NEWNS", "CLONE_NEWUSER")),
    ],
)
def test_e4_flags_override_whenever_slurm_sees_a_non_empty_text(node_flags, expected):
    """Slurm joins a flag list with commas and overrides when that text is not empty."""
    data = yaml.safe_load(
        "defaults: {base_path: /x, clone_ns_flags: [CLONE_NEWPID]}\n"
        f"node_confs: [{{nodes: n1, options: {{clone_ns_flags: {node_flags}}}}}]\n"
    )
    assert config.resolve(data, "n1").clone_ns_flags == expected
    assert config.slurm_text(["a", "b"]) == "a,b"
    assert config.slurm_text(None) == ""


@pytest.mark.parametrize("base", ["nonexistent", "None/x", "NONE_at_all"])
def test_e20_resolve_disables_for_any_base_path_starting_with_none(base):
    """Slurm's test is a 4-character prefix; validate refuses these, resolve follows Slurm."""
    resolved = config.resolve({"defaults": {"base_path": base}}, "n1")
    assert not resolved.enabled
    assert resolved.disabled_reason == "base_path is none (defaults)"
    assert config.resolve({"defaults": {"base_path": "/none"}}, "n1").enabled


def test_dir_specs_carry_where_each_directory_is_written():
    data = doc(
        """
        defaults:
          base_path: /v
          dirs: /a,/dev/shm,/b/
        node_confs:
          - nodes: n1
            options:
              dir_confs:
                - {path: /s, base_path: /d, options: noexec}
                - {path: /t, tmpfs: true, base_path: /ignored}
        """
    )
    specs, source = config.dir_specs(config.merge(data, None))
    assert specs == [
        config.DirSpec("/a", False, "", None, ("defaults", "dirs")),
        config.DirSpec("/dev/shm", True, "", None, ("defaults", "dirs")),
        config.DirSpec("/b/", False, "", None, ("defaults", "dirs")),
    ]
    assert source.origin == "defaults"
    specs, source = config.dir_specs(config.merge(data, 0))
    where = ("node_confs", 0, "options", "dir_confs")
    assert specs == [
        config.DirSpec("/s", False, "noexec", "/d", (*where, 0, "path")),
        config.DirSpec("/t", True, "", None, (*where, 1, "path")),
    ]
    assert source.path == where
    specs, source = config.dir_specs({})
    assert [s.path for s in specs] == ["/tmp", "/dev/shm"] and specs[0].where == ()
    assert source.origin == BUILTIN


def test_dirs_are_split_like_slurm_skipping_empty_entries():
    """Slurm splits dirs with strtok: empty entries vanish (validate refuses them anyway)."""
    resolved = config.resolve({"defaults": {"base_path": "/v", "dirs": ",/a,,/b,"}}, "n1")
    assert paths(resolved) == [("/a", False), ("/b", False)]


def test_dev_shm_with_a_trailing_slash_is_a_tmpfs_in_resolve_and_in_dir_specs():
    """One rule in one place: /dev/shm/ is /dev/shm (validate warns that Slurm differs)."""
    resolved = config.resolve({"defaults": {"base_path": "/v", "dirs": "/dev/shm/,/dev_shm"}}, "n")
    assert paths(resolved) == [("/dev/shm", True), ("/dev_shm", False)]


# ---------------------------------------------------------------------------------------------
# engineering: the runtime path stays light


def test_runtime_path_does_not_import_jsonschema():
    """setup/teardown/join run for every job: their modules must not pull in jsonschema."""
    code = (
        "import sys, nsctl.config, nsctl.loader, nsctl.layout; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jsonschema', 'click') "
        "or m == 'nsctl.validate'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
