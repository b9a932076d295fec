"""Findings of the attack suite run as a hostile job user (issue 8), each reproduced for real.

The user is ``nobody``, acting from inside the job (``nsctl join --as-user``) or as a plain
process on the node (``as_nobody``): swapping a base path whose parent they can write, using a
runtime directory made under umask 000, leaving processes behind when no PID namespace takes
them down, requeueing a job id under another owner. Root-side mistakes they exploit (a loosened
ancestor, a stale temporary index file) are made by the test as root.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
import time

import pytest
from sandbox import index_entry, live_children, proc_state

from nsctl import procfs

MNT_ONLY = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
"""
PID_NS = MNT_ONLY + "  clone_ns_flags: [CLONE_NEWPID]\n"


def nsctl(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nsctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args[3:6]} -> {result.returncode}\n{result.stderr}"
    return result


def setup(job_id: str, *extra: str) -> subprocess.CompletedProcess:
    return ok(nsctl("setup", "--job-id", job_id, "--user", "nobody", *extra))


def as_nobody(script: str) -> subprocess.CompletedProcess:
    """A shell script run by the user on the node (outside any job)."""
    nobody = pwd.getpwnam("nobody")

    def drop():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return subprocess.run(
        ["/bin/sh", "-ec", script], capture_output=True, text=True, preexec_fn=drop, timeout=60
    )


def in_job(job_id: str, script: str) -> subprocess.CompletedProcess:
    return ok(nsctl("join", "--job-id", job_id, "--as-user", "--", "/bin/sh", "-ec", script))


# ---------------------------------------------------------------------------------------------
# 2. A swapped base


@pytest.fixture
def writable_parent(lab):
    """``LAB/up``, writable by everyone and not sticky, holding the base path."""
    up = os.path.join(str(lab.dir), "up")
    os.mkdir(up)
    os.chmod(up, 0o777)
    return up


def test_a_base_whose_ancestor_others_can_write_is_refused_naming_it(lab, writable_parent):
    base = os.path.join(writable_parent, "base")
    lab.write_config(PID_NS.replace('"@BASE@"', base))
    result = nsctl("setup", "--job-id", "601", "--user", "nobody")
    assert result.returncode == 1
    assert (
        f"{writable_parent}, an ancestor of the base directory, can be written by everyone and "
        "is not sticky" in result.stderr
    )
    assert not os.path.exists(base) and lab.index_entries() == []


def test_a_dir_base_whose_ancestor_others_can_write_is_refused_too(lab, writable_parent):
    scratch = os.path.join(str(lab.dir), "scratch-target")
    os.mkdir(scratch)
    dir_base = os.path.join(writable_parent, "dbase")
    lab.write_config(
        MNT_ONLY + f"  dir_confs:\n    - path: {scratch}\n      base_path: {dir_base}\n"
    )
    result = nsctl("setup", "--job-id", "602", "--user", "nobody")
    assert result.returncode == 1
    assert f"{writable_parent}, an ancestor of the base directory" in result.stderr
    assert lab.job_files() == [] and lab.index_entries() == []


def test_a_sticky_world_writable_ancestor_is_fine(lab):
    # /var/tmp, where every test lab lives, is one: users cannot rename root's entries there.
    assert os.stat("/var/tmp").st_mode & stat.S_ISVTX
    lab.write_config(MNT_ONLY)
    setup("603")
    ok(nsctl("teardown", "--wait", "--job-id", "603"))


def test_teardown_acts_only_on_the_job_dir_setup_made_after_a_swap(lab):
    # Setup ran under a safe base; later an admin loosened its parent and the user swapped the
    # base for a symlink to a root-owned tree that has a directory named after the job.
    up = os.path.join(str(lab.dir), "up")
    os.mkdir(up, 0o755)
    base = os.path.join(up, "base")
    lab.write_config(PID_NS.replace('"@BASE@"', base))
    setup("604")
    holder = int(index_entry(lab.run, "604")["holder_pid"])
    victim = os.path.join(str(lab.dir), "victim")
    os.makedirs(os.path.join(victim, "604", "data"))
    os.chmod(up, 0o777)
    swap = as_nobody(f"mv {base} {base}.away && ln -s {victim} {base}")
    assert swap.returncode == 0, swap.stderr
    try:
        result = nsctl("teardown", "--wait", "--job-id", "604")
        assert result.returncode == 1, result.stderr
        assert f"left {base}/604 alone" in result.stderr
        assert os.path.isdir(os.path.join(victim, "604", "data"))  # nothing of it deleted
        # The real job's holder still went (known by its pid and start time): its PID
        # namespace does not outlive the Epilog; what is left is still indexed.
        assert proc_state(holder) in (None, "Z")
        assert lab.index_entries() == ["604"]
    finally:
        os.unlink(base)
        os.rename(base + ".away", base)
        os.chmod(up, 0o755)
    # Back where setup made it, the very same directory: the next teardown finishes the job.
    ok(nsctl("teardown", "--wait", "--job-id", "604"))
    assert os.listdir(base) == [] and lab.index_entries() == []


def test_teardown_refuses_a_job_dir_that_is_not_the_one_setup_made(lab):
    lab.write_config(MNT_ONLY)
    setup("605")
    job_dir = os.path.join(lab.base, "605")
    index = os.path.join(lab.run, "jobs", "605")
    with open(index, encoding="utf-8") as handle:
        real = handle.read()
    # The index (root's) names another directory than the one now at B/J: teardown leaves B/J.
    dev, ino = os.lstat(job_dir).st_dev, os.lstat(job_dir).st_ino
    with open(index, "w", encoding="utf-8") as handle:
        handle.write(real.replace(f"job_dir_id={dev}:{ino}\n", f"job_dir_id={dev}:{ino + 1}\n"))
    result = nsctl("teardown", "--wait", "--job-id", "605")
    assert result.returncode == 1
    assert f"left {job_dir} alone: it is not the directory setup made" in result.stderr
    assert os.path.isdir(os.path.join(job_dir, ".605")) and lab.index_entries() == ["605"]
    with open(index, "w", encoding="utf-8") as handle:
        handle.write(real)
    ok(nsctl("teardown", "--wait", "--job-id", "605"))
    assert lab.job_files() == [] and lab.index_entries() == []


# ---------------------------------------------------------------------------------------------
# 3. A loose runtime directory


def _umask_000():
    os.umask(0)


def test_runtime_dir_levels_get_exact_modes_whatever_the_umask(lab):
    lab.write_config(MNT_ONLY)
    ok(nsctl("setup", "--job-id", "611", "--user", "nobody", preexec_fn=_umask_000))
    try:
        modes = {
            name: stat.S_IMODE(os.stat(os.path.join(lab.run, name)).st_mode)
            for name in ("", "jobs", "locks", "cache")
        }
        assert modes == {"": 0o755, "jobs": 0o755, "locks": 0o700, "cache": 0o700}
        assert stat.S_IMODE(os.stat(os.path.join(lab.run, "jobs", "611")).st_mode) == 0o644
        # The user can neither hold a job's lock (setup would hang) nor add to the index.
        attack = as_nobody(
            f"(exec 3<>{lab.run}/locks/nsctl.lock) 2>/dev/null || echo no-lock\n"
            f"(: > {lab.run}/jobs/612) 2>/dev/null || echo no-index\n"
        )
        assert attack.stdout.split() == ["no-lock", "no-index"], attack
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "611"))


@pytest.mark.parametrize("level", ["", "jobs", "locks"])
def test_a_runtime_dir_level_others_can_write_is_refused(lab, level):
    lab.write_config(MNT_ONLY)
    path = os.path.join(lab.run, level)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    result = nsctl("setup", "--job-id", "613", "--user", "nobody")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert path.rstrip("/") in result.stderr
    assert "writable only by root" in result.stderr or "not group/world-writable" in result.stderr
    assert lab.job_files() == [] and not os.path.exists(os.path.join(lab.run, "jobs", "613"))


def test_a_runtime_dir_level_redirected_by_a_symlink_is_refused(lab):
    lab.write_config(MNT_ONLY)
    elsewhere = os.path.join(str(lab.dir), "users-dir")
    os.mkdir(elsewhere)
    os.chown(elsewhere, 65534, 65534)
    os.makedirs(lab.run)
    os.symlink(elsewhere, os.path.join(lab.run, "jobs"))
    result = nsctl("setup", "--job-id", "614", "--user", "nobody")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert os.listdir(elsewhere) == []  # no root-owned file written where the link points
    assert lab.job_files() == []


# ---------------------------------------------------------------------------------------------
# 4. Processes outliving teardown


def _job_mnt_ns(lab, job_id: str) -> procfs.NsId:
    ns = procfs.ns_id(os.path.join(lab.base, job_id, ".ns", "mnt"))
    assert ns is not None
    return ns


def _job_with_a_daemon(lab, job_id: str) -> tuple[procfs.NsId, list[int]]:
    """A job without a PID namespace that left a daemon running: its mount ns, its pids."""
    lab.write_config(MNT_ONLY)
    setup(job_id)
    mnt_ns = _job_mnt_ns(lab, job_id)
    in_job(job_id, "setsid sleep 120 >/dev/null 2>&1 < /dev/null &")
    left = procfs.in_mount_ns(mnt_ns)
    assert left, "the job's daemon should be running"
    return mnt_ns, left


def test_teardown_kills_processes_left_in_a_job_without_pid_namespace(lab):
    mnt_ns, left = _job_with_a_daemon(lab, "621")
    ok(nsctl("teardown", "--wait", "--job-id", "621"))
    assert procfs.in_mount_ns(mnt_ns) == []
    assert all(proc_state(pid) in (None, "Z") for pid in left)
    assert lab.job_files() == [] and lab.index_entries() == []


def test_the_epilogs_deleter_kills_them_before_it_deletes(lab):
    # Without --wait (as the Epilog runs) the scan of every process is the deleter's: the
    # Epilog returns, then the daemon dies, then the job's files go.
    mnt_ns, left = _job_with_a_daemon(lab, "622")
    result = ok(nsctl("teardown", "--job-id", "622"))
    assert "deleting the job's files in the background" in result.stderr
    assert "killing pid" not in result.stderr  # the deleter's line, not the Epilog's
    deadline = time.monotonic() + 30
    while (procfs.in_mount_ns(mnt_ns) or lab.job_files()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procfs.in_mount_ns(mnt_ns) == []
    assert all(proc_state(pid) in (None, "Z") for pid in left)
    assert lab.job_files() == [] and lab.index_entries() == []
    while live_children() and time.monotonic() < deadline:  # the deleter, orphaned to us
        time.sleep(0.02)
    assert live_children() == []


def test_teardown_wins_against_a_process_writing_to_tmp_meanwhile(lab):
    lab.write_config(MNT_ONLY)
    writer = (
        "setsid sh -c 'i=0; while :; do i=$((i+1)); mkdir -p /tmp/d$i; echo x > /tmp/d$i/f; "
        "done' >/dev/null 2>&1 < /dev/null &"
    )
    for round_ in range(10):
        job_id = str(622 + round_)
        setup(job_id)
        in_job(job_id, writer)
        time.sleep(0.05)  # let it create a few hundred entries
        result = nsctl("teardown", "--wait", "--job-id", job_id)
        assert result.returncode == 0, f"round {round_}: {result.stderr}"
    assert lab.job_files() == [] and lab.index_entries() == []
    assert [pid for pid in live_children() if proc_state(pid) not in (None, "Z")] == []


def test_teardown_never_kills_processes_outside_the_job(lab):
    lab.write_config(MNT_ONLY)
    setup("632")
    bystander = subprocess.Popen(["/bin/sleep", "60"])  # in the node's mount namespace
    try:
        ok(nsctl("teardown", "--wait", "--job-id", "632"))
        assert bystander.poll() is None
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


# ---------------------------------------------------------------------------------------------
# 5. "Already set up" for the wrong user


def test_a_live_job_id_set_up_for_another_owner_is_rebuilt(lab, second_user):
    lab.write_config(PID_NS)
    setup("641")
    old_holder = int(index_entry(lab.run, "641")["holder_pid"])
    result = ok(
        nsctl(
            "setup",
            "--job-id",
            "641",
            "--uid",
            str(second_user.pw_uid),
            "--user",
            second_user.pw_name,
        )
    )
    try:
        assert "already set up" not in result.stderr
        assert "does not match this job (uid is 65534, not" in result.stderr
        entry = index_entry(lab.run, "641")
        assert (entry["uid"], entry["user"]) == (str(second_user.pw_uid), second_user.pw_name)
        assert proc_state(old_holder) in (None, "Z")
        out = in_job("641", "id -un; stat -c %U /tmp").stdout.split()
        assert out == [second_user.pw_name, second_user.pw_name]
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "641"))


def test_the_same_job_set_up_twice_is_left_alone(lab):
    lab.write_config(PID_NS)
    setup("642")
    try:
        holder = int(index_entry(lab.run, "642")["holder_pid"])
        again = setup("642")
        assert "already set up; nothing to do" in again.stderr
        assert int(index_entry(lab.run, "642")["holder_pid"]) == holder
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "642"))


def test_a_live_job_with_other_namespaces_is_rebuilt(lab):
    lab.write_config(MNT_ONLY)
    setup("643")
    try:
        lab.write_config(PID_NS)
        result = setup("643")
        assert "does not match this job (namespaces is mnt, not pid,mnt)" in result.stderr
        assert index_entry(lab.run, "643")["namespaces"] == "pid,mnt"
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "643"))


# ---------------------------------------------------------------------------------------------
# 6. Temporary index files


def test_setup_and_teardown_remove_the_jobs_temporary_index_files(lab):
    lab.write_config(MNT_ONLY)
    jobs = os.path.join(lab.run, "jobs")
    ok(nsctl("teardown", "--wait", "--job-id", "651"))  # makes the runtime directory
    os.makedirs(jobs, exist_ok=True)
    # What a kill -9 at the rename leaves: J.tmp.PID (and another job's, which stays).
    for name in ("651.tmp.4242", "651.tmp.77", "6510.tmp.1"):
        open(os.path.join(jobs, name), "w").close()
    setup("651")
    assert sorted(os.listdir(jobs)) == ["651", "6510.tmp.1"]
    open(os.path.join(jobs, "651.tmp.99"), "w").close()
    ok(nsctl("teardown", "--wait", "--job-id", "651"))
    assert sorted(os.listdir(jobs)) == ["6510.tmp.1"]
    os.unlink(os.path.join(jobs, "6510.tmp.1"))


# ---------------------------------------------------------------------------------------------
# 8. Log injection, and what a script can put in the log


@pytest.mark.parametrize("command", ["setup", "teardown", "join"])
def test_a_job_id_with_a_newline_is_refused_and_never_tags_the_log(lab, command):
    lab.write_config(MNT_ONLY)
    args = ["--job-id", "42\n"] + (["--user", "nobody"] if command == "setup" else [])
    args += ["--", "/bin/true"] if command == "join" else []
    result = nsctl(command, *args)
    assert result.returncode == 1
    assert "bad job id '42\\n'" in result.stderr
    assert "job 42" not in result.stderr
    assert all(line.startswith("nsctl: ") for line in result.stderr.splitlines())
    assert lab.job_files() == [] and lab.index_entries() == []


def test_a_zero_padded_job_id_is_logged_and_stored_normalised(lab):
    lab.write_config(MNT_ONLY)
    result = setup("0042", "--verbose")
    try:
        assert "job 0042" not in result.stderr and "nsctl: job 42: " in result.stderr
        assert lab.index_entries() == ["42"] and os.path.isdir(os.path.join(lab.base, "42"))
    finally:
        result = ok(nsctl("teardown", "--wait", "--job-id", "00042", "--verbose"))
    assert "job 00042" not in result.stderr and "nsctl: job 42: " in result.stderr
    assert lab.job_files() == []


def test_a_scripts_output_reaches_the_log_capped(lab):
    script = os.path.join(str(lab.dir), "chatty")
    with open(script, "w", encoding="utf-8") as handle:
        # 10 MB of output in 100-byte lines.
        handle.write(
            '#!/bin/sh\n/usr/bin/python3 -c \'print(("x" * 99 + "\\n") * 100000, end="")\'\n'
        )
    os.chmod(script, 0o755)
    assert len(subprocess.run([script], capture_output=True).stdout) == 10_000_000
    lab.write_config(MNT_ONLY + f"  clone_ns_script: {script}\n")
    result = setup("661")
    try:
        logged = [line for line in result.stderr.splitlines() if "clone_ns_script: x" in line]
        assert len(logged) == 64 * 1024 // 100 + 1  # the last one cut at the limit
        assert f"clone_ns_script: {10_000_000 - 64 * 1024} more bytes of output not logged" in (
            result.stderr
        )
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "661"))
