"""nsctl-prolog / nsctl-epilog: the Prolog and Epilog entry points Slurm runs for every job."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

BIN = pathlib.Path(sys.executable).parent
CONFIG = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
"""


def hook(name: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], capture_output=True, text=True, timeout=60, env=env, cwd="/"
    )


def slurm_env(lab, job_id: str) -> dict:
    """What slurmd gives a Prolog: no PATH, no HOME, the SLURM_* variables."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_UID": "65534",
        "SLURM_JOB_USER": "nobody",
        "SLURM_JOB_GID": "65534",
        "SLURMD_NODENAME": "node1",
        "NSCTL_CONFIG": lab.config,
        "NSCTL_RUN_DIR": lab.run,
    }


def test_prolog_and_epilog_run_a_job_from_slurms_environment(lab):
    lab.write_config(CONFIG)
    env = slurm_env(lab, "61")
    assert hook("nsctl-prolog", env=env).returncode == 0
    assert lab.index_entries() == ["61"]
    assert hook("nsctl-prolog", env=env).returncode == 0  # a second run changes nothing
    result = hook("nsctl-epilog", "--wait", "-v", env=env)
    assert result.returncode == 0, result.stderr
    assert "nsctl: job 61: INFO: killing holder pid" in result.stderr
    assert lab.index_entries() == [] and lab.job_files() == []


def test_prolog_fail_policy(lab):
    lab.write_config(CONFIG.replace("auto_base_path: true", "auto_base_path: false"))
    env = slurm_env(lab, "62")
    failed = hook("nsctl-prolog", env=env)
    assert failed.returncode == 1
    assert "base directory does not exist (auto_base_path is off)" in failed.stderr
    ignored = hook("nsctl-prolog", "--on-error=ignore", env=env)
    assert ignored.returncode == 0
    assert "--on-error ignore: the job runs without private directories" in ignored.stderr
    assert lab.index_entries() == []


def test_a_bad_holder_is_a_setup_failure_under_the_fail_policy(lab):
    lab.write_config(CONFIG)
    env = slurm_env(lab, "64")
    failed = hook("nsctl-prolog", "--holder", "/nonexistent/holder", env=env)
    assert failed.returncode == 1
    assert "setup failed: --holder: /nonexistent/holder: No such file or directory" in failed.stderr
    ignored = hook("nsctl-prolog", "--on-error", "ignore", "--holder", "relative", env=env)
    assert ignored.returncode == 0  # fail open: never drain the node over it
    assert "--holder: must be an absolute path" in ignored.stderr
    assert lab.index_entries() == [] and lab.job_files() == []


def test_usage_errors_exit_2_and_help_exits_0(root):
    assert hook("nsctl-prolog", "--on-error", "maybe").returncode == 2
    assert (
        "--on-error must be one of fail, ignore, not 'maybe'"
        in hook("nsctl-prolog", "--on-error", "maybe").stderr
    )
    assert hook("nsctl-prolog", "--on-error").stderr.endswith("error: --on-error needs a value\n")
    assert hook("nsctl-epilog", "--on-error=ignore").stderr.endswith(
        "error: unknown option '--on-error=ignore'\n"
    )
    helped = hook("nsctl-prolog", "--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: nsctl-prolog [--on-error fail|ignore]")


# What a Prolog or an Epilog must not import once the resolved config is cached: each is the
# CLI, a parser, or a module whose import alone costs a job's start a measurable time (a shared
# library to load, for zlib, select and fcntl, where nsctl has libc through ctypes anyway).
NOT_ON_THE_HOT_PATH = (
    "click",
    "yaml",
    "jsonschema",
    "hostlist",
    "nsctl.validate",
    "nsctl.scripts",
    "typing",
    "logging",
    "json",
    "enum",
    "re",
    "dataclasses",
    "collections",
    "contextlib",
    "subprocess",
    "socket",
    "signal",
    "site",
    "zlib",
    "select",
    "fcntl",
)
# The Epilog as Slurm runs it (its files deleted by a detached child, which may import more).
HOT_PATH = f"""
import sys
sys.path[:0] = sys.argv[1:]
from nsctl.hooks import run_setup, run_teardown
assert run_setup() == 0
assert run_teardown() == 0
print(" ".join(sorted(m for m in {NOT_ON_THE_HOT_PATH + ("nsctl.holder",)} if m in sys.modules)))
"""
DEFAULT_CONFIG = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
"""


@pytest.mark.parametrize(
    "config, holder", [(DEFAULT_CONFIG, ""), (CONFIG, "nsctl.holder")], ids=["default", "pid-ns"]
)
def test_the_prolog_and_epilog_paths_import_only_what_their_work_needs(lab, config, holder):
    """Run as nsctl-prolog and nsctl-epilog run them (python -I -S: no site), with the
    resolved config cached, a Prolog and an Epilog load none of NOT_ON_THE_HOT_PATH, and the
    holder's module only for a job that has a holder."""
    import sysconfig

    from sandbox import live_children

    lab.write_config(config)
    paths = [str(pathlib.Path(__file__).parent.parent), sysconfig.get_paths()["purelib"]]
    argv = [sys.executable, "-I", "-S", "-c", HOT_PATH, *paths]
    env = {**slurm_env(lab, "63"), "PATH": os.environ["PATH"]}
    cold = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert cold.returncode == 0, cold.stderr
    assert "yaml" in cold.stdout.split()  # the first run parses, validates and fills the cache
    hot = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert (hot.returncode, hot.stdout) == (0, f"{holder}\n"), hot.stderr
    deadline = time.monotonic() + 30  # the detached deleters (orphans of pytest, a subreaper)
    while (lab.job_files() or live_children()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lab.index_entries() == [] and lab.job_files() == [] and live_children() == []


def test_the_launchers_start_python_isolated_and_without_site(lab, tmp_path):
    """nsctl-prolog and nsctl-epilog, installed in a venv as pip installs them (copied
    verbatim), run the venv's interpreter with -I -S and find nsctl beside it."""
    import shutil
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = pathlib.Path(sysconfig.get_paths()["purelib"].replace(sys.prefix, str(venv)))
    shutil.copytree(pathlib.Path(__file__).parent.parent / "nsctl", site / "nsctl")
    # The dependencies live elsewhere, as in a venv made with --system-site-packages: only
    # site (which the launchers skip) would find them, through this file.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for name in ("nsctl-prolog", "nsctl-epilog"):
        launcher = pathlib.Path(__file__).parent.parent / "contrib/slurm/launchers" / name
        shutil.copy(launcher, venv / "bin" / name)
    lab.write_config(CONFIG)
    env = slurm_env(lab, "64")
    # The config's first read needs PyYAML, which this venv lacks: it is found through site.
    assert hook_in(venv, "nsctl-prolog", env).returncode == 0
    assert hook_in(venv, "nsctl-epilog", env, "--wait").returncode == 0
    probe = venv / "bin" / "probe"  # what the launchers do, with a look at the interpreter
    probe.write_text(
        (venv / "bin" / "nsctl-prolog")
        .read_text()
        .replace(
            "prolog_main(exit_now=True)\n",
            "print(sys.flags.isolated, sys.flags.no_site, 'site' in sys.modules)\n",
        )
    )
    probe.chmod(0o755)
    out = subprocess.run([str(probe)], env=env, capture_output=True, text=True, cwd="/")
    assert out.stdout == "1 1 False\n", out.stderr
    assert lab.index_entries() == [] and lab.job_files() == []


def hook_in(venv: pathlib.Path, name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / name), *args], env=env, capture_output=True, text=True, cwd="/"
    )


def test_the_index_stays_readable_by_job_users_under_a_strict_umask(lab):
    # The TaskProlog runs as the job user and reads the index entry to export TMPDIR; a Prolog
    # started with umask 077 must not leave the runtime directories closed to it.
    lab.write_config(CONFIG)
    env = slurm_env(lab, "63")
    prolog = subprocess.run(
        ["/bin/sh", "-c", 'umask 077; exec "$0"', str(BIN / "nsctl-prolog")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    try:
        assert prolog.returncode == 0, prolog.stderr
        read = subprocess.run(
            ["/bin/cat", os.path.join(lab.run, "jobs", "63")],
            capture_output=True,
            text=True,
            user=65534,
            group=65534,
            extra_groups=[],
        )
        assert read.returncode == 0, read.stderr
        assert "dirs=/tmp,/dev/shm\n" in read.stdout
    finally:
        assert hook("nsctl-epilog", "--wait", env=env).returncode == 0
    assert lab.index_entries() == [] and lab.job_files() == []


BROKEN_CONFIGS = {
    # Shapes an admin writes by mistake, some of which once crashed the validator itself.
    "dirs-as-a-list": "defaults:\n  base_path: @BASE@\n  dirs: [/tmp, /dev/shm]\n",
    "dir_confs-true": "defaults:\n  base_path: @BASE@\n  dir_confs: true\n",
    "dirs-a-number": "defaults:\n  base_path: @BASE@\n  dirs: 5\n",
    "not-yaml": "defaults: [\n",
    "binary": "\x00\x01\x02",
}


def test_the_epilog_tears_down_from_the_index_whatever_the_config_says(lab):
    for number, (name, text) in enumerate(BROKEN_CONFIGS.items()):
        job_id = str(70 + number)
        lab.write_config(CONFIG)
        env = slurm_env(lab, job_id)
        assert hook("nsctl-prolog", env=env).returncode == 0
        lab.write_config(text)
        result = hook("nsctl-epilog", "--wait", env=env)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "Traceback" not in result.stderr, name
        assert "tearing down from the runtime index only" in result.stderr, name
        assert lab.index_entries() == [] and lab.job_files() == [], name


def test_the_epilog_survives_an_internal_error_reading_the_config(lab, monkeypatch, capsys):
    # A bug of nsctl's own (here a validator that raises) must not drain the node either.
    from nsctl import hooks, validate

    lab.write_config(CONFIG)
    env = slurm_env(lab, "79")
    assert hook("nsctl-prolog", env=env).returncode == 0

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(validate, "check_text", broken)
    monkeypatch.setenv("NSCTL_CONFIG", lab.config)
    lab.write_config(CONFIG + "# edited, so the cache cannot answer\n")
    assert hooks.run_teardown(job_id="79", wait=True) == 0
    logged = capsys.readouterr().err
    assert "reading the config failed; tearing down from the runtime index only" in logged
    assert "RuntimeError: a bug" in logged
    assert lab.index_entries() == [] and lab.job_files() == []


def test_prolog_and_epilog_from_a_job_container_conf_never_load_a_yaml_parser(lab):
    """A site running nsctl from its job_container.conf: not even the cold Prolog parses YAML."""
    lab.write_job_container_conf("AutoBasePath=yes\nBasePath=@BASE@\n")
    env = {**slurm_env(lab, "65"), "PATH": os.environ["PATH"]}
    code = (
        "import sys\n"
        "from nsctl.hooks import run_setup, run_teardown\n"
        "assert run_setup() == 0\n"
        "assert run_teardown(wait=True) == 0\n"
        "print(sorted(m for m in ('click', 'yaml', 'jsonschema', 'nsctl.validate') "
        "if m in sys.modules))\n"
    )
    cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (cold.returncode, cold.stdout) == (0, "[]\n"), cold.stderr
    assert lab.index_entries() == [] and lab.job_files() == []


IN_PROCESS = """
import os, sys
sys.path[:0] = sys.argv[2:]
from nsctl.hooks import run_setup

def no_fork():
    raise AssertionError("setup forked")

def ns(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)

home = ns("/proc/self/ns/mnt")
os.fork = no_fork
code = run_setup()
job = ns(sys.argv[1]) if os.path.exists(sys.argv[1]) else None
print(code, ns("/proc/self/ns/mnt") == home, job is not None and job != home)
"""


@pytest.mark.parametrize("broken", [False, True], ids=["ok", "failing-mount"])
def test_a_mount_namespace_alone_is_made_without_a_child(lab, broken):
    """A default job (a mount namespace, no PID or user namespace): setup forks nothing and
    ends in the mount namespace it started in, also when a mount in the job's fails."""
    import sysconfig

    config = DEFAULT_CONFIG
    if broken:  # a uid the kernel refuses (2^32 and more): a mount in the new namespace fails
        config += "  dir_confs:\n    - path: /dev/shm\n      tmpfs: true\n"
        config += '      options: "uid=99999999999"\n'
    lab.write_config(config)
    paths = [str(pathlib.Path(__file__).parent.parent), sysconfig.get_paths()["purelib"]]
    ns_file = os.path.join(lab.base, "65", ".ns", "mnt")
    argv = [sys.executable, "-I", "-S", "-c", IN_PROCESS, ns_file, *paths]
    env = {**slurm_env(lab, "65"), "PATH": os.environ["PATH"]}
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if broken:
        assert result.stdout == "1 True False\n", result.stderr
        assert "setup failed: namespace setup: mount a fresh tmpfs on /dev/shm" in result.stderr
    else:
        assert result.stdout == "0 True True\n", result.stderr
        assert hook("nsctl-epilog", "--wait", env=slurm_env(lab, "65")).returncode == 0
    assert lab.index_entries() == [] and lab.job_files() == []
