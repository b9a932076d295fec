"""The SPANK plugin on its own: hand-made namespaces and index entries nsctl would never write.

The cluster runs with the plugin only (no Prolog/Epilog), reading its index from the directory
given by the plugstack.conf argument ``index_dir=``. A failing plugin does not always change
srun's exit code, so every failure test reads srun's stderr and slurmd's log.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from handmade import MARKER, HandmadeNamespace
from slurmlab import Lab


@pytest.fixture(scope="module")
def spank(lab: Lab) -> Iterator[Lab]:
    lab.configure("spank")
    yield lab


@pytest.fixture(scope="module")
def allocation(spank: Lab) -> Iterator[str]:
    """One allocation for the module; each test makes its own namespace and entry for it."""
    job_id = spank.allocate("-n2")  # both CPUs, so a step can run two tasks
    yield job_id
    spank.admin("scancel", job_id)
    spank.wait_job_gone(job_id)


@pytest.fixture
def made(
    spank: Lab, allocation: str, request: pytest.FixtureRequest
) -> Iterator[HandmadeNamespace]:
    pid_ns = getattr(request, "param", False)
    ns = HandmadeNamespace(
        spank, spank.root / "made", spank.spank_index, allocation, spank.uid, pid_ns
    )
    try:
        yield ns.create()
    finally:
        ns.destroy()


def test_no_index_entry_means_nothing_is_joined(spank: Lab, allocation: str) -> None:
    res = spank.step(allocation, "sh", "-c", "readlink /proc/self/ns/mnt /proc/self/ns/pid")
    assert res.returncode == 0 and res.stderr == "", res
    assert res.stdout.split() == [spank.ns_link(k) for k in ("mnt", "pid")]


def test_task_joins_the_mount_namespace(spank: Lab, made: HandmadeNamespace) -> None:
    made.write_index()
    res = spank.step(made.job_id, "-n2", "sh", "-c", "ls /tmp; stat -L -c %i /proc/self/ns/mnt")
    assert res.returncode == 0 and res.stderr == "", res
    ino = str(os.stat(spank.node_path(str(made.ns_dir / "mnt"))).st_ino)  # the bound namespace
    assert sorted(res.stdout.split()) == sorted([MARKER, ino] * 2), res


@pytest.mark.parametrize("made", [True], indirect=True)
def test_pid_namespace_task_is_forked_inside(spank: Lab, made: HandmadeNamespace) -> None:
    made.write_index()
    res = spank.step(made.job_id, "sh", "-c", "echo $$; ps -e -o pid=,args=; ls /tmp")
    assert res.returncode == 0 and res.stderr == "", res
    lines = [line.split(None, 1) for line in res.stdout.splitlines()]
    task_pid, procs = lines[0][0], dict(lines[1:-1])
    # Only the namespace's PID 1 and the task's own processes; the task has a low pid.
    assert sorted(procs.values()) == [
        "/usr/bin/sh -c echo $$; ps -e -o pid=,args=; ls /tmp",
        "ps -e -o pid=,args=",
        "sleep infinity",
    ], res
    assert procs["1"] == "sleep infinity" and procs[task_pid].startswith("/usr/bin/sh"), res
    assert lines[-1] == [MARKER], res
    assert spank.step(made.job_id, "sh", "-c", "exit 3").returncode == 3
    segv = spank.step(made.job_id, "sh", "-c", "kill -SEGV $$")
    assert segv.returncode == 139 and "Segmentation fault" in segv.stderr, segv


@pytest.mark.parametrize("made", [True], indirect=True)
def test_pid_namespace_without_its_init_fails_clearly(spank: Lab, made: HandmadeNamespace) -> None:
    made.write_index()
    made.destroy_holder()
    mark = spank.log_mark()
    res = spank.step(made.job_id, "echo", "the task ran")
    expected = "the job's PID namespace is gone (its holder, pid"
    assert "the task ran" not in res.stdout and expected in res.stderr, res
    assert expected in spank.logs_since(mark)


BROKEN = {
    "relative ns_dir": (dict(ns_dir="relative/.ns"), "expected an absolute path"),
    "dotdot ns_dir": (dict(ns_dir="/var/lib/../lib/x"), "expected an absolute path"),
    "unknown namespace": (
        dict(namespaces="mnt,net"),
        "unknown, repeated or misplaced namespace 'net'",
    ),
    "repeated namespace": (
        dict(namespaces="mnt,mnt"),
        "unknown, repeated or misplaced namespace 'mnt'",
    ),
    "misplaced namespace": (
        dict(namespaces="mnt,pid"),
        "unknown, repeated or misplaced namespace 'pid'",
    ),
    "no namespaces": (dict(namespaces=""), "bad 'namespaces' value"),
    "other job": (dict(job_id="999999"), "is for job '999999'"),
    "other uid": (dict(uid="0"), "index entry is for uid '0'"),
    "future version": (dict(version="2"), "has version '2', this reader reads version 1"),
    "missing ns file": (dict(ns_dir="/nonexistent/.ns"), "cannot open namespace file"),
}


@pytest.mark.parametrize("overrides, message", BROKEN.values(), ids=BROKEN.keys())
def test_an_index_entry_that_cannot_be_joined_fails_the_task(
    spank: Lab, made: HandmadeNamespace, overrides: dict, message: str
) -> None:
    made.write_index(**overrides)
    assert_task_refused(spank, made, message)


def test_a_file_that_is_not_a_namespace_fails_the_task(spank: Lab, made: HandmadeNamespace) -> None:
    fake = made.job_dir / "fake-ns"
    fake.mkdir()
    (fake / "mnt").touch()
    made.write_index(ns_dir=str(fake))
    assert_task_refused(spank, made, f"{fake}/mnt holds no namespace")


def test_a_symlinked_namespace_file_is_not_followed(spank: Lab, made: HandmadeNamespace) -> None:
    # As `nsctl join` does (O_NOFOLLOW): nsctl binds namespaces onto regular files, so a
    # symlink there was put by someone else and may name any process's namespace.
    linked = made.job_dir / "linked-ns"
    linked.mkdir()
    (linked / "mnt").symlink_to(made.ns_dir / "mnt")
    made.write_index(ns_dir=str(linked))
    assert_task_refused(
        spank, made, f"cannot open namespace file {linked}/mnt: Too many levels of symbolic links"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("version=1\njob_id={job}\nuid={uid}\nns_dir={ns}\nnamespaces=mnt", "truncated"),
        ("version=1\njob_id={job}\nuid={uid}\nns_dir={ns}\nns_dir=/x\nnamespaces=mnt\n", "twice"),
        ("version=1\njob_id={job}\nuid={uid}\nns_dir={ns}\nnamespaces=mnt\ngarbage\n", "malformed"),
        ("", "empty or truncated"),
    ],
    ids=["no final newline", "duplicate key", "line without =", "empty"],
)
def test_a_malformed_index_entry_fails_the_task(
    spank: Lab, made: HandmadeNamespace, text: str, message: str
) -> None:
    made.write_index(text.format(job=made.job_id, uid=spank.uid, ns=made.ns_dir))
    assert_task_refused(spank, made, message)


def test_an_index_entry_others_could_write_is_refused(spank: Lab, made: HandmadeNamespace) -> None:
    made.write_index(mode=0o666)
    assert_task_refused(spank, made, "is not a regular file owned and writable only by root")


def assert_task_refused(lab: Lab, made: HandmadeNamespace, message: str) -> None:
    mark = lab.log_mark()
    res = lab.step(made.job_id, "echo", "the task ran")
    assert "the task ran" not in res.stdout, res
    assert f"nsctl: {message}" in res.stderr or message in res.stderr, res
    assert "spank_task_init_privileged failed" in res.stderr, res
    assert message in lab.logs_since(mark)
