"""`nsctl validate` and `nsctl show-config` through click's CliRunner: exact output, exit codes,
the broken-config corpus, where the file and node name come from, and the runtime cache."""

from __future__ import annotations

import inspect
import json
import marshal
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest
import yaml
from click.testing import CliRunner

from nsctl import loader
from nsctl.cli import main
from nsctl.errors import ConfigError

HERE = Path(__file__).parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "namespace.yaml"
BAD = HERE / "configs" / "bad"
GOOD = HERE / "configs" / "good"
BAD_CASES = sorted(p.stem for p in BAD.glob("*.yaml"))
GOOD_CASES = sorted(GOOD.glob("*.yaml")) + [EXAMPLE]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ambient Slurm or nsctl settings leak in; the loader cache goes to a temp dir."""
    for name in ("NSCTL_CONFIG", "SLURM_CONF", "SLURMD_NODENAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NSCTL_RUN_DIR", str(tmp_path / "run"))


def run(*args: str):
    # click 8.1 (the newest for Python 3.9) mixes stderr into stdout unless told not to;
    # click 8.2 removed the switch and always keeps both.
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        runner = CliRunner(mix_stderr=False)
    else:
        runner = CliRunner()
    return runner.invoke(main, list(args), catch_exceptions=False)


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


# ---------------------------------------------------------------------------------------------
# the corpus: every broken config with its exact `nsctl validate` output


def test_corpus_is_there():
    assert len(BAD_CASES) >= 25
    for name in BAD_CASES:
        assert (BAD / f"{name}.expected").is_file(), name


def parser_problem(path: Path) -> Optional[str]:
    """PyYAML's own message when it cannot parse ``path`` at all, else None."""
    from nsctl import validate as checker

    try:
        for _event in yaml.parse(path.read_text(), Loader=checker._Loader):
            pass
    except yaml.MarkedYAMLError as exc:
        return exc.problem
    return None


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_config_exact_output(name, monkeypatch):
    """Exact, except for the words of a YAML syntax error, which are PyYAML's and libyaml's
    (the .expected files show today's): there the output must carry the parser's own words."""
    monkeypatch.chdir(BAD)
    result = run("validate", f"{name}.yaml")
    expected = (BAD / f"{name}.expected").read_text()
    problem = parser_problem(BAD / f"{name}.yaml")
    if problem is not None:
        assert f": invalid YAML: {problem}\n" in result.stdout
        mask = re.compile(r"(: invalid YAML: ).*")
        expected, stdout = mask.sub(r"\1...", expected), mask.sub(r"\1...", result.stdout)
    else:
        stdout = result.stdout
    assert stdout == expected
    assert result.stderr == ""
    assert result.exit_code == 1


@pytest.mark.parametrize("path", GOOD_CASES, ids=lambda p: p.name)
def test_good_config_validates(path):
    result = run("validate", str(path))
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[-1].startswith(f"{path}: valid")


@pytest.mark.parametrize("name", BAD_CASES)
def test_show_config_refuses_every_bad_config_without_a_traceback(name):
    """What the Prolog and the Epilog load goes through the same path: an invalid file is one
    clean error (exit 1), never a traceback (issue 7: dirs: [/tmp, /dev/shm] crashed it)."""
    path = BAD / f"{name}.yaml"
    result = run("show-config", "--config", str(path), "--node", "n1")  # raises on a traceback
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(f"nsctl: error: {path} is not valid:\n{path}:")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# validate: text, JSON, exit codes


def test_validate_example_text():
    result = run("validate", str(EXAMPLE))
    assert (result.exit_code, result.stdout) == (0, f"{EXAMPLE}: valid\n")


def test_validate_warnings_keep_exit_zero():
    path = GOOD / "warnings_only.yaml"
    result = run("validate", str(path))
    assert result.exit_code == 0
    assert result.stdout == (
        f"{path}:10:7: node_confs[0].options.dirs: warning: dirs is ignored on these nodes "
        "because defaults sets dir_confs, which takes precedence; set dir_confs here instead\n"
        f"{path}:11:7: node_confs[0].options.clone_ns_flags: warning: an empty clone_ns_flags "
        "does not clear the defaults' flags (Slurm only overrides with a non-empty value); "
        "write [CLONE_NEWNS] to drop PID and user namespaces\n"
        f"{path}: valid (2 warning(s))\n"
    )


def test_validate_json_for_an_invalid_file(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults:\n  shared: maybe\n  dirs: /a,/a/\n")
    result = run("validate", path, "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "file": path,
        "valid": False,
        "errors": [
            {
                "file": path,
                "line": 2,
                "column": 3,
                "path": "defaults.shared",
                "severity": "error",
                "message": "expected a boolean (true or false), got the string 'maybe'; Slurm "
                "would read it as true",
            },
            {
                "file": path,
                "line": 3,
                "column": 3,
                "path": "defaults.dirs",
                "severity": "error",
                "message": "duplicate directory '/a/' (already listed as '/a')",
            },
        ],
        "warnings": [],
        "node_source": None,
        "report": None,
    }


REPORT_DOC = """
defaults:
  base_path: /var/x
  dir_confs:
    - path: /tmp
node_confs:
  - nodes: "n[01-04]"
    options: {base_path: /var/a}
  - nodes: ["n[03-04]", "n05"]
    options: {base_path: /var/b, dirs: /tmp}
  - nodes: "n[01-02]"
    options: {base_path: /var/c}
  - nodes: "gpu[1-2]"
    options: {base_path: none}
  - nodes: "zz1"
    options: {shared: true}
"""


def test_validate_json_keys_are_stable(tmp_path):
    path = write(tmp_path / "ns.yaml", REPORT_DOC)
    result = run("validate", path, "--format", "json", "--nodes", "n[01-06],gpu[1-3]")
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert list(out) == ["file", "valid", "errors", "warnings", "node_source", "report"]
    assert list(out["report"]) == ["nodes", "shadowed", "multiple_matches", "unused_entries"]
    assert (out["file"], out["valid"], out["errors"], out["node_source"]) == (
        path,
        True,
        [],
        "--nodes",
    )
    assert out["warnings"] == [
        {
            "file": path,
            "line": 9,
            "column": 34,
            "path": "node_confs[1].options.dirs",
            "severity": "warning",
            "message": "dirs is ignored on these nodes because defaults sets dir_confs, which "
            "takes precedence; set dir_confs here instead",
        }
    ]
    assert out["report"] == {
        "nodes": [
            {"nodes": "n[01-04]", "entry": "node_confs[0]", "enabled": True, "base_path": "/var/a"},
            {"nodes": "n05", "entry": "node_confs[1]", "enabled": True, "base_path": "/var/b"},
            {"nodes": "gpu3,n06", "entry": "defaults", "enabled": True, "base_path": "/var/x"},
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


def test_validate_nodes_report_text(tmp_path):
    path = write(tmp_path / "ns.yaml", REPORT_DOC)
    result = run("validate", path, "--nodes", "n[01-06],gpu[1-3]")
    assert result.exit_code == 0
    assert result.stdout == textwrap.dedent(
        f"""\
        {path}:9:34: node_confs[1].options.dirs: warning: dirs is ignored on these nodes because defaults sets dir_confs, which takes precedence; set dir_confs here instead
        {path}: valid (1 warning(s))

        Nodes (from --nodes):
          n[01-04]  node_confs[0]   base_path /var/a
          n05       node_confs[1]   base_path /var/b
          gpu3,n06  defaults        base_path /var/x
          gpu[1-2]  node_confs[3]   nsctl disabled: base_path is none (node_confs[3])
          note: n[01-02] matched by node_confs[0], node_confs[2]; only node_confs[0] applies
          note: n[03-04] matched by node_confs[0], node_confs[1]; only node_confs[0] applies
          note: no listed node uses node_confs[2], node_confs[4]
        warning: node_confs[2] can never apply: earlier entries already match all of its nodes (n[01-02])
        """  # noqa: E501
    )


def test_validate_nodes_default_to_the_nodename_lines_of_slurm_conf(tmp_path, monkeypatch):
    """No FILE and no --nodes: namespace.yaml beside $SLURM_CONF, nodes from its NodeName lines."""
    slurm_conf = tmp_path / "slurm.conf"
    slurm_conf.write_text(
        "ClusterName=lab\n"
        "NodeName=DEFAULT CPUs=2\n"
        "NodeName=n[01-03] NodeHostname=host[1-3] CPUs=4\n"
        "#NodeName=n09\n"
        "NodeName=gpu1 CPUs=8\n"
    )
    write(
        tmp_path / "namespace.yaml",
        """
        defaults:
          base_path: /var/%h
        node_confs:
          - nodes: "gpu[1-4]"
            options: {base_path: /gpu/%n}
        """,
    )
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    result = run("validate")
    assert result.exit_code == 0
    assert result.stdout == (
        f"{tmp_path}/namespace.yaml: valid\n"
        "\n"
        f"Nodes (from {slurm_conf}):\n"
        "  n01   defaults        base_path /var/host1\n"
        "  n02   defaults        base_path /var/host2\n"
        "  n03   defaults        base_path /var/host3\n"
        "  gpu1  node_confs[0]   base_path /gpu/gpu1\n"
    )
    as_json = json.loads(run("validate", "--format", "json").stdout)
    assert as_json["node_source"] == str(slurm_conf)
    # --nodes wins over slurm.conf.
    assert json.loads(run("validate", "--format", "json", "--nodes", "x1").stdout)[
        "node_source"
    ] == ("--nodes")


def test_validate_unreadable_file_is_invalid(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    result = run("validate", missing)
    assert result.exit_code == 1
    assert result.stdout == (
        f"{missing}: cannot read: No such file or directory\n{missing}: invalid (1 error(s))\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "No such option"),
        (
            ["--nodes", "n[1-"],
            "Invalid value for --nodes: bad hostlist 'n[1-': unbalanced brackets",
        ),
        (["--format", "xml"], "Invalid value for '--format'"),
        (["a.yaml", "--config", "b.yaml"], "give the file either as an argument or with --config"),
        (["a.yaml", "b.yaml"], "Got unexpected extra argument (b.yaml)"),
    ],
)
def test_validate_usage_errors_exit_2(args, message):
    result = run("validate", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------
# where the config file comes from


def test_config_path_order(tmp_path, monkeypatch):
    """--config (or FILE), else $NSCTL_CONFIG, else beside $SLURM_CONF, else /etc/slurm."""

    def file_used(*args: str) -> str:
        return json.loads(run("validate", "--format", "json", *args).stdout)["file"]

    assert file_used() == "/etc/slurm/namespace.yaml"
    monkeypatch.setenv("SLURM_CONF", "/run/slurm/conf/slurm.conf")
    assert file_used() == "/run/slurm/conf/namespace.yaml"
    monkeypatch.setenv("NSCTL_CONFIG", str(tmp_path / "env.yaml"))
    assert file_used() == str(tmp_path / "env.yaml")
    assert file_used("--config", "/cli.yaml") == "/cli.yaml"
    assert file_used("/arg.yaml") == "/arg.yaml"


def test_show_config_uses_the_same_path_order(tmp_path, monkeypatch):
    write(tmp_path / "namespace.yaml", "defaults: {base_path: /beside}\n")
    env_file = write(tmp_path / "env.yaml", "defaults: {base_path: /env}\n")
    cli_file = write(tmp_path / "cli.yaml", "defaults: {base_path: /cli}\n")

    def base(*args: str) -> str:
        result = run("show-config", "--node", "n1", "--format", "json", *args)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["base_path"]

    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    assert base() == "/beside"
    monkeypatch.setenv("NSCTL_CONFIG", env_file)
    assert base() == "/env"
    assert base("--config", cli_file) == "/cli"


def test_node_name_order(tmp_path, monkeypatch):
    path = write(tmp_path / "ns.yaml", "defaults: {base_path: /v}\n")

    def node(*args: str) -> str:
        return json.loads(run("show-config", "--config", path, "--format", "json", *args).stdout)[
            "node"
        ]

    assert node() == socket.gethostname().split(".", 1)[0]
    monkeypatch.setenv("SLURMD_NODENAME", "from-env")
    assert node() == "from-env"
    assert node("--node", "from-cli") == "from-cli"


# ---------------------------------------------------------------------------------------------
# show-config


N3 = {
    "node": "n3",
    "entry": "node_confs[0]",
    "enabled": True,
    "base_path": "/var/nvme/storage_1",
    "auto_base_path": True,
    "clone_ns_flags": ["CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER"],
    "clone_ns_script": "/path/to/ns_script",
    "clone_ns_script_wait": 20,
    "clone_ns_epilog": "/path/to/epilog_script",
    "clone_ns_epilog_wait": 10,
    "init_script": "/path/to/init_script",
    "user_ns_script": "/path/to/user_script",
    "shared": False,
    "disable_bpf_token": False,
    "dir_confs": [
        {"path": "/tmp", "tmpfs": True, "options": "noexec,nosuid,size=8g", "base_path": None},
        {
            "path": "/scratch",
            "tmpfs": False,
            "options": "noexec,nosuid",
            "base_path": "/var/nvme/storage_1",
        },
    ],
}


def test_show_config_yaml_for_n3():
    result = run("show-config", "--config", str(EXAMPLE), "--node", "n3")
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout) == N3
    assert list(yaml.safe_load(result.stdout)) == list(N3)  # key order is part of the output


def test_show_config_json_for_n3():
    result = run("show-config", "--config", str(EXAMPLE), "--node", "n3", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == N3


def test_show_config_explain_json_for_n3():
    args = ("show-config", "--config", str(EXAMPLE), "--node", "n3", "--format", "json")
    out = json.loads(run(*args, "--explain").stdout)
    assert out["config"] == N3
    assert out["origins"] == {
        "base_path": "node_confs[0]",
        "auto_base_path": "node_confs[0]",
        "clone_ns_flags": "defaults",
        "clone_ns_script": "defaults",
        "clone_ns_script_wait": "node_confs[0]",
        "clone_ns_epilog": "defaults",
        "clone_ns_epilog_wait": "defaults",
        "init_script": "defaults",
        "user_ns_script": "node_confs[0]",
        "shared": "node_confs[0]",
        "disable_bpf_token": "built-in default",
        "dir_confs": "node_confs[0]",
    }


def test_show_config_explain_yaml_for_n3():
    result = run("show-config", "--config", str(EXAMPLE), "--node", "n3", "--explain")
    assert result.exit_code == 0
    assert result.stdout == textwrap.dedent(
        """\
        node: n3
        entry: node_confs[0]
        enabled: true
        base_path: /var/nvme/storage_1  # node_confs[0]
        auto_base_path: true  # node_confs[0]
        clone_ns_flags:  # defaults
        - CLONE_NEWNS
        - CLONE_NEWPID
        - CLONE_NEWUSER
        clone_ns_script: /path/to/ns_script  # defaults
        clone_ns_script_wait: 20  # node_confs[0]
        clone_ns_epilog: /path/to/epilog_script  # defaults
        clone_ns_epilog_wait: 10  # defaults
        init_script: /path/to/init_script  # defaults
        user_ns_script: /path/to/user_script  # node_confs[0]
        shared: false  # node_confs[0]
        disable_bpf_token: false  # built-in default
        dir_confs:  # node_confs[0]
        - path: /tmp
          tmpfs: true
          options: noexec,nosuid,size=8g
          base_path: null
        - path: /scratch
          tmpfs: false
          options: noexec,nosuid
          base_path: /var/nvme/storage_1
        """
    )
    # The explained output is still YAML that parses to the same configuration.
    assert yaml.safe_load(result.stdout) == N3


def test_show_config_default_dirs_are_explicit_with_their_origin():
    args = ("show-config", "--config", str(EXAMPLE), "--node", "n5", "--format", "json")
    out = json.loads(run(*args, "--explain").stdout)
    assert out["config"]["entry"] == "defaults"
    assert out["config"]["dir_confs"] == [
        {"path": "/tmp", "tmpfs": False, "options": "", "base_path": None},
        {"path": "/dev/shm", "tmpfs": True, "options": "", "base_path": None},
    ]
    assert out["origins"]["dir_confs"] == "built-in default"
    assert out["origins"]["user_ns_script"] == "built-in default"


def test_show_config_disabled_node_says_so_and_exits_zero(tmp_path):
    path = write(
        tmp_path / "ns.yaml",
        """
        defaults: {base_path: /v}
        node_confs:
          - nodes: "login[1-2]"
            options: {base_path: None}
        """,
    )
    result = run("show-config", "--config", path, "--node", "login2")
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout) == {
        "node": "login2",
        "entry": "node_confs[0]",
        "enabled": False,
        "reason": "base_path is none (node_confs[0])",
    }
    assert result.stderr == "nsctl is disabled on login2: base_path is none (node_confs[0])\n"


def test_show_config_refuses_a_file_without_configuration(tmp_path):
    """As slurmd 26.05 refuses to start with it (the Prolog fails; base_path: none turns
    isolation off)."""
    path = write(tmp_path / "ns.yaml", "# nothing here\n")
    result = run("show-config", "--config", path, "--node", "n1", "--format", "json")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(f"nsctl: error: {path} is not valid:\n{path}:1:1: the file")


def test_show_config_refuses_an_invalid_file(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults:\n  base_path: /v\n  shared: maybe\n")
    result = run("show-config", "--config", path, "--node", "n1")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"nsctl: error: {path} is not valid:\n"
        f"{path}:3:3: defaults.shared: expected a boolean (true or false), got the string "
        "'maybe'; Slurm would read it as true\n"
    )


def test_show_config_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    result = run("show-config", "--config", path, "--node", "n1")
    assert result.exit_code == 1
    assert result.stderr == f"nsctl: error: {path}: cannot read: No such file or directory\n"


def test_show_config_h_comes_from_slurm_conf(tmp_path, monkeypatch):
    """E20: %h is NodeHostname from slurm.conf; only the first %h and %n are expanded."""
    (tmp_path / "slurm.conf").write_text("NodeName=n[1-2] NodeHostname=host-[7-8]\n")
    write(tmp_path / "namespace.yaml", "defaults: {base_path: '/v/%h/%n/%h'}\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    out = json.loads(run("show-config", "--node", "n2", "--format", "json").stdout)
    assert out["base_path"] == "/v/host-8/n2/%h"
    # A NodeHostname python-hostlist cannot expand is Slurm's business: %h falls back.
    (tmp_path / "slurm.conf").write_text("NodeName=n2 NodeHostname=host-[a-b]\n")
    out = json.loads(run("show-config", "--node", "n2", "--format", "json").stdout)
    assert out["base_path"] == f"/v/{socket.gethostname().split('.', 1)[0]}/n2/%h"


def test_show_config_usage_errors_exit_2():
    assert run("show-config", "--format", "toml").exit_code == 2
    assert run("show-config", "extra").exit_code == 2


def test_python_dash_m_runs_the_same_cli(tmp_path):
    env = {**os.environ, "NSCTL_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.run(
        [sys.executable, "-m", "nsctl", "validate", str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert (proc.returncode, proc.stdout) == (0, f"{EXAMPLE}: valid\n")


# ---------------------------------------------------------------------------------------------
# the runtime cache (loader)


PROBE = """
import json, sys
from nsctl import loader
resolved = loader.load_node_config(sys.argv[1], "n3", "n3")
print(json.dumps([resolved.base_path, "nsctl.validate" in sys.modules, "yaml" in sys.modules]))
"""


def probe(path: str, run_dir: Path) -> list:
    env = {**os.environ, "NSCTL_RUN_DIR": str(run_dir)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, path], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(proc.stdout)


def test_second_load_uses_the_cache_and_never_imports_the_validator(tmp_path):
    path = write(tmp_path / "ns.yaml", EXAMPLE.read_text())
    run_dir = tmp_path / "run"
    assert probe(path, run_dir) == ["/var/nvme/storage_1", True, True]  # cold: validated
    assert probe(path, run_dir) == ["/var/nvme/storage_1", False, False]  # warm: cache only
    # Editing the file invalidates the cache: validated again, new value.
    Path(path).write_text(EXAMPLE.read_text().replace("storage_1", "storage_9"))
    assert probe(path, run_dir) == ["/var/nvme/storage_9", True, True]
    assert probe(path, run_dir) == ["/var/nvme/storage_9", False, False]


def test_cache_files_are_private(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults: {base_path: /v}\n")
    env = {"NSCTL_RUN_DIR": str(tmp_path / "run")}
    loader.load_node_config(path, "n1", "n1", env)
    cache_dir = tmp_path / "run" / "cache"
    (cache_file,) = cache_dir.iterdir()
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    assert marshal.loads(cache_file.read_bytes())["config"]["base_path"] == "/v"


def test_an_invalid_file_is_refused_even_with_a_cache_for_an_older_version(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults: {base_path: /var/aa}\n")
    env = {"NSCTL_RUN_DIR": str(tmp_path / "run")}
    assert loader.load_node_config(path, "n1", "n1", env).base_path == "/var/aa"
    # Same size, same inode: only the content (and the file's times) change.
    Path(path).write_text("defaults: {base_path: var/aaa}\n")
    with pytest.raises(ConfigError) as excinfo:
        loader.load_node_config(path, "n1", "n1", env)
    assert str(excinfo.value) == (
        f"{path} is not valid:\n"
        f"{path}:1:12: defaults.base_path: base_path must be an absolute path, got 'var/aaa'"
    )
    assert [i.path for i in excinfo.value.issues] == ["defaults.base_path"]


def test_cache_is_per_node_and_per_hostname(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults: {base_path: '/v/%h/%n'}\n")
    env = {"NSCTL_RUN_DIR": str(tmp_path / "run")}
    assert loader.load_node_config(path, "n1", "h1", env).base_path == "/v/h1/n1"
    assert loader.load_node_config(path, "n2", "h1", env).base_path == "/v/h1/n2"
    assert loader.load_node_config(path, "n1", "h9", env).base_path == "/v/h9/n1"
    assert loader.load_node_config(path, "n1", "h1", env).base_path == "/v/h1/n1"
    assert len(list((tmp_path / "run" / "cache").iterdir())) == 3


def test_untrusted_or_corrupt_cache_files_are_ignored(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults: {base_path: /v}\n")
    env = {"NSCTL_RUN_DIR": str(tmp_path / "run")}
    loader.load_node_config(path, "n1", "n1", env)
    (cache_file,) = (tmp_path / "run" / "cache").iterdir()
    forged = marshal.loads(cache_file.read_bytes())
    forged["config"]["base_path"] = "/forged"
    cache_file.write_bytes(marshal.dumps(forged))
    os.chmod(cache_file, 0o620)  # group-writable: someone else could have written it
    assert loader.load_node_config(path, "n1", "n1", env).base_path == "/v"
    cache_file.write_bytes(b"\x00not marshal")
    os.chmod(cache_file, 0o600)
    assert loader.load_node_config(path, "n1", "n1", env).base_path == "/v"
    cache_file.unlink()
    cache_file.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(marshal.dumps(forged))
    assert loader.load_node_config(path, "n1", "n1", env).base_path == "/v"


def test_use_cache_false_writes_nothing(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults: {base_path: /v}\n")
    env = {"NSCTL_RUN_DIR": str(tmp_path / "run")}
    loader.load_node_config(path, "n1", "n1", env, use_cache=False)
    assert not (tmp_path / "run").exists()


def test_unwritable_cache_only_costs_speed(tmp_path):
    path = write(tmp_path / "ns.yaml", "defaults: {base_path: /v}\n")
    (tmp_path / "run").write_text("a file where the run directory should be")
    env = {"NSCTL_RUN_DIR": str(tmp_path / "run")}
    assert loader.load_node_config(path, "n1", "n1", env).base_path == "/v"


# ---------------------------------------------------------------------------------------------
# job_container.conf (namespace/tmpfs): the same commands, by file name or --format-in

JOB_CONTAINER = """\
AutoBasePath=true
BasePath=/var/ns
NodeName=n[1-4] BasePath=/scratch Shared=yes
NodeName=n[3-4] BasePath=/fast/%n Dirs=/tmp
"""


def test_validate_a_job_container_conf_reports_the_lines_each_node_gets(tmp_path):
    path = write(tmp_path / "job_container.conf", JOB_CONTAINER)
    result = run("validate", path, "--nodes", "n[1-6]")
    assert result.exit_code == 0, result.stdout
    assert result.stdout == (
        f"{path}: valid\n"
        "\n"
        "Nodes (from --nodes):\n"
        "  n[1-2]  lines 2, 3      base_path /scratch\n"
        "  n3      lines 2, 3, 4   base_path /fast/n3\n"
        "  n4      lines 2, 3, 4   base_path /fast/n4\n"
        "  n[5-6]  line 2          base_path /var/ns\n"
    )


def test_validate_a_job_container_conf_with_errors(tmp_path):
    path = write(
        tmp_path / "job_container.conf",
        "BasePath=/var/ns\nNodeName=n[1-4] BasePth=/scratch\nShared=maybe\n",
    )
    result = run("validate", path)
    assert result.exit_code == 1
    assert result.stdout == (
        f"{path}:2: NodeName=n[1-4]: unknown key 'BasePth' (did you mean 'BasePath'?)\n"
        f"{path}:2: NodeName=n[1-4]: no BasePath on this NodeName= line: slurmd exits on its "
        'nodes ("empty basepath detected")\n'
        f"{path}:3: Shared=maybe: expected a boolean (yes or no), got 'maybe'; Slurm refuses it "
        'too ("maybe" is not a valid option)\n'
        f"{path}: invalid (3 error(s))\n"
    )
    data = json.loads(run("validate", path, "--format", "json").stdout)
    assert data["errors"][0] == {
        "file": path,
        "line": 2,
        "column": 0,
        "path": "NodeName=n[1-4]",
        "severity": "error",
        "message": "unknown key 'BasePth' (did you mean 'BasePath'?)",
    }


def test_validate_reports_lines_without_effect(tmp_path):
    path = write(tmp_path / "job_container.conf", "NodeName=n1 BasePath=/a\nBasePath=/b\n")
    result = run("validate", path, "--nodes", "n[1-2]")
    assert result.stdout.endswith(
        "  n1  lines 1, 2      base_path /b\n"
        "  n2  line 2          base_path /b\n"
        "warning: line 1 has no effect: later lines set every key it sets, on all of its "
        "nodes (n1)\n"
    )


def test_format_in_overrides_the_file_name(tmp_path):
    odd = write(tmp_path / "tmpfs.txt", "BasePath=/var/ns\n")
    assert run("validate", odd).exit_code == 1  # read as YAML: a plain string is no mapping
    assert run("validate", odd, "--format-in", "tmpfs").exit_code == 0
    yaml_conf = write(tmp_path / "ns.conf", "defaults: {base_path: /v}\n")
    assert run("validate", yaml_conf, "--format-in", "yaml").exit_code == 0
    result = run("show-config", "--config", odd, "--format-in", "tmpfs", "--node", "n1")
    assert yaml.safe_load(result.stdout)["base_path"] == "/var/ns"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "/x/namespace.yaml", "--slurm-version", "22.05"], "job_container.conf only"),
        (["validate", "/x/j.conf", "--slurm-version", "22"], "not a Slurm version: '22'"),
        (["show-config", "--slurm-version", "19.05"], "has no job_container/tmpfs"),
        (["convert", "/x/namespace.yaml"], "is not a job_container.conf by its name"),
        (["convert", "/x/j.conf", "--format-in", "yaml"], "'yaml' is not 'tmpfs'"),
    ],
)
def test_job_container_usage_errors_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_slurm_version_refuses_what_that_release_reads_otherwise(tmp_path):
    path = write(tmp_path / "job_container.conf", "BasePath=/v/%n Dirs=/tmp\n")
    assert run("validate", path).exit_code == 0
    result = run("validate", path, "--slurm-version", "22.05")
    assert result.exit_code == 1
    assert "Slurm 22.05 does not know Dirs (read from 23.02)" in result.stdout
    shown = run("show-config", "--config", path, "--node", "n1", "--slurm-version", "22.05")
    assert shown.exit_code == 1 and "does not expand %h and %n" in shown.stderr
    assert run("show-config", "--config", path, "--node", "n1").exit_code == 0


def test_job_container_conf_is_found_beside_slurm_conf_when_there_is_no_namespace_yaml(
    tmp_path, monkeypatch
):
    def file_used(*args: str) -> str:
        return json.loads(run("validate", "--format", "json", *args).stdout)["file"]

    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    assert file_used() == str(tmp_path / "namespace.yaml")  # neither: the YAML one is missing
    write(tmp_path / "job_container.conf", "BasePath=/jc\n")
    assert file_used() == str(tmp_path / "job_container.conf")
    shown = run("show-config", "--node", "n1", "--format", "json")
    assert json.loads(shown.stdout)["base_path"] == "/jc"
    write(tmp_path / "namespace.yaml", "defaults: {base_path: /yaml}\n")
    assert file_used() == str(tmp_path / "namespace.yaml")  # namespace.yaml wins
    monkeypatch.setenv("NSCTL_CONFIG", str(tmp_path / "job_container.conf"))
    shown = run("show-config", "--node", "n1", "--format", "json")
    assert json.loads(shown.stdout)["base_path"] == "/jc"


def test_show_config_explains_a_job_container_conf_by_line(tmp_path):
    path = write(tmp_path / "job_container.conf", JOB_CONTAINER)
    result = run("show-config", "--config", path, "--node", "n3", "--explain")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == textwrap.dedent(
        """\
        node: n3
        entry: lines 2, 3, 4
        enabled: true
        plugin: namespace/tmpfs
        base_path: /fast/n3  # line 4: NodeName=n[3-4]
        auto_base_path: true  # line 1: AutoBasePath=true
        clone_ns_flags:  # namespace/tmpfs (a mount namespace only)
        - CLONE_NEWNS
        clone_ns_script: null  # built-in default
        clone_ns_script_wait: 10  # built-in default
        clone_ns_epilog: null  # built-in default
        clone_ns_epilog_wait: 10  # built-in default
        init_script: null  # built-in default
        user_ns_script: null  # built-in default
        shared: true  # line 3: NodeName=n[1-4]
        disable_bpf_token: false  # built-in default
        dir_confs:  # line 4: NodeName=n[3-4]
        - path: /tmp
          tmpfs: false
          options: ''
          base_path: null
        entire_step_in_ns: false  # built-in default
        """
    )
    other = json.loads(
        run("show-config", "--config", path, "--node", "x1", "--format", "json").stdout
    )
    assert (other["entry"], other["base_path"], other["shared"]) == ("line 2", "/var/ns", False)


def test_convert_prints_namespace_yaml_that_validates(tmp_path):
    path = write(tmp_path / "job_container.conf", JOB_CONTAINER)
    result = run("convert", path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# namespace.yaml converted by nsctl ")
    out = write(tmp_path / "namespace.yaml", result.stdout)
    assert run("validate", out).stdout == f"{out}: valid\n"
    for node in ("n1", "n3", "n9"):
        shown = [
            json.loads(run("show-config", "--config", p, "--node", node, "--format", "json").stdout)
            for p in (path, out)
        ]
        for data in shown:
            for key in ("entry", "plugin", "entire_step_in_ns"):
                data.pop(key, None)
        assert shown[0] == shown[1], node


def test_convert_refuses_an_invalid_file_and_what_has_no_equivalent(tmp_path):
    bad = write(tmp_path / "job_container.conf", "BasePath=/v Shared=maybe\n")
    result = run("convert", bad)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"{bad}:1: BasePath=/v: Shared: expected a boolean (yes or no), got 'maybe'; Slurm "
        'refuses it too ("maybe" is not a valid option)\n'
        f"nsctl: error: {bad} is not valid (1 error(s)): nothing converted\n"
    )
    epilog = write(tmp_path / "epilog.conf", "BasePath=/v CloneNSEpilog=/sbin/e\n")
    result = run("convert", epilog)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("nsctl: error: cannot convert CloneNSEpilog (line 1: ")


PROBE_TMPFS = """
import json, sys
from nsctl import loader
resolved = loader.load_node_config(sys.argv[1], "n3", "n3")
print(json.dumps([resolved.base_path, "nsctl.jcconf" in sys.modules, "yaml" in sys.modules]))
"""


def test_a_job_container_conf_never_loads_a_yaml_parser_and_is_cached(tmp_path):
    path = write(tmp_path / "job_container.conf", JOB_CONTAINER)
    env = {**os.environ, "NSCTL_RUN_DIR": str(tmp_path / "run")}

    def probe_tmpfs() -> list:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE_TMPFS, path],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return json.loads(proc.stdout)

    assert probe_tmpfs() == ["/fast/n3", True, False]  # cold: checked, no YAML
    assert probe_tmpfs() == ["/fast/n3", False, False]  # warm: the cache only
    Path(path).write_text(JOB_CONTAINER.replace("/fast/%n", "/faster/%n"))
    assert probe_tmpfs() == ["/faster/n3", True, False]


def test_the_cache_keeps_formats_and_slurm_versions_apart(tmp_path):
    path = write(tmp_path / "j.conf", "BasePath=/v/%n\n")
    env = {"NSCTL_RUN_DIR": str(tmp_path / "run")}
    assert loader.load_node_config(path, "n1", "n1", env).base_path == "/v/n1"
    with pytest.raises(ConfigError, match="does not expand"):
        loader.load_node_config(path, "n1", "n1", env, slurm_version="22.05")
    with pytest.raises(ConfigError):
        loader.load_node_config(path, "n1", "n1", env, fmt="yaml")
    assert loader.load_node_config(path, "n1", "n1", env).base_path == "/v/n1"
