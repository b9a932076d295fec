"""Setup is transactional: a failure at any step leaves nothing behind (root, sandboxed).

Every test makes one step of setup fail, for real where the kernel or the filesystem can be made
to fail on demand (a missing or symlinked base, a full tmpfs, a tmpfs option the kernel refuses,
a script that fails or hangs, a killed namespace process, SIGTERM to ``nsctl setup``), else with a
crafted plan (an op the config could never produce) or, where nothing else works, a fake libc
call that fails with one errno. Then it checks that no mount, directory, holder, process or index
entry is left (``lab`` checks mounts and holders itself) and that the error names the step, the
errno text and the path.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
from sandbox import live_children, proc_state, tmpfs

from nsctl import engine, layout, libc, plan
from nsctl.errors import SetupError
from nsctl.jobs import resolve_job
from nsctl.loader import load_node_config
from nsctl.log import job_logger

PID_NS = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
  dir_confs:
    - path: /tmp
      options: noexec
    - path: /dev/shm
      options: size=8m
"""


# ---------------------------------------------------------------------------------------------
# Helpers


def nsctl(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nsctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def setup_cmd(job_id: str, *extra: str) -> subprocess.CompletedProcess:
    return nsctl("setup", "--job-id", job_id, "--user", "nobody", *extra)


def plans(lab, job_id: str) -> tuple[plan.Plan, engine.TeardownPlanFor]:
    """The setup plan, and the teardown planner setup is given (by the job's index entry)."""
    resolved = load_node_config(lab.config, "node1", use_cache=False)
    job = resolve_job(job_id, None, None, "nobody")
    index = layout.index_path(job.job_id)

    def teardown_plan_for(entry):
        return plan.plan_teardown(resolved, job.job_id, index, os.environ, entry)

    return plan.plan_setup(resolved, job, index, os.environ), teardown_plan_for


def run_setup(lab, job_id: str, edit=None) -> engine.SetupResult:
    """``engine.setup`` in this process (so libc can be faked), on an optionally edited plan."""
    the_plan, teardown_plan = plans(lab, job_id)
    if edit:
        the_plan = the_plan._replace(ops=tuple(edit(list(the_plan.ops))))
    return engine.setup(the_plan, teardown_plan, job_logger(job_id))


def replace_op(ops: list, kind: type, **changes) -> list:
    return [op._replace(**changes) if isinstance(op, kind) else op for op in ops]


def setup_fails(lab, job_id: str, edit=None) -> str:
    with pytest.raises(SetupError) as caught:
        run_setup(lab, job_id, edit)
    return str(caught.value)


def assert_dead(pids) -> None:
    """Every pid is gone or a zombie (orphans come back to the test process to be reaped)."""
    deadline = time.monotonic() + 5  # a SIGKILLed process needs a moment to become a zombie
    while any(proc_state(pid) not in (None, "Z") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    alive = [pid for pid in pids if proc_state(pid) not in (None, "Z")]
    assert not alive, f"processes of the script survived: {alive}"


def job_mounts(lab) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line.split()[4] for line in handle if line.split()[4].startswith(str(lab.dir))]


def assert_nothing_left(lab, job_id: str) -> None:
    assert job_mounts(lab) == []
    assert not os.path.lexists(os.path.join(lab.base, job_id))
    assert lab.job_files() == []
    assert lab.index_entries() == []


def write_script(lab, name: str, body: str) -> str:
    """A site script. Slurm gives scripts no PATH, so every command is an absolute path."""
    path = os.path.join(str(lab.dir), name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def background_sleeper(lab) -> tuple[str, str]:
    """Shell lines that start a background sleep and record its pid, and the pid file."""
    pidfile = os.path.join(str(lab.dir), "sleeper.pid")
    return f"/bin/sleep 1000 &\necho $! > {pidfile}\n", pidfile


def read_pid(pidfile: str) -> int:
    with open(pidfile, encoding="ascii") as handle:
        return int(handle.read())


# ---------------------------------------------------------------------------------------------
# EnsureBase, CheckTarget: refused before anything is created


def test_missing_base_without_auto_base_path_fails_and_creates_nothing(lab):
    lab.write_config(PID_NS.replace("auto_base_path: true", "auto_base_path: false"))
    result = setup_cmd("11")
    assert result.returncode == 1
    assert f"base directory {lab.base}: must exist: " in result.stderr
    assert "does not exist (auto_base_path is off)" in result.stderr
    assert not os.path.lexists(lab.base)
    assert_nothing_left(lab, "11")


def test_base_that_is_a_symlink_is_refused_and_its_target_untouched(lab):
    lab.write_config(PID_NS)
    sentinel = os.path.join(str(lab.dir), "etc")  # stands for /etc
    os.mkdir(sentinel)
    os.symlink(sentinel, lab.base)
    result = setup_cmd("12")
    assert result.returncode == 1
    assert f"base directory {lab.base}" in result.stderr
    assert f"{lab.base} is a symlink or not a directory" in result.stderr
    assert os.listdir(sentinel) == []
    assert os.readlink(lab.base) == sentinel
    os.unlink(lab.base)
    assert_nothing_left(lab, "12")


@pytest.mark.parametrize("mode, uid", [(0o777, 0), (0o775, 0), (0o755, 65534)])
def test_base_others_can_write_to_is_refused(lab, mode, uid):
    lab.write_config(PID_NS)
    os.mkdir(lab.base)
    os.chmod(lab.base, mode)
    os.chown(lab.base, uid, 0)
    result = setup_cmd("13")
    assert result.returncode == 1
    assert "base directory must be owned by root and not group/world-writable" in result.stderr
    assert lab.base in result.stderr
    assert os.listdir(lab.base) == []
    assert_nothing_left(lab, "13")


def test_missing_mount_target_is_reported_before_anything_is_made(lab):
    missing = os.path.join(str(lab.dir), "no-such-dir")
    lab.write_config(PID_NS + f"    - path: {missing}\n")
    result = setup_cmd("14")
    assert result.returncode == 1
    assert f"check mount target {missing} is an existing directory" in result.stderr
    assert f"No such file or directory ({missing})" in result.stderr
    assert_nothing_left(lab, "14")


# ---------------------------------------------------------------------------------------------
# MakeDir, MakeNsFile: a full disk at each step, and an .ns file that already exists


@pytest.fixture
def tiny_base(lab):
    """The base path is a tmpfs with few inodes; the test fills it to the number it wants free."""
    with tmpfs(lab.base, "nr_inodes=64,size=1m,mode=0755") as base:
        yield base


def fill_inodes(base: str, leave: int) -> list[str]:
    """Create files in ``base`` until only ``leave`` inodes are free; returns their names."""
    names = []
    while os.statvfs(base).f_ffree > leave:
        names.append(f"filler{len(names)}")
        open(os.path.join(base, names[-1]), "w").close()
    assert os.statvfs(base).f_ffree == leave
    return names


# With a PID namespace, setup makes 7 inodes on the base, in this order.
INODE_STEPS = [
    "mkdir {job}",
    "create {job}/.nsctl (nsctl's mark)",
    "mkdir {job}/.ns",
    "create namespace file {job}/.ns/pid",
    "create namespace file {job}/.ns/mnt",
    "mkdir {job}/.7",
    "mkdir {job}/.7/_tmp",
]


@pytest.mark.parametrize("free", range(len(INODE_STEPS)), ids=lambda n: f"{n}-inodes-free")
def test_full_disk_at_each_step_rolls_everything_back(lab, tiny_base, free):
    lab.write_config(PID_NS)
    fillers = fill_inodes(tiny_base, free)
    job = os.path.join(tiny_base, "7")
    result = setup_cmd("7")
    assert result.returncode == 1
    step = INODE_STEPS[free].format(job=job)
    assert f"setup failed: {step}" in result.stderr
    assert "No space left on device" in result.stderr
    assert sorted(os.listdir(tiny_base)) == sorted(fillers)
    assert job_mounts(lab) == [tiny_base]
    assert lab.index_entries() == []


def test_existing_ns_file_fails_with_eexist(lab):
    lab.write_config(PID_NS)

    def twice(ops):  # a plan that makes the pid namespace file twice
        make = next(op for op in ops if isinstance(op, plan.MakeNsFile))
        return ops[: ops.index(make) + 1] + [make] + ops[ops.index(make) + 1 :]

    message = setup_fails(lab, "15", twice)
    ns_file = os.path.join(lab.base, "15", ".ns", "pid")
    assert message.startswith(f"create namespace file {ns_file} (pid): File exists ({ns_file})")
    assert_nothing_left(lab, "15")


# ---------------------------------------------------------------------------------------------
# RunScript: init_script, user_ns_script, clone_ns_script fail or hang; the group is killed


def test_failing_init_script_rolls_back_and_kills_its_background_children(lab):
    sleeper, pidfile = background_sleeper(lab)
    script = write_script(lab, "init", sleeper + "exit 3\n")
    lab.write_config(PID_NS + f"  init_script: {script}\n")
    result = setup_cmd("21")
    assert result.returncode == 1
    assert f"setup failed: init_script {script}: exit status 3" in result.stderr
    assert_dead([read_pid(pidfile)])
    assert_nothing_left(lab, "21")


def test_init_script_past_its_limit_is_killed_with_its_process_group(lab):
    sleeper, pidfile = background_sleeper(lab)
    script = write_script(lab, "init", sleeper + "/bin/sleep 1000\n")
    lab.write_config(PID_NS + f"  init_script: {script}\n")
    # init_script's limit is fixed at 10 s, as in Slurm: shorten it in the plan.
    message = setup_fails(lab, "22", lambda ops: replace_op(ops, plan.RunScript, timeout=1))
    assert message == f"init_script {script}: timed out after 1 s; process group killed"
    assert_dead([read_pid(pidfile)])
    assert_nothing_left(lab, "22")


USER_NS = PID_NS.replace("[CLONE_NEWPID]", "[CLONE_NEWPID, CLONE_NEWUSER]")


def _shorten_user_ns_script(ops):
    def edit(op):
        if isinstance(op, plan.CreateNamespaces):
            script = op.user_ns_script._replace(timeout=1)
            return op._replace(user_ns_script=script)
        return op

    return [edit(op) for op in ops]


@pytest.mark.parametrize("how", ["fails", "hangs"])
def test_user_ns_script_failing_or_hanging_undoes_the_bound_namespaces(lab, how):
    sleeper, pidfile = background_sleeper(lab)
    body = sleeper + ("exit 4\n" if how == "fails" else "/bin/sleep 1000\n")
    script = write_script(lab, "userns", body)
    lab.write_config(USER_NS + f"  user_ns_script: {script}\n")
    message = setup_fails(lab, "23", _shorten_user_ns_script)
    detail = "exit status 4" if how == "fails" else "timed out after 1 s; process group killed"
    assert message == f"user_ns_script {script}: {detail}"
    assert_dead([read_pid(pidfile)])
    assert_nothing_left(lab, "23")


@pytest.mark.parametrize("how", ["fails", "hangs"])
def test_clone_ns_script_failing_or_hanging_kills_the_holder_and_undoes_all(lab, how):
    sleeper, pidfile = background_sleeper(lab)
    body = sleeper + ("exit 5\n" if how == "fails" else "/bin/sleep 1000\n")
    script = write_script(lab, "clone", body)
    lab.write_config(PID_NS + f"  clone_ns_script: {script}\n  clone_ns_script_wait: 1\n")
    result = setup_cmd("24")
    assert result.returncode == 1
    detail = "exit status 5" if how == "fails" else "timed out after 1 s; process group killed"
    assert f"setup failed: clone_ns_script {script}: {detail}" in result.stderr
    assert_dead([read_pid(pidfile)])
    assert_nothing_left(lab, "24")


def test_a_script_that_is_not_executable_fails_setup(lab):
    script = write_script(lab, "init", "exit 0\n")
    os.chmod(script, 0o644)
    lab.write_config(PID_NS + f"  init_script: {script}\n")
    result = setup_cmd("25")
    assert result.returncode == 1
    assert f"init_script {script}: {script} is not an executable file" in result.stderr
    assert_nothing_left(lab, "25")


# ---------------------------------------------------------------------------------------------
# CreateNamespaces: the kernel refuses a mount, the namespace process dies, EINVAL retries


def test_tmpfs_option_the_kernel_would_refuse_is_caught_before_anything_is_made(lab):
    # huge=deny is a value of the shmem_enabled sysfs knob; a tmpfs mount refuses it with
    # EINVAL, so the validator rejects it up front (the kernel path: the next test).
    lab.write_config(PID_NS.replace("size=8m", "size=8m,huge=deny"))
    result = setup_cmd("31")
    assert result.returncode == 1
    assert "bad value for huge= in 'huge=deny'" in result.stderr
    assert_nothing_left(lab, "31")


def test_tmpfs_data_token_unknown_to_the_kernel(lab):
    lab.write_config(PID_NS)

    def bogus(ops):
        def edit(op):
            if isinstance(op, plan.CreateNamespaces):
                child = [
                    c._replace(data=("bogus_token=1",)) if isinstance(c, plan.TmpfsMount) else c
                    for c in op.child
                ]
                return op._replace(child=tuple(child))
            return op

        return [edit(op) for op in ops]

    message = setup_fails(lab, "32", bogus)
    assert message.startswith("namespace setup: mount a fresh tmpfs on /dev/shm")
    assert message.endswith("(nosuid,nodev,bogus_token=1): Invalid argument")
    assert_nothing_left(lab, "32")


def test_mount_target_gone_by_the_time_the_namespace_mounts_it(lab):
    missing = os.path.join(str(lab.dir), "vanished")
    lab.write_config(PID_NS + f"    - path: {missing}\n")
    # The check passed, then the directory went away: drop the check from the plan.
    message = setup_fails(
        lab, "33", lambda ops: [op for op in ops if not isinstance(op, plan.CheckTarget)]
    )
    assert message.startswith(f"namespace setup: bind-mount {lab.base}/33/.33/")
    assert f"No such file or directory ({missing})" in message
    assert_nothing_left(lab, "33")


def test_namespace_process_killed_before_it_reports(lab):
    script = write_script(lab, "userns", "kill -9 $SLURM_NS_PID\n")
    lab.write_config(USER_NS + f"  user_ns_script: {script}\n")
    result = setup_cmd("34")
    assert result.returncode == 1
    assert "setup failed: namespace child: exited without reporting (killed?)" in result.stderr
    assert_nothing_left(lab, "34")


def test_holder_killed_before_setup_finishes_fails_setup(lab):
    # The clone_ns_script kills the holder: setup must not record a job whose PID namespace
    # is already dead (nothing could join it).
    script = write_script(
        lab,
        "clone",
        "ns=$(/usr/bin/stat -L -c %i ${SLURM_NS%/mnt}/pid)\n"
        "for d in /proc/[0-9]*; do\n"
        '  [ "$(/usr/bin/stat -L -c %i $d/ns/pid 2>/dev/null)" = "$ns" ] && kill -9 ${d#/proc/}\n'
        "done\nexit 0\n",
    )
    lab.write_config(PID_NS + f"  clone_ns_script: {script}\n")
    result = setup_cmd("35")
    assert result.returncode == 1
    assert "setup failed: holder: pid " in result.stderr
    assert "died before setup finished" in result.stderr
    assert_nothing_left(lab, "35")


@pytest.fixture
def fake_mount(monkeypatch):
    """Make libc.mount fail with ``errno`` for the calls ``when`` picks (in parent and child)."""
    real = libc.mount
    calls = []

    def install(when, err: int):
        def mount(source, target, fstype=None, flags=0, data=None):
            calls.append((source, target))
            if when(source, target, fstype, int(flags)):
                raise OSError(err, os.strerror(err), target)
            return real(source, target, fstype, flags, data)

        monkeypatch.setattr(libc, "mount", mount)
        return calls

    return install


MS = libc.MS
MOUNT_CALLS = {
    # name: (which call fails, what the error names)
    "bind-self": (
        lambda s, t, f, fl: fl == MS.BIND and s == t,
        "bind-mount {job} onto itself and make it rprivate: {err} ({job})",
    ),
    "make-private": (
        lambda s, t, f, fl: s is None and t.endswith("/41"),
        "bind-mount {job} onto itself and make it rprivate: {err} ({job})",
    ),
    "bind-pid-ns": (
        lambda s, t, f, fl: str(s).endswith("/ns/pid"),
        "bind pid namespace onto {job}/.ns/pid: {err}",
    ),
    "bind-mnt-ns": (
        lambda s, t, f, fl: str(s).endswith("/ns/mnt"),
        "bind mnt namespace onto {job}/.ns/mnt: {err}",
    ),
    "propagation": (
        lambda s, t, f, fl: t == "/",
        "namespace setup: make / rprivate: {err} (/)",
    ),
    "procfs": (lambda s, t, f, fl: f == "proc", "namespace setup: mount a fresh procfs on /proc"),
    "bind-tmp": (
        lambda s, t, f, fl: fl == MS.BIND and str(s).startswith("/proc/self/fd/"),
        "namespace setup: bind-mount {job}/.41/_tmp on /tmp, then remount noexec: {err}",
    ),
    "remount-tmp": (
        lambda s, t, f, fl: bool(fl & MS.REMOUNT),
        "namespace setup: bind-mount {job}/.41/_tmp on /tmp, then remount noexec: {err}",
    ),
    "tmpfs-shm": (
        lambda s, t, f, fl: f == "tmpfs",
        "namespace setup: mount a fresh tmpfs on /dev/shm (nosuid,nodev,size=8m): {err}",
    ),
}


@pytest.mark.parametrize("call", MOUNT_CALLS)
@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOMEM])
def test_every_mount_call_failing_rolls_back(lab, fake_mount, call, err):
    lab.write_config(PID_NS)
    when, expected = MOUNT_CALLS[call]
    fake_mount(when, err)
    message = setup_fails(lab, "41")
    job = os.path.join(lab.base, "41")
    assert message.startswith(expected.format(job=job, err=os.strerror(err))), message
    assert os.strerror(err) in message
    assert_nothing_left(lab, "41")


def test_unshare_refused(lab, monkeypatch):
    lab.write_config(PID_NS)

    def refuse(flags):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(libc, "unshare", refuse)
    message = setup_fails(lab, "42")
    assert message == "create namespaces: unshare(pid,mnt): Operation not permitted"
    assert_nothing_left(lab, "42")


def test_einval_binding_the_mnt_namespace_is_retried_then_gives_up(lab, fake_mount):
    lab.write_config(PID_NS)
    calls = fake_mount(lambda s, t, f, fl: str(s).endswith("/ns/mnt"), errno.EINVAL)
    message = setup_fails(lab, "43")
    assert message == f"bind mnt namespace: EINVAL in {engine.BIND_ATTEMPTS} attempts"
    # Every attempt made a fresh namespace (a new pid) and bound its pid namespace first.
    mnt_sources = [s for s, _ in calls if str(s).endswith("/ns/mnt")]
    assert len(mnt_sources) == engine.BIND_ATTEMPTS == len(set(mnt_sources))
    assert_nothing_left(lab, "43")


def test_einval_binding_the_mnt_namespace_succeeds_on_a_later_attempt(lab, fake_mount):
    lab.write_config(PID_NS)
    refused = []

    def first_three(source, target, fstype, flags):
        if str(source).endswith("/ns/mnt") and len(refused) < 3:
            refused.append(source)
            return True
        return False

    fake_mount(first_three, errno.EINVAL)
    result = run_setup(lab, "44")
    try:
        assert result.status == "created" and len(refused) == 3
        assert engine.is_live(layout.read_index("44"))
        # The abandoned attempts left no process behind: our only live child is the holder.
        assert live_children() == [result.holder_pid]
    finally:
        assert nsctl("teardown", "--wait", "--job-id", "44").returncode == 0
    assert_nothing_left(lab, "44")


# ---------------------------------------------------------------------------------------------
# WriteIndex: the runtime directory is full


@pytest.fixture
def tiny_run_dir(lab):
    with tmpfs(lab.run, "size=64k,mode=0755") as run:
        yield run


def test_full_runtime_dir_fails_writing_the_index_and_leaves_no_partial_entry(lab, tiny_run_dir):
    lab.write_config(PID_NS)
    assert nsctl("setup", "--job-id", "51", "--user", "nobody", "--dry-run").returncode == 0
    os.makedirs(os.path.join(tiny_run_dir, "jobs"), exist_ok=True)
    os.makedirs(os.path.join(tiny_run_dir, "locks"), exist_ok=True)
    open(os.path.join(tiny_run_dir, "locks", "nsctl.lock"), "w").close()
    fd = os.open(os.path.join(tiny_run_dir, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    result = setup_cmd("51")
    assert result.returncode == 1
    index = os.path.join(tiny_run_dir, "jobs", "51")
    assert f"setup failed: write runtime index {index}: No space left on device" in result.stderr
    assert os.listdir(os.path.join(tiny_run_dir, "jobs")) == []
    assert not os.path.lexists(os.path.join(lab.base, "51"))
    assert lab.job_files() == []
    assert job_mounts(lab) == [tiny_run_dir]


@pytest.fixture
def read_only_run_dir(lab):
    with tmpfs(lab.run, "size=64k,mode=0755", libc.MS.RDONLY) as run:
        yield run


@pytest.mark.parametrize("policy, code", [("fail", 1), ("ignore", 0)])
def test_a_read_only_runtime_dir_is_a_setup_failure_under_the_fail_policy(
    lab, read_only_run_dir, policy, code
):
    # Not even the lock file can be made: the error must still be nsctl's (no traceback) and
    # --on-error ignore must still keep the node up.
    lab.write_config(PID_NS)
    result = setup_cmd("52", "--on-error", policy)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lock = os.path.join(read_only_run_dir, "locks", "nsctl.lock")
    assert "setup failed: lock " in result.stderr and "Read-only file system" in result.stderr
    assert lock in result.stderr
    result = nsctl("teardown", "--wait", "--job-id", "52")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "teardown failed: lock " in result.stderr
    assert job_mounts(lab) == [read_only_run_dir]
    assert lab.job_files() == [] and lab.index_entries() == []


# ---------------------------------------------------------------------------------------------
# Interrupted: SIGTERM to nsctl setup while each script runs


@pytest.mark.parametrize("script_key", ["init_script", "user_ns_script", "clone_ns_script"])
def test_sigterm_midway_rolls_back(lab, script_key):
    started = os.path.join(str(lab.dir), "started")
    sleeper, pidfile = background_sleeper(lab)
    script = write_script(lab, "script", sleeper + f": > {started}\n/bin/sleep 1000\n")
    config = USER_NS if script_key == "user_ns_script" else PID_NS
    lab.write_config(config + f"  {script_key}: {script}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nsctl", "setup", "--job-id", "61", "--user", "nobody"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(started) and proc.poll() is None:
            assert time.monotonic() < deadline, "the script never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "interrupted by SIGTERM" in stderr
    assert_dead([read_pid(pidfile)])
    assert_nothing_left(lab, "61")


def test_a_signal_during_the_rollback_does_not_cut_it_short(lab, monkeypatch):
    # slurmd's SIGTERM (or a second one) may arrive while a failed setup is being undone: the
    # rollback must still finish, or the holder and the mounts stay behind.
    script = write_script(lab, "clone", "exit 9\n")
    lab.write_config(PID_NS + f"  clone_ns_script: {script}\n")
    from nsctl import rmtree

    real = rmtree.remove_contents

    def signalled(target, *args):
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: right here
        return real(target, *args)

    monkeypatch.setattr(rmtree, "remove_contents", signalled)
    message = setup_fails(lab, "72")
    assert message == f"clone_ns_script {script}: exit status 9"
    assert_nothing_left(lab, "72")


# ---------------------------------------------------------------------------------------------
# Fail policy


@pytest.mark.parametrize("policy, code", [("fail", 1), ("ignore", 0)])
def test_on_error_policy_sets_the_exit_code_after_rolling_back(lab, policy, code):
    script = write_script(lab, "clone", "exit 9\n")
    lab.write_config(PID_NS + f"  clone_ns_script: {script}\n")
    result = setup_cmd("71", "--on-error", policy)
    assert result.returncode == code
    assert f"setup failed: clone_ns_script {script}: exit status 9" in result.stderr
    assert ("--on-error ignore: the job runs without private directories" in result.stderr) == (
        policy == "ignore"
    )
    assert_nothing_left(lab, "71")


# ---------------------------------------------------------------------------------------------
# Teardown's umount rule, seen from a rollback: EBUSY on an .ns file stops the deletion


def test_umount_error_other_than_einval_stops_teardown_before_deleting(lab, capsys):
    lab.write_config(PID_NS)
    assert setup_cmd("81").returncode == 0
    try:
        teardown_plan = plans(lab, "81")[1](layout.read_index("81"))
        real = libc.umount2

        def busy(target, flags=0):
            if "/.ns/" in target:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), target)
            return real(target, flags)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(libc, "umount2", busy)
            leftovers = engine.teardown(teardown_plan, job_logger("81"))
        job_dir = os.path.join(lab.base, "81")
        assert leftovers == [job_dir]
        logged = capsys.readouterr().err
        assert f"cannot unmount {job_dir}/.ns/pid: Device or resource busy" in logged
        assert f"leaving {job_dir} in place" in logged
        assert os.path.isdir(os.path.join(lab.base, "81", ".81", "_tmp"))
        assert lab.index_entries() == ["81"]
    finally:
        assert nsctl("teardown", "--wait", "--job-id", "81").returncode == 0
    assert_nothing_left(lab, "81")
