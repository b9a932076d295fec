"""The holder, both kinds (the default minimal Python one and contrib's C one), for real."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
from sandbox import holder_pid, proc_state

HOLDER_SRC = pathlib.Path(__file__).parent.parent / "contrib" / "slurm" / "holder"
CONFIG = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
"""


def nsctl(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "nsctl", *args], capture_output=True, text=True, timeout=60
    )
    assert not check or result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def c_holder(tmp_path_factory):
    build = tmp_path_factory.mktemp("holder")
    shutil.copy(HOLDER_SRC / "nsctl-holder.c", build)
    shutil.copy(HOLDER_SRC / "Makefile", build)
    subprocess.run(["make", "-s", "-C", str(build)], check=True)
    installed = pathlib.Path("/var/tmp/nsctl-tests-holder")
    installed.mkdir(mode=0o755, exist_ok=True)
    target = installed / "nsctl-holder"
    shutil.copy(build / "nsctl-holder", target)
    target.chmod(0o755)
    yield str(target)
    shutil.rmtree(installed)


@pytest.fixture(params=["python", "c"])
def holder_args(request, c_holder):
    return [] if request.param == "python" else ["--holder", c_holder]


def _holder_pid(lab, job_id: str) -> int:
    return holder_pid(lab.run, job_id)


def test_holder_is_named_detached_and_reaps_orphans(lab, holder_args):
    lab.write_config(CONFIG)
    nsctl("setup", "--job-id", "51", "--user", "nobody", *holder_args)
    try:
        pid = _holder_pid(lab, "51")
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")
        assert cmdline == b"nsctl: [51:namespace]"
        assert pathlib.Path(f"/proc/{pid}/comm").read_text() == "nsctl: [51:name\n"  # 15 chars
        fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert fds == {"/dev/null"}
        assert os.getsid(pid) == pid  # its own session: not in the Prolog's process group
        # Orphans are re-parented to the holder and must not stay zombies.
        script = "for i in 1 2 3 4 5; do (sleep 0.05 &) ; done; sleep 0.5; ps -eo stat= | grep -c Z"
        out = nsctl("join", "--job-id", "51", "--", "/bin/sh", "-c", script, check=False)
        assert out.stdout.strip() == "0", out
    finally:
        nsctl("teardown", "--wait", "--job-id", "51")


def test_holder_ignores_signals_but_teardown_kills_it(lab, holder_args):
    lab.write_config(CONFIG)
    nsctl("setup", "--job-id", "52", "--user", "nobody", *holder_args)
    pid = _holder_pid(lab, "52")
    try:
        for sig in ("TERM", "INT", "HUP"):
            os.kill(pid, getattr(__import__("signal"), f"SIG{sig}"))
        time.sleep(0.1)
        assert proc_state(pid) != "Z"
        assert nsctl("join", "--job-id", "52", "--", "/bin/true", check=False).returncode == 0
    finally:
        nsctl("teardown", "--wait", "--job-id", "52")
    assert lab.index_entries() == []


def test_holder_option_refuses_a_binary_others_can_write(lab, c_holder):
    lab.write_config(CONFIG)
    os.chmod(c_holder, 0o777)
    try:
        out = nsctl(
            "setup", "--job-id", "53", "--user", "nobody", "--holder", c_holder, check=False
        )
    finally:
        os.chmod(c_holder, 0o755)
    assert out.returncode == 2
    assert "must be an executable owned by root and writable only by root" in out.stderr


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status", encoding="ascii") as handle:
        caps = next(line for line in handle if line.startswith("CapEff:")).split()[1]
    return bool(int(caps, 16) & (1 << 24))  # CAP_SYS_RESOURCE


def test_holder_gets_oom_score_adj_minus_999_or_a_warning_why_not(lab):
    """Lowering oom_score_adj needs CAP_SYS_RESOURCE; without it setup still works and says so."""
    lab.write_config(CONFIG)
    result = nsctl("setup", "--job-id", "54", "--user", "nobody")
    try:
        pid = _holder_pid(lab, "54")
        score = pathlib.Path(f"/proc/{pid}/oom_score_adj").read_text().strip()
        warning = "cannot set the holder's oom_score_adj to -999: Permission denied"
        if _has_cap_sys_resource():
            assert score == "-999" and warning not in result.stderr
        else:
            assert score == "0" and warning in result.stderr
    finally:
        nsctl("teardown", "--wait", "--job-id", "54")


def test_the_contrib_prolog_passes_its_holder_variable(lab, c_holder):
    """contrib/slurm/prolog as an admin edits it (NSCTL=, HOLDER=), run with Slurm's bare env."""
    lab.write_config(CONFIG)
    script = pathlib.Path(lab.dir, "prolog")
    text = (HOLDER_SRC.parent / "prolog").read_text()
    text = text.replace(
        "NSCTL=/usr/local/bin/nsctl", f"NSCTL={pathlib.Path(sys.executable).parent}/nsctl"
    )
    text = text.replace("\nHOLDER=\n", f"\nHOLDER={c_holder}\n").replace("\nLOG=", "\nLOG=\n#")
    script.write_text(text)
    script.chmod(0o755)
    env = {
        "SLURM_JOB_ID": "55",
        "SLURM_JOB_USER": "nobody",
        "SLURM_JOB_UID": "65534",
        "SLURMD_NODENAME": "node1",
        "NSCTL_CONFIG": lab.config,
        "NSCTL_RUN_DIR": lab.run,
    }
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, cwd="/")
    try:
        assert result.returncode == 0, result.stderr
        pid = _holder_pid(lab, "55")
        assert os.readlink(f"/proc/{pid}/exe") == c_holder
    finally:
        nsctl("teardown", "--wait", "--job-id", "55")
