"""A node's lifecycle (issue 10), for real: an Epilog that returns at once, nsctl status, and
nsctl gc after crashes and reboots, which collects everything left and never a live job's file.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from sandbox import index_entry, live_children, mount_points, proc_stat

from nsctl import layout, libc

PID_NS = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
"""


def nsctl(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    return subprocess.run(
        [sys.executable, "-m", "nsctl", *args], text=True, timeout=timeout, **kwargs
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args[3:6]} -> {result.returncode}\n{result.stderr}"
    return result


def setup(job_id: str) -> None:
    ok(nsctl("setup", "--job-id", job_id, "--user", "nobody"))


def in_job(job_id: str, script: str) -> None:
    ok(nsctl("join", "--job-id", job_id, "--as-user", "--", "/bin/sh", "-ec", script))


def wait_until(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.02)


def base_entries(lab) -> list[str]:
    return sorted(os.listdir(lab.base)) if os.path.isdir(lab.base) else []


def deleters() -> list[int]:
    """The detached deleters of this test run (orphaned to pytest, the subreaper)."""
    return [pid for pid in live_children() if not _is_holder(pid)]


def _is_holder(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().startswith(b"nsctl: [")
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The Epilog returns at once: the job's trees are moved aside and deleted in the background


def test_teardown_moves_the_tree_aside_and_a_detached_process_deletes_it(lab, tmp_path):
    lab.write_config(PID_NS)
    setup("901")
    in_job("901", "mkdir /tmp/d; for i in $(seq 1 2000); do : > /tmp/d/f$i; done")
    log = tmp_path / "epilog.log"
    with open(log, "w") as stderr:
        # stdout is a pipe, as slurmd gives an Epilog without LOG=: it must close at once.
        proc = subprocess.Popen(
            [sys.executable, "-m", "nsctl", "teardown", "--job-id", "901", "-v"],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == b""
    # The job id is free at once: no B/J, no index entry; its tree lies aside.
    assert "901" not in base_entries(lab) and lab.index_entries() == []
    text = log.read_text()
    assert "deleting the job's files in the background (pid " in text
    pid = int(text.split("in the background (pid ")[1].split(")")[0])
    fields = proc_stat(pid)
    if fields is not None and fields[0] != "Z":  # still working: it is detached and idle
        assert int(fields[3]) not in (os.getsid(0), proc.pid)  # a session of its own (field 6)
        assert int(fields[16]) == 19  # nice (field 19)
        assert int(fields[38]) == 5  # SCHED_IDLE (field 41)
    wait_until(lambda: base_entries(lab) == [], what="the background deletion")
    wait_until(lambda: "usage: " in log.read_text(), what="the usage line")
    assert "usage: /tmp 0 bytes in 2000 files; /dev/shm 0 bytes in 0 files" in log.read_text()


def test_a_requeued_job_starts_while_its_old_tree_is_still_being_deleted(lab):
    lab.write_config(PID_NS)
    setup("902")
    in_job("902", "cd /tmp; i=0; while [ $i -lt 20000 ]; do : > f$i; i=$((i+1)); done")
    ok(nsctl("teardown", "--job-id", "902"))
    setup("902")  # the same id again, at once
    try:
        assert "902" in base_entries(lab) and lab.index_entries() == ["902"]
        in_job("902", 'test -z "$(ls -A /tmp)"')  # the new run sees an empty /tmp
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "902"))
    wait_until(lambda: base_entries(lab) == [], what="both trees gone")


def test_wait_deletes_before_returning_and_reports_exact_usage(lab):
    lab.write_config(PID_NS)
    setup("903")
    in_job(
        "903",
        "head -c 40960 /dev/zero > /tmp/a; mkdir /tmp/b; : > /tmp/b/c; "
        "head -c 8192 /dev/zero > /dev/shm/s",
    )
    result = ok(nsctl("teardown", "--wait", "--job-id", "903"))
    assert base_entries(lab) == [] and deleters() == []
    assert "usage: /tmp 40960 bytes in 2 files; /dev/shm 8192 bytes in 1 files" in result.stderr


# ---------------------------------------------------------------------------------------------
# nsctl status


def status(*args: str) -> dict:
    result = ok(nsctl("status", "--format", "json", *args))
    return {job["job_id"]: job for job in json.loads(result.stdout)["jobs"]}


def test_status_shows_every_state(lab):
    lab.write_config(PID_NS)
    for job_id in ("911", "912", "913"):
        setup(job_id)
    os.kill(int(index_entry(lab.run, "912")["holder_pid"]), signal.SIGKILL)  # holder dead
    os.unlink(os.path.join(lab.run, "jobs", "913"))  # a setup killed before the index: half
    orphan = os.path.join(lab.base, "914")  # a reboot's leftover: nothing bound
    os.makedirs(os.path.join(orphan, ".ns"))
    os.makedirs(os.path.join(orphan, ".914", "_tmp"))
    open(os.path.join(orphan, layout.MARKER), "w").close()
    aside = os.path.join(lab.base, layout.trash_name("915", 1))
    os.makedirs(os.path.join(aside, ".915"))
    slurms = os.path.join(lab.base, "916")  # Slurm's own plugin: no mark; listed, never ours
    os.makedirs(os.path.join(slurms, ".ns"), mode=0o700)
    os.chmod(slurms, 0o700)
    try:
        jobs = status()
        assert {j: jobs[j]["state"] for j in jobs} == {
            "911": "live",
            "912": "holder dead",
            "913": "half-built",
            "914": "orphan",
            "915": "deleting",
            "916": "orphan",
        }
        assert jobs["916"]["made_by"] == "slurm" and jobs["911"]["made_by"] == "nsctl"
        live = jobs["911"]
        assert live["user"] == "nobody" and live["namespaces"] == ["pid", "mnt"]
        assert live["holder_pid"] == int(index_entry(lab.run, "911")["holder_pid"])
        assert 0 <= live["age_seconds"] < 120
        assert [d["path"] for d in live["dirs"]] == ["/tmp", "/dev/shm"]
        assert live["dirs"][0]["bytes"] is None  # not measured without --usage
        assert jobs["915"]["deleting"] == [aside]
        text = ok(nsctl("status")).stdout.splitlines()
        assert text[0].split() == ["JOB", "STATE", "USER", "HOLDER", "AGE", "NAMESPACES", "DIRS"]
        assert text[1].split()[:2] == ["911", "live"] and "916 (slurm)" in text[-1]
    finally:
        os.rmdir(os.path.join(slurms, ".ns"))
        os.rmdir(slurms)
        for job_id in ("911", "912", "913", "914", "915"):
            ok(nsctl("teardown", "--wait", "--job-id", job_id))
        ok(nsctl("gc", "--no-slurm"))
    assert base_entries(lab) == [] and lab.index_entries() == []


def test_status_usage_measures_each_private_dir(lab):
    lab.write_config(PID_NS)
    setup("917")
    try:
        in_job(
            "917",
            "head -c 16384 /dev/zero > /tmp/x; : > /tmp/y; head -c 4096 /dev/zero > /dev/shm/z",
        )
        dirs = {d["path"]: d for d in status("--usage", "--job-id", "917")["917"]["dirs"]}
        assert (dirs["/tmp"]["bytes"], dirs["/tmp"]["files"]) == (16384, 2)
        assert (dirs["/dev/shm"]["bytes"], dirs["/dev/shm"]["files"]) == (4096, 1)
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "917"))


def test_status_needs_no_config_when_the_index_is_there(lab):
    lab.write_config(PID_NS)
    setup("918")
    try:
        lab.write_config("defaults: [broken\n")
        result = nsctl("status", "--format", "json")
        assert result.returncode == 0 and "Traceback" not in result.stderr
        assert [j["job_id"] for j in json.loads(result.stdout)["jobs"]] == ["918"]
        assert "only what the runtime index names is seen" in result.stderr
    finally:
        lab.write_config(PID_NS)
        ok(nsctl("teardown", "--wait", "--job-id", "918"))


def test_status_of_a_job_with_nothing_here_exits_1(lab):
    lab.write_config(PID_NS)
    result = nsctl("status", "--job-id", "919")
    assert result.returncode == 1 and "job 919 has no namespace on this node" in result.stderr
    assert nsctl("status", "--job-id", "x").returncode == 1


# ---------------------------------------------------------------------------------------------
# nsctl gc


def reboot(lab) -> None:
    """What a reboot leaves: every process and mount gone, /run emptied; the base stays."""
    for pid in [p for p in live_children() if _is_holder(p)]:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not [p for p in live_children() if _is_holder(p)], what="holders gone")
    for point in sorted(mount_points(), key=len, reverse=True):
        if point.startswith(lab.base + "/"):
            libc.umount2(point, libc.MNT_DETACH)
    subprocess.run(["rm", "-rf", lab.run], check=True)


def test_gc_after_a_reboot_collects_everything(lab):
    lab.write_config(PID_NS)
    for job_id in ("921", "922", "923"):
        setup(job_id)
        in_job(job_id, "echo data > /tmp/file")
    ok(nsctl("teardown", "--job-id", "923"))  # its deletion is cut short by the reboot:
    for pid in deleters():
        os.kill(pid, signal.SIGKILL)
    reboot(lab)
    assert set(base_entries(lab)) >= {"921", "922"}
    result = ok(nsctl("gc", "--no-slurm"))
    assert "job 921 (orphan): collect" in result.stdout
    assert base_entries(lab) == [] and lab.index_entries() == []
    assert not [m for m in mount_points() if m.startswith(lab.base)]


def test_gc_never_touches_a_live_job(lab):
    lab.write_config(PID_NS)
    setup("924")
    in_job("924", "echo keep > /tmp/keep")
    orphan = os.path.join(lab.base, "925")
    os.makedirs(os.path.join(orphan, ".ns"))
    open(os.path.join(orphan, layout.MARKER), "w").close()
    try:
        result = ok(nsctl("gc", "--no-slurm"))
        assert "job 924 (live): keep: live" in result.stdout
        assert base_entries(lab) == ["924"]
        in_job("924", "test $(cat /tmp/keep) = keep")
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "924"))


def test_gc_leaves_directories_without_nsctls_mark_alone(lab):
    lab.write_config(PID_NS)
    foreign = os.path.join(lab.base, "926")  # e.g. Slurm's own namespace/linux in a shared base
    os.makedirs(os.path.join(foreign, ".ns"), mode=0o700)
    os.chmod(foreign, 0o700)
    result = ok(nsctl("gc", "--no-slurm"))
    assert "job 926 (orphan): keep: made by Slurm's own namespace plugin" in result.stdout
    assert os.path.isdir(os.path.join(foreign, ".ns"))
    os.rmdir(os.path.join(foreign, ".ns"))
    os.rmdir(foreign)


def test_gc_keeps_a_job_whose_dirs_are_still_mounted_in_a_process(lab):
    # The job's .ns files and index are gone (a teardown killed midway, say), but a task still
    # has its /tmp mounted (here: a process in a mount namespace of its own, like a container).
    lab.write_config(PID_NS.replace("  clone_ns_flags: [CLONE_NEWPID]\n", ""))
    setup("927")
    backing = os.path.join(lab.base, "927", ".927", "_tmp")
    user = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {backing} /mnt && echo ready && exec sleep 60"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert user.stdout.readline() == "ready\n"
        libc.umount2(os.path.join(lab.base, "927", ".ns", "mnt"), libc.MNT_DETACH)
        os.unlink(os.path.join(lab.run, "jobs", "927"))
        result = ok(nsctl("gc", "--no-slurm"))
        assert f"keep: still mounted on /mnt in the mount namespace of pid {user.pid}" in (
            result.stdout
        )
        assert os.path.isdir(backing)
    finally:
        user.kill()
        user.wait()
    ok(nsctl("gc", "--no-slurm"))
    assert base_entries(lab) == [] and lab.index_entries() == []


def test_gc_runs_clone_ns_epilog_for_what_it_collects(lab):
    mark = os.path.join(str(lab.dir), "epilog-ran")
    script = os.path.join(str(lab.dir), "epilog")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(f'#!/bin/sh\necho "$SLURM_JOB_ID $SLURM_NS" >> {mark}\n')
    os.chmod(script, 0o755)
    lab.write_config(PID_NS + f"  clone_ns_epilog: {script}\n")
    setup("928")
    reboot(lab)
    ok(nsctl("gc", "--no-slurm"))
    with open(mark, encoding="utf-8") as handle:
        assert handle.read() == f"928 {lab.base}/928/.ns\n"
    assert base_entries(lab) == []


def test_gc_dry_run_changes_nothing(lab):
    lab.write_config(PID_NS)
    setup("929")
    reboot(lab)
    before = base_entries(lab)
    result = ok(nsctl("gc", "--dry-run", "--no-slurm"))
    assert "job 929 (orphan): would collect: nothing of it is live" in result.stdout
    assert base_entries(lab) == before
    ok(nsctl("gc", "--no-slurm"))


def test_gc_keeps_a_job_slurm_says_runs_here(lab, tmp_path, monkeypatch):
    # squeue stands in for a reachable Slurm here; tests/e2e asks the real one.
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\necho 930\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    lab.write_config(PID_NS)
    setup("930")
    reboot(lab)
    result = ok(nsctl("gc"))
    assert "job 930 (orphan): keep: Slurm runs it on this node" in result.stdout
    squeue.write_text("#!/bin/sh\nexit 0\n")
    assert "job 930 (orphan): collect" in ok(nsctl("gc")).stdout
    assert base_entries(lab) == []


def _killed_midway(argv: list[str], delay: float) -> float:
    """Run argv, SIGKILL it after ``delay`` s (unless done); how long it ran."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return time.monotonic() - started


@pytest.mark.parametrize("command", ["setup", "teardown"])
def test_gc_collects_whatever_a_kill_9_left_every_time(lab, command):
    # A script in setup and a big tree in teardown make each a step long enough that random
    # kills land before, inside and after the parts that matter.
    slow = os.path.join(str(lab.dir), "slow")
    with open(slow, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\n/bin/sleep 0.2\n")
    os.chmod(slow, 0o755)
    lab.write_config(PID_NS + (f"  init_script: {slow}\n" if command == "setup" else ""))
    rng = random.Random(f"gc-{command}")
    outcomes = set()
    whole = None  # how long the command takes when it is not killed: the kills land within
    for round_ in range(21):
        job_id = str(940 + round_)
        if command == "teardown":
            setup(job_id)
            in_job(job_id, "cd /tmp; i=0; while [ $i -lt 20000 ]; do : > f$i; i=$((i+1)); done")
        argv = [sys.executable, "-m", "nsctl", command, "--job-id", job_id]
        argv += ["--user", "nobody"] if command == "setup" else ["--wait"]
        if whole is None:
            whole = _killed_midway(argv, 60)
        else:
            _killed_midway(argv, rng.uniform(0.3, 1.0) * whole)
        result = ok(nsctl("gc", "--no-slurm"))
        if f"job {job_id} (live): keep: live" in result.stdout:
            # Killed too late (setup) or too early (teardown): the job is whole and live, and
            # gc must keep it; its Epilog's teardown is what ends it.
            outcomes.add("live")
            assert base_entries(lab) == [job_id] and lab.index_entries() == [job_id]
            ok(nsctl("teardown", "--wait", "--job-id", job_id))
        else:
            outcomes.add("collected" if job_id in result.stdout else "nothing")
        assert base_entries(lab) == [], f"round {round_}: {base_entries(lab)}"
        assert lab.index_entries() == [], f"round {round_}"
        assert not [m for m in mount_points() if m.startswith(lab.base)], f"round {round_}"
        wait_until(lambda: not [p for p in live_children() if _is_holder(p)], what="no holder left")
    assert "collected" in outcomes, outcomes  # some kills did land midway


def test_an_epilog_that_finds_leftovers_has_them_collected_in_the_background(lab):
    lab.write_config(PID_NS)
    setup("960")
    reboot(lab)  # 960 is now a leftover; 961 runs and ends normally
    setup("961")
    log = os.path.join(str(lab.dir), "epilog.log")
    with open(log, "w") as stderr:  # a file, as LOG= makes it: the detached deleter keeps it
        assert (
            nsctl("teardown", "--job-id", "961", capture_output=False, stderr=stderr).returncode
            == 0
        )
    wait_until(lambda: base_entries(lab) == [], what="the background gc")
    with open(log, encoding="utf-8") as handle:
        text = handle.read()
    assert "leftovers of other jobs found: collecting them (nsctl gc)" in text
    assert "job 960 (orphan): collect: nothing of it is live" in text
