"""nsctl status, gc and join on real Slurm (issue 10): nsctl's jobs on 22.05 and 26.05, and the
jobs of Slurm's own namespace/linux on 26.05; slurmd killed and restarted mid-job; a reboot."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from slurmlab import RUN_DIR, Lab

VERSIONS = pytest.mark.parametrize(
    "lab", ["22.05", "26.05"], indirect=True, ids=["slurm-22.05", "slurm-26.05"]
)


def nsctl(lab: Lab, command: str, *args: str, check: bool = True):
    """nsctl as an admin runs it on the node (SLURM_CONF set, so Slurm can be asked), with the
    node's Slurm name (the lab's is deliberately not its hostname)."""
    node = ["--node", lab.node] if command in ("status", "gc", "join") else []
    return lab.on_node([lab.nsctl, command, *node, *args], check=check)


def status(lab: Lab) -> dict:
    jobs = json.loads(nsctl(lab, "status", "--format", "json").stdout)["jobs"]
    return {job["job_id"]: job for job in jobs}


@pytest.fixture
def pid_ns(lab: Lab) -> Lab:
    lab.configure("nsctl", lab.default_namespace_yaml() + "  clone_ns_flags: [CLONE_NEWPID]\n")
    return lab


@VERSIONS
def test_status_and_gc_see_a_running_job_and_keep_it(pid_ns: Lab) -> None:
    with pid_ns.running_job("echo data > /tmp/file") as job:
        jobs = status(pid_ns)
        live = jobs[job.job_id]
        assert (live["state"], live["user"], live["made_by"]) == ("live", pid_ns.user, "nsctl")
        assert live["namespaces"] == ["pid", "mnt"] and live["holder_pid"]
        result = nsctl(pid_ns, "gc")
        assert f"job {job.job_id} (live): keep: live" in result.stdout
        out = nsctl(pid_ns, "join", "--job-id", job.job_id, "--", "cat", "/tmp/file").stdout
        assert out == "data\n"
    # The Epilog's detached deleter may still be at work ("deleting") for a moment.
    deadline = time.monotonic() + 30
    while job.job_id in status(pid_ns) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.job_id not in status(pid_ns)


@VERSIONS
def test_slurmd_killed_and_restarted_mid_job_loses_nothing(pid_ns: Lab) -> None:
    with pid_ns.running_job("echo data > /tmp/file") as job:
        (slurmd,) = pid_ns.daemon_pids("slurmd", main=True)
        os.kill(slurmd, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pid_ns.daemon_pids("slurmd", main=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        # What an admin's ExecStartPre= does before slurmd comes back: gc, with slurmd down.
        result = nsctl(pid_ns, "gc")
        assert f"job {job.job_id} (live): keep" in result.stdout
        pid_ns.exec(
            ["slurmd", "-f", str(pid_ns.conf), "-N", pid_ns.node],
            space=pid_ns.node_spaces[pid_ns.node],
        )
        wait_busy(pid_ns)
        # The job and its namespaces are intact. (A new step would not tell: a restarted
        # slurmd of 26.05 waits for a prolog notification that never comes and fails it, with
        # or without nsctl.)
        assert status(pid_ns)[job.job_id]["state"] == "live"
        out = nsctl(pid_ns, "join", "--job-id", job.job_id, "--", "cat", "/tmp/file").stdout
        assert out == "data\n"
    assert pid_ns.index_entries() == [] and status(pid_ns) == {}
    pid_ns.settings = None  # the daemons were restarted by hand: configure() starts afresh


def wait_busy(lab: Lab, timeout: float = 60) -> None:
    """The node is back and runs the job (alloc, or mix with a CPU free)."""
    deadline = time.monotonic() + timeout
    while lab.node_state() not in ("alloc", "mix"):
        assert time.monotonic() < deadline, lab.node_state()
        time.sleep(0.1)


@VERSIONS
def test_gc_after_a_crash_keeps_what_slurm_runs_and_the_rest_is_collected(pid_ns: Lab) -> None:
    with pid_ns.running_job("echo data > /tmp/file") as job:
        # The node crashes: slurmd, the job's slurmstepds and nsctl's holder gone, the mounts
        # gone, /run emptied; the job dir on the node's disk stays. slurmctld still runs it.
        for exe in ("slurmd", "slurmstepd"):
            for pid in pid_ns.daemon_pids(exe):
                os.kill(pid, signal.SIGKILL)
        for pid in pid_ns.holders():
            os.kill(pid, signal.SIGKILL)
        for point in sorted(pid_ns.mounts_under(str(pid_ns.ns_base)), key=len, reverse=True):
            pid_ns.on_node(["umount", "-l", point])
        pid_ns.on_node(["rm", "-rf", RUN_DIR])
        job_dir = pid_ns.ns_base / job.job_id
        assert job_dir.is_dir()
        # gc before slurmd starts again (ExecStartPre=): Slurm says the job runs here.
        result = nsctl(pid_ns, "gc")
        assert f"job {job.job_id} (orphan): keep: Slurm runs it on this node" in result.stdout
        assert job_dir.is_dir()
        # Judged from the node alone, it is an orphan.
        result = nsctl(pid_ns, "gc", "--dry-run", "--no-slurm")
        assert f"job {job.job_id} (orphan): would collect: nothing of it is live" in result.stdout
        pid_ns.exec(
            ["slurmd", "-f", str(pid_ns.conf), "-N", pid_ns.node],
            space=pid_ns.node_spaces[pid_ns.node],
        )
        pid_ns.admin("scancel", job.job_id)
    # The job is over for Slurm: what its Epilog did not remove, gc now does.
    nsctl(pid_ns, "gc")
    assert not job_dir.exists(), sorted(pid_ns.ns_base.iterdir())
    assert not pid_ns.mounts_under(str(pid_ns.ns_base)) and status(pid_ns) == {}
    pid_ns.settings = None
    if pid_ns.node_state() not in ("idle",):
        pid_ns.resume_node()


@pytest.mark.parametrize("lab", ["26.05"], indirect=True, ids=["slurm-26.05"])
def test_status_join_and_gc_on_a_job_of_slurms_own_plugin(lab: Lab) -> None:
    lab.configure(
        "linux", lab.default_namespace_yaml("linux") + "  clone_ns_flags: [CLONE_NEWPID]\n"
    )
    with lab.running_job("echo from-the-job > /tmp/file") as job:
        record = status(lab)[job.job_id]
        assert (record["state"], record["made_by"], record["user"]) == ("live", "slurm", lab.user)
        assert record["job_dir"] == str(lab.nl_base / lab.node / job.job_id)
        assert record["namespaces"] == ["pid", "mnt"] and record["holder_pid"]
        out = nsctl(lab, "join", "--job-id", job.job_id, "--as-user", "--", "sh", "-c",
                    "cat /tmp/file; id -un; ps -e -o pid=,args= | head -1").stdout  # fmt: skip
        lines = out.splitlines()
        assert lines[:2] == ["from-the-job", lab.user], out
        assert lines[2].split(None, 1) == ["1", f"slurmstepd: [{job.job_id}:namespace]"], out
        for args in (("gc",), ("gc", "--no-slurm")):
            result = nsctl(lab, *args)
            assert f"job {job.job_id} (live): keep" in result.stdout, result
        assert (lab.nl_base / lab.node / job.job_id).is_dir()
