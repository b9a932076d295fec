"""Test sandbox: the whole pytest process moves into a throwaway mount namespace at start.

Privileged tests make real mounts and namespaces; inside this namespace (made rprivate) none of
them can reach the host, and all vanish with the process. After every privileged test the
``no_leaks`` fixture checks that no mount, holder process or job directory was left behind.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest
from sandbox import holder_pids, mount_points

JOB_USER = "nobody"
SECOND_USER = "nsctl-test2"

_SANDBOXED = False


def _enter_sandbox() -> None:
    global _SANDBOXED
    if _SANDBOXED or os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    # Made on CPU 0: namespace ids come in per-CPU batches, and a daemon pinned to the same CPU
    # (the e2e slurmd) then always creates newer namespaces it can bind (slurm-lab.md).
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) for the test sandbox failed")
    finally:
        os.sched_setaffinity(0, affinity)
    # rprivate: nothing mounted by a test propagates back to the host.
    if libc.mount(None, b"/", None, (1 << 18) | 0x4000, None) != 0:
        raise OSError(ctypes.get_errno(), "making / rprivate in the test sandbox failed")
    libc.prctl(36, 1, 0, 0, 0)  # subreaper: orphaned holders come back to us to be reaped
    _SANDBOXED = True


def pytest_configure(config):
    _enter_sandbox()


def pytest_collection_modifyitems(config, items):
    # The e2e tests run last: their session-wide Slurm cluster starts on first use, and its
    # daemons (children of this process, the subreaper) must not exist while other tests check
    # that they left no process behind.
    e2e = os.sep + os.path.join("tests", "e2e") + os.sep
    items.sort(key=lambda item: e2e in str(item.fspath))
    # Tests that need root get the "root" marker from their fixtures, so `-m "not root"` selects
    # the pure tests (run on every supported Python in CI).
    for item in items:
        if {"root", "no_leaks", "lab"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)


def reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture
def root():
    """Marks a test as privileged; it must run (fail, never skip) on this kind of machine."""
    assert os.geteuid() == 0, "privileged tests need root: run the suite as root"
    assert _SANDBOXED, "privileged tests must run inside the sandbox mount namespace"


@pytest.fixture
def no_leaks(root, tmp_path):
    """Fails the test if it leaves a mount, a live holder or a file under its lab behind."""
    mounts_before = mount_points()
    holders_before = holder_pids()
    yield
    reap_children()
    deadline = time.monotonic() + 5
    while holder_pids() - holders_before and time.monotonic() < deadline:
        time.sleep(0.01)
        reap_children()
    leaked_holders = holder_pids() - holders_before
    leaked_mounts = mount_points() - mounts_before
    for pid in leaked_holders:
        os.kill(pid, 9)
    assert not leaked_mounts, f"mounts leaked: {sorted(leaked_mounts)}"
    assert not leaked_holders, f"holder processes leaked: {sorted(leaked_holders)}"


LAB_ROOT = "/var/tmp/nsctl-tests"  # not under /tmp: a job's private /tmp would hide it (E5)


class Lab:
    """A node for one test: a config file, a base path and a runtime dir under LAB_ROOT."""

    def __init__(self, monkeypatch):
        os.makedirs(LAB_ROOT, mode=0o755, exist_ok=True)
        tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="lab-", dir=LAB_ROOT))
        self.dir = tmp_path
        self.base = str(tmp_path / "base")
        self.run = str(tmp_path / "run")
        self.config = str(tmp_path / "namespace.yaml")
        self.monkeypatch = monkeypatch
        os.chmod(tmp_path, 0o755)
        monkeypatch.setenv("NSCTL_RUN_DIR", self.run)
        monkeypatch.setenv("NSCTL_CONFIG", self.config)
        monkeypatch.setenv("SLURMD_NODENAME", "node1")
        for var in (
            "SLURM_JOB_ID",
            "SLURM_JOB_UID",
            "SLURM_JOB_GID",
            "SLURM_JOB_USER",
            "SLURM_CONF",
        ):
            monkeypatch.delenv(var, raising=False)

    def write_config(self, text: str) -> None:
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(text.replace("@BASE@", self.base).replace("@LAB@", str(self.dir)))

    def write_job_container_conf(self, text: str) -> None:
        """Use a job_container.conf (namespace/tmpfs) instead of the lab's namespace.yaml."""
        self.config = str(self.dir / "job_container.conf")
        self.monkeypatch.setenv("NSCTL_CONFIG", self.config)
        self.write_config(text)

    def job_files(self) -> list[str]:
        """Everything left under the base path (the base itself excluded)."""
        found = []
        for top, dirs, files in os.walk(self.base):
            found += [os.path.join(top, name) for name in dirs + files]
        return found

    def index_entries(self) -> list[str]:
        jobs = os.path.join(self.run, "jobs")
        return sorted(os.listdir(jobs)) if os.path.isdir(jobs) else []


@pytest.fixture
def lab(no_leaks, monkeypatch):
    the_lab = Lab(monkeypatch)
    yield the_lab
    shutil.rmtree(the_lab.dir)


@pytest.fixture(scope="session")
def job_user():
    return pwd.getpwnam(JOB_USER)


@pytest.fixture(scope="session")
def second_user():
    """A second job user (made here when the machine has none: tests run as root)."""
    try:
        return pwd.getpwnam(SECOND_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", SECOND_USER],
            check=True,
        )
        return pwd.getpwnam(SECOND_USER)
