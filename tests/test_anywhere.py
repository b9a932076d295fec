"""nsctl works wherever it is installed and whatever CPUs it may use (issue 7), for real.

A job's private /tmp (or any ``dir_confs`` path) hides whatever the host has there from the
job's mount namespace, so nothing that runs inside it (the holder above all) may need a file
from such a place: an nsctl installed under /tmp, under a private directory, or a ``--holder``
kept in one. And the kernel's refusal to bind a mount-namespace file that is not newer than the
binder's own (slurm-lab.md) must be beaten on any affinity mask, one CPU included.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import pytest
from sandbox import holder_pid, proc_state

REPO = pathlib.Path(__file__).resolve().parent.parent
HOLDER_SRC = REPO / "contrib" / "slurm" / "holder"
PID_NS = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
"""


def run(python: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [python, "-m", "nsctl", *args], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert not check or result.returncode == 0, f"{args} -> {result.returncode}\n{result.stderr}"
    return result


def install_copy(prefix: str) -> str:
    """A venv under ``prefix`` holding a copy of nsctl (its dependencies from this test run's
    environment, through a .pth file); returns its python, which lives under ``prefix`` too."""
    venv = os.path.join(prefix, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copytree(REPO / "nsctl", os.path.join(site, "nsctl"), symlinks=False)
    with open(os.path.join(site, "deps.pth"), "w", encoding="utf-8") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    return python


def job_cycle(lab, python: str, job_id: str, *setup_args: str) -> None:
    """Setup, a join that sees the live holder as PID 1, teardown: all with this install."""
    run(python, "setup", "--job-id", job_id, "--user", "nobody", *setup_args)
    holder = holder_pid(lab.run, job_id)
    assert proc_state(holder) in ("S", "R"), "the holder must be running after setup"
    out = run(python, "join", "--job-id", job_id, "--", "/bin/sh", "-c", "ps -o pid=,args= -p 1")
    assert out.stdout.split(None, 1) == ["1", f"nsctl: [{job_id}:namespace]\n"]
    run(python, "teardown", "--wait", "--job-id", job_id)
    assert proc_state(holder) in (None, "Z")
    assert lab.job_files() == [] and lab.index_entries() == []


@pytest.fixture
def under_tmp():
    top = tempfile.mkdtemp(prefix="nsctl-install-", dir="/tmp")
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top)


def test_nsctl_installed_under_tmp(lab, under_tmp):
    lab.write_config(PID_NS)
    python = install_copy(under_tmp)
    assert python.startswith("/tmp/")
    job_cycle(lab, python, "701")


def test_nsctl_installed_under_a_dir_confs_path(lab):
    private = os.path.join(str(lab.dir), "opt")  # becomes the job's private /opt-like dir
    os.mkdir(private, 0o755)
    python = install_copy(private)
    lab.write_config(PID_NS + f"  dir_confs:\n    - path: /tmp\n    - path: {private}\n")
    job_cycle(lab, python, "702")


@pytest.fixture(scope="module")
def c_holder_build(tmp_path_factory):
    build = tmp_path_factory.mktemp("holder-build")
    shutil.copy(HOLDER_SRC / "nsctl-holder.c", build)
    shutil.copy(HOLDER_SRC / "Makefile", build)
    subprocess.run(["make", "-s", "-C", str(build)], check=True)
    return build / "nsctl-holder"


def test_a_holder_program_under_a_private_dir(lab, under_tmp, c_holder_build):
    lab.write_config(PID_NS)
    holder = os.path.join(under_tmp, "nsctl-holder")
    shutil.copy(c_holder_build, holder)
    os.chmod(holder, 0o755)
    job_cycle(lab, sys.executable, "703", "--holder", holder)


def test_a_holder_that_cannot_be_executed_fails_setup_and_rolls_back(lab):
    lab.write_config(PID_NS)
    directory = os.path.join(str(lab.dir), "bin")
    os.mkdir(directory, 0o755)
    holder = os.path.join(directory, "not-a-program")
    with open(holder, "w", encoding="utf-8") as handle:
        handle.write("neither ELF nor #!\n")
    os.chmod(holder, 0o755)
    result = run(
        sys.executable,
        "setup",
        "--job-id",
        "704",
        "--user",
        "nobody",
        "--holder",
        holder,
        check=False,
    )
    assert result.returncode == 1
    assert "setup failed: holder: exec holder: Exec format error" in result.stderr
    assert "namespaces ready" not in result.stderr
    assert lab.job_files() == [] and lab.index_entries() == []


def test_a_holder_others_could_swap_is_refused(lab, under_tmp, c_holder_build):
    lab.write_config(PID_NS)
    loose = os.path.join(under_tmp, "loose")
    os.mkdir(loose)
    os.chmod(loose, 0o777)
    holder = os.path.join(loose, "nsctl-holder")
    shutil.copy(c_holder_build, holder)
    os.chmod(holder, 0o755)
    result = run(
        sys.executable,
        "setup",
        "--job-id",
        "705",
        "--user",
        "nobody",
        "--holder",
        holder,
        check=False,
    )
    assert result.returncode == 1
    assert (
        f"open holder {holder}: {loose}: the holder's directory must be owned by root and not "
        "group/world-writable" in result.stderr
    )
    assert lab.job_files() == [] and lab.index_entries() == []


# ---------------------------------------------------------------------------------------------
# The EINVAL kernel fact, on one CPU, in a nested mount namespace

EINVAL_DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from nsctl import engine, libc
    from nsctl.hooks import run_setup, run_teardown

    def next_id(cpu):
        # The id the next namespace made on ``cpu`` gets (a throwaway UTS namespace, left).
        os.sched_setaffinity(0, {cpu})
        uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
        libc.unshare(libc.CLONE.NEWUTS)
        got = engine._ns_number("/proc/self/ns/uts")
        libc.setns(uts, libc.CLONE.NEWUTS)
        os.close(uts)
        return got

    results = []
    for round_ in range(int(sys.argv[1])):
        child = os.fork()
        if child == 0:
            # The worst case, made on purpose: this process's mount namespace (the binder's)
            # is made on CPU 1 with an id above everything CPU 0 would hand out next ...
            low = next_id(0)
            while next_id(1) <= low:
                pass
            libc.unshare(libc.CLONE.NEWNS)
            libc.mount(None, "/", None, libc.MS.REC | libc.MS.PRIVATE)
            own = engine._ns_number("/proc/self/ns/mnt")
            hard = own > next_id(0)
            # ... and setup may run on CPU 0 only (taskset -c 0).
            os.sched_setaffinity(0, {0})
            job = str(7100 + round_)
            rc = run_setup(job_id=job, user="nobody")
            rc = rc or run_teardown(job_id=job, wait=True)
            os._exit(0 if rc == 0 and hard else (2 if not hard else 1))
        _, status = os.waitpid(child, 0)
        results.append(os.waitstatus_to_exitcode(status))
    print(json.dumps(results))
    """
)


def test_setup_beats_the_einval_on_one_cpu_in_a_nested_mount_namespace(lab):
    assert len(os.sched_getaffinity(0)) >= 2, "the worst case needs a second CPU to be made on"
    lab.write_config(PID_NS.replace("  clone_ns_flags: [CLONE_NEWPID]\n", ""))
    result = subprocess.run(
        [sys.executable, "-c", EINVAL_DRIVER, "100"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    codes = json.loads(result.stdout.splitlines()[-1])
    # 0: set up and torn down; 2 would mean the worst case was not made; 1: setup failed.
    assert codes == [0] * 100, result.stderr[-3000:]
    assert "EINVAL" not in result.stderr
    assert lab.job_files() == [] and lab.index_entries() == []
