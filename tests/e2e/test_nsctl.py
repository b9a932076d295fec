"""Issue tests 5-10: nsctl on a live cluster, wired as contrib/slurm/README.md says."""

from __future__ import annotations

import time

import pytest
from slurmlab import Lab

from nsctl.layout import parse_index


def namespace_yaml(lab: Lab, extra: str = "", base: str = "") -> str:
    return f"defaults:\n  auto_base_path: true\n  base_path: {base or lab.ns_base}\n" + extra


def index_entry(lab: Lab, job_id: str) -> dict[str, str]:
    return parse_index((lab.run_dir() / "jobs" / job_id).read_text())


def assert_no_leftovers(lab: Lab, job_id: str) -> None:
    left = [str(p) for p in [lab.ns_base / job_id, lab.run_dir() / "jobs" / job_id] if p.exists()]
    left += lab.mounts_under(str(lab.ns_base / job_id))
    assert not left, left


# ---- 5. PID namespace ------------------------------------------------------------------------


@pytest.fixture
def pid_ns(lab: Lab) -> Lab:
    lab.configure("nsctl", namespace_yaml(lab, "  clone_ns_flags: [CLONE_NEWPID]\n"))
    return lab


def test_pid_namespace_shows_only_the_job_and_pid1_is_the_holder(pid_ns: Lab) -> None:
    res = pid_ns.srun("sh", "-c", 'echo "job=$SLURM_JOB_ID"; exec ps -e -o pid=,args=')
    assert res.returncode == 0 and "error" not in res.stderr, res
    lines = res.stdout.splitlines()
    job_id = lines[0].removeprefix("job=")
    procs = {int(pid): args for pid, args in (line.split(None, 1) for line in lines[1:])}
    assert procs.pop(1) == f"nsctl: [{job_id}:namespace]", res
    assert list(procs.values()) == ["ps -e -o pid=,args="], res


def test_pid_namespace_passes_exit_codes_through(pid_ns: Lab) -> None:
    res = pid_ns.srun("sh", "-c", "test $$ -lt 100 && exit 3")  # a low pid: inside the namespace
    assert res.returncode == 3, res
    res = pid_ns.srun("sh", "-c", "kill -SEGV $$")
    assert res.returncode == 139, res
    assert "Segmentation fault" in res.stderr, res


def test_pid_namespace_forwards_signals_to_the_task(pid_ns: Lab) -> None:
    output = pid_ns.usr1_to_a_step()
    assert "caught USR1" in output and "step rc=5" in output, output


def is_holder(lab: Lab, pid: int) -> bool:
    """Whether pid (as the node names it: the index entry's holder_pid) is an nsctl holder."""
    try:
        return lab.node_path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nsctl: [")
    except OSError:
        return False


def test_scancel_kills_everything_and_the_holder_goes(pid_ns: Lab) -> None:
    sync = pid_ns.new_dir("cancel")
    job = pid_ns.submit(f"srun -Q sh -c ': > {sync}/step; exec sleep 600'\n")
    pid_ns.wait_file(sync / "step", job)
    holder = int(index_entry(pid_ns, job.job_id)["holder_pid"])
    assert is_holder(pid_ns, holder)
    assert pid_ns.user_processes(), "the job's sleep should be running"
    pid_ns.admin("scancel", job.job_id)
    pid_ns.wait_job_gone(job.job_id)
    assert not is_holder(pid_ns, holder)
    assert pid_ns.user_processes() == []
    assert_no_leftovers(pid_ns, job.job_id)


# ---- 6. user namespace -----------------------------------------------------------------------


def test_user_namespace_identity_map_and_job_runs_normally(lab: Lab) -> None:
    flags = "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]\n"
    lab.configure("nsctl", namespace_yaml(lab, flags))
    res = lab.srun(
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; readlink /proc/self/ns/user; id -un; "
        "echo data > /tmp/file && stat -c '%U %a' /tmp/file && cat /tmp/file; "
        "ps -e -o pid=,args= | head -1",
    )
    assert res.returncode == 0 and "error" not in res.stderr, res
    lines = [line.split() for line in res.stdout.splitlines()]
    assert lines[0] == ["0", "0", "4294967295"] and lines[1] == ["0", "0", "4294967295"], res
    assert lines[2] != [lab.ns_link("user")], res
    assert lines[3:6] == [[lab.user], [lab.user, "644"], ["data"]], res
    assert lines[6][:2] == ["1", "nsctl:"], res


# ---- 7. TMPDIR -------------------------------------------------------------------------------


def test_tmpdir_is_tmp_even_when_the_submitter_had_another(lab: Lab) -> None:
    lab.configure("nsctl")
    elsewhere = {"TMPDIR": str(lab.home / "submit-host-tmp")}
    res = lab.srun("printenv", "TMPDIR", extra_env=elsewhere)
    assert (res.returncode, res.stdout) == (0, "/tmp\n"), res
    job = lab.submit(
        'echo "batch $TMPDIR"; srun -Q sh -c \'echo "step $TMPDIR"\'', extra_env=elsewhere
    )
    lab.wait_job_gone(job.job_id)
    assert job.read() == "batch /tmp\nstep /tmp\n", job.read()


def test_tmpdir_is_left_alone_when_tmp_is_not_private(lab: Lab) -> None:
    lab.configure("nsctl", namespace_yaml(lab, "  dir_confs:\n    - path: /dev/shm\n"))
    elsewhere = {"TMPDIR": str(lab.home / "submit-host-tmp")}
    res = lab.srun("printenv", "TMPDIR", extra_env=elsewhere)
    assert (res.returncode, res.stdout) == (0, elsewhere["TMPDIR"] + "\n"), res


# ---- 8. a broken setup and the fail policy ---------------------------------------------------


@pytest.fixture
def failing_script(lab: Lab) -> str:
    script = lab.bin / "clone-ns-script-that-fails"
    script.write_text("#!/bin/sh\necho 'refusing on purpose' >&2\nexit 1\n")
    script.chmod(0o755)
    return namespace_yaml(lab, f"  clone_ns_script: {script}\n")


def test_broken_setup_drains_the_node_with_the_default_policy(
    lab: Lab, failing_script: str
) -> None:
    lab.configure("nsctl", failing_script, on_error="fail")
    mark = lab.log_mark()
    try:
        res = lab.srun("echo", "the job ran")
        logs = lab.logs_since(mark)
        assert "the job ran" not in res.stdout, res
        assert res.returncode != 0, res
        lab.wait_node_state("drain")
        assert "Prolog error" in lab.node_reason() or "prolog" in lab.node_reason().lower()
        assert "clone_ns_script" in logs and "refusing on purpose" in logs, logs
        assert "error: prolog failed" in logs.lower(), logs
        # The failed setup rolled back: nothing of the job is left on the node.
        assert not [p for p in lab.ns_base.iterdir()] if lab.ns_base.exists() else True
        assert lab.index_entries() == [] and lab.mounts_under(str(lab.ns_base)) == []
    finally:
        lab.admin("scancel", "--full", "-u", lab.user, check=False)
        lab.resume_node()
    assert lab.node_state() == "idle"


def test_broken_setup_runs_the_job_unisolated_with_on_error_ignore(
    lab: Lab, failing_script: str
) -> None:
    lab.configure("nsctl", failing_script, on_error="ignore")
    mark = lab.log_mark()
    res = lab.srun("sh", "-c", "echo the job ran; stat -c %a /tmp; readlink /proc/self/ns/mnt")
    assert res.returncode == 0, res
    # Unisolated: in the node's own mount namespace, where slurmd runs.
    assert res.stdout.splitlines() == ["the job ran", "1777", lab.ns_link("mnt")]
    assert "refusing on purpose" in lab.logs_since(mark)
    assert lab.node_state() in ("idle", "comp")
    assert lab.index_entries() == [] and lab.mounts_under(str(lab.ns_base)) == []


# ---- 9. node_confs by Slurm node name --------------------------------------------------------


def test_node_confs_keyed_by_the_slurm_node_name(lab: Lab) -> None:
    assert lab.node != lab.hostname  # so a match on the hostname could not pass this test
    chosen, other = lab.root / "ns-by-nodename", lab.root / "ns-by-hostname"
    lab.configure(
        "nsctl",
        "defaults:\n  auto_base_path: true\n"
        f"  base_path: {lab.ns_base}\n"
        "node_confs:\n"
        f"  - nodes: '{lab.hostname}'\n    options: {{base_path: {other}}}\n"
        "  - nodes: 'lab[1-4]'\n"
        f"    options: {{base_path: {chosen}}}\n",
    )
    with lab.running_job("touch /tmp/here") as job:
        entry = index_entry(lab, job.job_id)
        assert entry["job_dir"] == f"{chosen}/{job.job_id}"
        backing = chosen / job.job_id / f".{job.job_id}" / "_tmp" / "here"
        assert backing.is_file()
        assert not (other / job.job_id).exists() and not (lab.ns_base / job.job_id).exists()
    assert not (chosen / job.job_id).exists()


# ---- 10. requeue onto the same node ----------------------------------------------------------


def test_requeued_job_starts_cleanly_on_the_same_node(lab: Lab) -> None:
    lab.configure("nsctl")
    job, sync = lab.requeueable_job()
    lab.admin("scontrol", "requeuehold", job.job_id)
    lab.wait_job_state(job.job_id, ("PENDING",))
    job_dir = lab.ns_base / job.job_id
    deadline = time.monotonic() + 60
    while (job_dir.exists() or lab.index_entries()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job_dir.exists(), "the first run's Epilog should have removed the job dir"
    # What a crash would leave: a stale job dir for the same id, with a file in its /tmp.
    stale = job_dir / f".{job.job_id}" / "_tmp"
    stale.mkdir(parents=True)
    (stale / "stale-file").touch()
    lab.release_now(job.job_id)
    lab.wait_file(sync / "ready-1", job)
    (sync / "go-1").touch()
    lab.wait_job_gone(job.job_id)
    out = job.read()
    assert "run 0 sees: \n" in out and "run 1 sees: \n" in out, out
    assert lab.job_field(job.job_id, "Restarts") == "1"
    assert_no_leftovers(lab, job.job_id)
