"""The job user is hostile (root, sandboxed): teardown and setup must hold against them.

The user acts through ``nsctl join --as-user`` (uid ``nobody``), as a job would: planting
symlinks to a directory standing for /etc and to another live job's files, unreadable
directories, a tree deeper than PATH_MAX, fifos, sockets and hard links in their /tmp, or
swapping a user-writable mount target for a symlink. Whatever they plant, teardown removes only
their own files and setup never mounts anywhere but the configured place. Bad input (job ids,
users) is refused before anything is created.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from sandbox import holder_pid, index_entry, proc_stat, proc_state

from nsctl import engine, layout, libc, plan
from nsctl.errors import SetupError
from nsctl.jobs import resolve_job
from nsctl.loader import load_node_config
from nsctl.log import job_logger

CONFIG = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
"""


def nsctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nsctl", *args], capture_output=True, text=True, timeout=timeout
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"{result.args[3:6]} -> {result.returncode}\n{result.stderr[-2000:]}"
    )
    return result


def setup(job_id: str) -> None:
    ok(nsctl("setup", "--job-id", job_id, "--user", "nobody"))


def as_user(job_id: str, script: str) -> subprocess.CompletedProcess:
    return ok(nsctl("join", "--job-id", job_id, "--as-user", "--", "/bin/sh", "-ec", script))


def backing(lab, job_id: str) -> str:
    return os.path.join(lab.base, job_id, f".{job_id}", "_tmp")


def snapshot(top: str) -> dict:
    """Every entry under ``top`` with its type, mode, owner and content: to prove nothing moved."""
    seen = {}
    for where, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(where, name)
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                try:
                    with open(path, "rb") as handle:
                        content = handle.read()
                except OSError:  # a namespace file: its identity is the namespace's inode
                    content = os.stat(path).st_ino
            seen[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_nlink, content)
    return seen


@pytest.fixture
def sentinel(lab):
    """A directory standing for /etc: root-owned, with files and a sub-directory."""
    top = os.path.join(str(lab.dir), "etc")
    os.makedirs(os.path.join(top, "ssl"))
    for name, text in (("passwd", "root:x:0:0::/root:/bin/sh\n"), ("ssl/key", "secret\n")):
        with open(os.path.join(top, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    return top


# ---------------------------------------------------------------------------------------------
# Teardown against what the user planted in /tmp


def test_teardown_removes_only_the_users_own_files_whatever_they_planted(lab, sentinel):
    lab.write_config(CONFIG)
    # A world-writable file outside the job, on the same filesystem as the backing dirs: the
    # only kind fs.protected_hardlinks would let a user hard-link.
    shared = os.path.join(str(lab.dir), "shared")
    with open(shared, "w", encoding="utf-8") as handle:
        handle.write("shared\n")
    os.chmod(shared, 0o666)
    setup("301")
    setup("302")
    try:
        as_user("302", "echo mine > /tmp/b-file; mkdir /tmp/b-dir; echo x > /tmp/b-dir/x")
        before = snapshot(sentinel), snapshot(backing(lab, "302"))
        # 3,000 levels: 6,000 characters, past PATH_MAX and past any recursion limit.
        deep = (
            "import os; os.chdir('/tmp/deep')\n"
            "for _ in range(3000): os.mkdir('d'); os.chdir('d')\n"
            f"os.symlink('{sentinel}', 'leaf-link')"
        )
        planted = as_user(
            "301",
            f"""
            cd /tmp
            ln -s {sentinel} etc-link
            ln -s {sentinel}/passwd passwd-link
            ln -s {backing(lab, "302")} other-job
            ln -s {os.path.join(lab.base, "302")} other-job-root
            ln -s / root-link
            ln {shared} hard-link 2>&1 || true
            mkdir -p locked/sub
            touch locked/a locked/sub/b
            chmod 000 locked/sub locked
            touch unreadable
            chmod 000 unreadable
            mkfifo fifo
            /usr/bin/python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('/tmp/sock')"
            mkdir "$(printf 'new\\nline')"
            mkdir deep
            /usr/bin/python3 -c "{deep}"
            chmod 000 /tmp
            """,
        )
        # Hard links out of the job are impossible: its /tmp is a mount of its own, and link(2)
        # never crosses mounts (even on one filesystem).
        assert "Invalid cross-device link" in planted.stdout
        ok(nsctl("teardown", "--wait", "--job-id", "301"))
        assert (snapshot(sentinel), snapshot(backing(lab, "302"))) == before
        assert os.stat(shared).st_nlink == 1
        with open(shared, encoding="utf-8") as handle:
            assert handle.read() == "shared\n"
        assert not os.path.lexists(os.path.join(lab.base, "301"))
        assert as_user("302", "cat /tmp/b-file").stdout == "mine\n"
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "302"))
    assert lab.job_files() == [] and lab.index_entries() == []


def test_a_mount_left_inside_the_job_tree_is_never_crossed(lab, sentinel):
    # A leaked bind mount in the backing dir (made here by root, as a buggy site script could):
    # teardown unmounts B/J's self-bind lazily before it deletes anything, which takes the
    # nested mount away with it: the tree is deleted, and nothing is deleted through it.
    lab.write_config(CONFIG)
    setup("303")
    before = snapshot(sentinel)
    inside = os.path.join(backing(lab, "303"), "mnt")
    os.mkdir(inside)
    libc.mount(sentinel, inside, None, libc.MS.BIND)
    result = ok(nsctl("teardown", "--wait", "--job-id", "303"))
    assert not _mounted_on(inside)
    assert snapshot(sentinel) == before
    assert "could not remove" not in result.stderr
    assert lab.job_files() == [] and lab.index_entries() == []


# ---------------------------------------------------------------------------------------------
# Setup against predictable and swapped paths


def test_world_writable_base_with_a_pre_created_job_dir_is_refused(lab, sentinel):
    # A base like /tmp (1777): the user can create B/J first, here as a symlink to /etc.
    lab.write_config(CONFIG)
    os.mkdir(lab.base)
    os.chmod(lab.base, 0o1777)
    planted = os.path.join(lab.base, "304")
    os.symlink(sentinel, planted)
    os.lchown(planted, 65534, 65534)
    before = snapshot(sentinel)
    result = nsctl("setup", "--job-id", "304", "--user", "nobody")
    assert result.returncode == 1
    assert (
        f"base directory {lab.base}: create (mode 0755) if missing: base directory must be owned "
        f"by root and not group/world-writable ({lab.base})"
    ) in result.stderr
    assert snapshot(sentinel) == before
    # Nothing is done inside a base that is not root's alone: not even removing the link.
    assert os.readlink(planted) == sentinel
    assert lab.index_entries() == []


@pytest.mark.parametrize("target", ["sentinel", "live-job"])
def test_a_stale_job_dir_that_is_a_symlink_is_not_followed(lab, sentinel, target):
    # Only root can write the base, but a stale B/J must never be followed when setup cleans up
    # after an earlier run: not into /etc, and not into another live job, whose holder would be
    # "verified" through the link's .ns/pid and killed.
    lab.write_config(CONFIG)
    os.mkdir(lab.base, 0o755)
    setup("315")
    try:
        as_user("315", "echo alive > /tmp/f")
        link_to = sentinel if target == "sentinel" else os.path.join(lab.base, "315")
        os.symlink(link_to, os.path.join(lab.base, "305"))
        before = snapshot(sentinel), snapshot(os.path.join(lab.base, "315"))
        setup("305")
        try:
            assert (snapshot(sentinel), snapshot(os.path.join(lab.base, "315"))) == before
            assert not os.path.islink(os.path.join(lab.base, "305"))
            assert as_user("315", "cat /tmp/f; ps -o comm= -p 1").stdout.startswith("alive\n")
        finally:
            ok(nsctl("teardown", "--wait", "--job-id", "305"))
        assert as_user("315", "cat /tmp/f").stdout == "alive\n"
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "315"))
    assert lab.job_files() == []


def _holder_of(lab, job_id: str) -> int:
    return holder_pid(lab.run, job_id)


@pytest.mark.parametrize("plant", ["ns-file-symlink", "ns-dir-symlink"])
@pytest.mark.parametrize("command", ["teardown", "setup"])
def test_a_user_made_job_dir_never_steers_teardown_at_another_job(lab, plant, command):
    # A base others can write to (an admin's mistake, or a base like /tmp): the user makes B/J
    # for a job id of theirs, with .ns/pid a symlink to another job's PID namespace (root may
    # stat it: the link is followed by root, not by the user) or .ns a symlink to that job's
    # .ns. Neither the Epilog nor setup's stale-run cleanup may kill that job's holder or
    # unmount its namespace files.
    lab.write_config(CONFIG)
    os.mkdir(lab.base, 0o755)
    setup("316")
    try:
        holder = _holder_of(lab, "316")
        os.chmod(lab.base, 0o1777)
        planted = os.path.join(lab.base, "317")
        os.mkdir(planted)
        if plant == "ns-file-symlink":
            os.mkdir(os.path.join(planted, ".ns"))
            os.symlink(f"/proc/{holder}/ns/pid", os.path.join(planted, ".ns", "pid"))
            owned = [planted, os.path.join(planted, ".ns"), os.path.join(planted, ".ns", "pid")]
        else:
            os.symlink(os.path.join(lab.base, "316", ".ns"), os.path.join(planted, ".ns"))
            owned = [planted, os.path.join(planted, ".ns")]
        for path in owned:
            os.lchown(path, 65534, 65534)
        extra = ("--user", "nobody") if command == "setup" else ()
        result = nsctl(command, "--job-id", "317", *extra)
        assert "Usage" not in result.stderr, result.stderr
        os.chmod(lab.base, 0o755)
        assert proc_state(holder) not in (None, "Z"), "another job's holder was killed"
        assert as_user("316", "ps -o comm= -p 1").stdout.startswith("nsctl"), "cannot join 316"
    finally:
        os.chmod(lab.base, 0o755)
        ok(nsctl("teardown", "--wait", "--job-id", "316"))
        shutil.rmtree(os.path.join(lab.base, "317"), ignore_errors=True)
    assert lab.job_files() == [] and lab.index_entries() == []


@pytest.fixture
def user_dirs(lab):
    """A per-user directory the job user owns: ``@LAB@/users/nobody/scratch``."""
    home = os.path.join(str(lab.dir), "users", "nobody")
    os.makedirs(os.path.join(home, "scratch"))
    for path in (home, os.path.join(home, "scratch")):
        os.chown(path, 65534, 65534)
    lab.write_config(
        CONFIG + "  dir_confs:\n    - path: /tmp\n    - path: @LAB@/users/%u/scratch\n"
    )
    return home


def _mounted_on(path: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return any(line.split()[4] == path for line in handle)


def test_mount_target_swapped_for_a_symlink_is_refused(lab, sentinel, user_dirs):
    scratch = os.path.join(user_dirs, "scratch")
    os.rmdir(scratch)
    os.symlink(sentinel, scratch)
    os.lchown(scratch, 65534, 65534)
    before = snapshot(sentinel)
    result = nsctl("setup", "--job-id", "306", "--user", "nobody")
    assert result.returncode == 1
    assert f"check mount target {scratch} is an existing directory" in result.stderr
    assert "a path component is a symlink or not a directory" in result.stderr
    assert snapshot(sentinel) == before and not _mounted_on(sentinel)
    assert lab.job_files() == [] and lab.index_entries() == []


def test_a_symlink_higher_up_the_mount_target_path_is_refused(lab, sentinel, user_dirs):
    # users/nobody is the user's: they replace it with a symlink to a directory of theirs
    # that holds a "scratch" symlink, or simply to /etc's parent.
    os.makedirs(os.path.join(sentinel, "scratch"))
    os.rename(user_dirs, user_dirs + ".old")
    os.symlink(sentinel, user_dirs)
    before = snapshot(sentinel)
    result = nsctl("setup", "--job-id", "307", "--user", "nobody")
    assert result.returncode == 1
    assert "a path component is a symlink or not a directory" in result.stderr
    assert snapshot(sentinel) == before and not _mounted_on(os.path.join(sentinel, "scratch"))
    assert lab.job_files() == [] and lab.index_entries() == []


def test_mount_target_swapped_after_the_check_is_still_not_followed(lab, sentinel, user_dirs):
    # The race: the check saw a directory, then the user swapped it. The namespace mounts
    # through an O_PATH fd opened with O_NOFOLLOW at every component, so the swap fails setup.
    resolved = load_node_config(lab.config, "node1", use_cache=False)
    job = resolve_job("308", None, None, "nobody")
    index = layout.index_path("308")
    the_plan = plan.plan_setup(resolved, job, index, os.environ)

    def teardown_plan(entry):
        return plan.plan_teardown(resolved, "308", index, os.environ, entry)

    scratch = os.path.join(user_dirs, "scratch")
    script = os.path.join(str(lab.dir), "swap")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(f"#!/bin/sh\n/bin/rmdir {scratch} && /bin/ln -s {sentinel} {scratch}\n")
    os.chmod(script, 0o755)
    # The swap runs as a script step after the check and right before the namespace is made.
    ops = list(the_plan.ops)
    create = next(i for i, op in enumerate(ops) if isinstance(op, plan.CreateNamespaces))
    ops.insert(create, plan.RunScript("init_script", script, (), 10))
    with pytest.raises(SetupError) as caught:
        engine.setup(the_plan._replace(ops=tuple(ops)), teardown_plan, job_logger("308"))
    assert f"on {scratch}: a path component is a symlink or not a directory ({scratch})" in str(
        caught.value
    )
    assert not _mounted_on(sentinel)
    assert lab.job_files() == [] and lab.index_entries() == []


# ---------------------------------------------------------------------------------------------
# A tampered runtime index


def _write_index(lab, job_id: str, **entry: str) -> str:
    jobs = os.path.join(lab.run, "jobs")
    os.makedirs(jobs, exist_ok=True)
    path = os.path.join(jobs, job_id)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(
            "".join(f"{k}={v}\n" for k, v in {"version": "1", "job_id": job_id, **entry}.items())
        )
    return path


def test_index_pointing_teardown_at_a_foreign_directory_is_not_followed(lab, sentinel):
    lab.write_config(CONFIG)
    before = snapshot(sentinel)
    _write_index(
        lab,
        "309",
        job_dir=sentinel,
        ns_dir=os.path.join(sentinel, ".ns"),
        dir_bases=os.path.dirname(sentinel) + "/../..",
    )
    nsctl("teardown", "--wait", "--job-id", "309")
    assert snapshot(sentinel) == before
    assert lab.index_entries() == []


def test_index_not_written_by_root_is_not_trusted(lab, sentinel):
    # Shaped like a real entry (.../J), but owned by the user: teardown must not delete there.
    lab.write_config(CONFIG)
    victim = os.path.join(sentinel, "310")
    os.mkdir(victim)
    with open(os.path.join(victim, "keep"), "w", encoding="utf-8") as handle:
        handle.write("keep\n")
    before = snapshot(sentinel)
    path = _write_index(lab, "310", job_dir=victim, ns_dir=os.path.join(victim, ".ns"))
    os.chown(path, 65534, 65534)
    result = nsctl("teardown", "--wait", "--job-id", "310")
    assert result.returncode == 1
    assert "is not trusted: not a regular file owned and writable only by root" in result.stderr
    assert snapshot(sentinel) == before
    os.unlink(path)


def test_index_naming_an_innocent_process_as_holder_never_gets_it_killed(lab):
    lab.write_config(CONFIG)
    setup("311")
    innocent = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        index = os.path.join(lab.run, "jobs", "311")
        entry = index_entry(lab.run, "311")
        start = proc_stat(innocent.pid)[19]
        entry.update(holder_pid=str(innocent.pid), holder_start=start)
        with open(index, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{k}={v}\n" for k, v in entry.items()))
        ok(nsctl("teardown", "--wait", "--job-id", "311"))
        assert innocent.poll() is None, "teardown killed a process it had not verified"
    finally:
        innocent.send_signal(signal.SIGKILL)
        innocent.wait()
    assert lab.job_files() == [] and lab.index_entries() == []


# ---------------------------------------------------------------------------------------------
# Bad input: refused before anything exists


BAD_JOB_IDS = ["../1", "-1", "1 2", "", "0", "4294967296", "+1", " 1", "1/2", "0x10", "1e3", "٣"]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
@pytest.mark.parametrize("command", ["setup", "teardown", "join"])
def test_bogus_job_ids_are_refused(lab, job_id, command):
    lab.write_config(CONFIG)
    args = ["--job-id", job_id] + (["--user", "nobody"] if command == "setup" else [])
    args += ["--", "/bin/true"] if command == "join" else []
    result = nsctl(command, *args)
    assert result.returncode == 1
    expected = "no job id" if job_id == "" else f"bad job id {job_id!r}: expected a positive"
    assert expected in result.stderr
    assert not os.path.lexists(lab.base) and not os.path.lexists(lab.run)


def test_bogus_job_id_from_the_environment_is_refused(lab, monkeypatch):
    lab.write_config(CONFIG)
    monkeypatch.setenv("SLURM_JOB_ID", "../../etc")
    result = nsctl("setup", "--user", "nobody")
    assert result.returncode == 1
    assert "bad job id '../../etc'" in result.stderr
    assert not os.path.lexists(lab.base) and not os.path.lexists(lab.run)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--user", "no-such-user-here"], "no such user: no-such-user-here"),
        (["--uid", "4000000"], "no such user: 4000000"),
        (["--user", "nobody", "--uid", "0"], "uid 0 does not belong to user nobody (65534)"),
        (["--user", "nobody", "--gid", "0"], "user nobody is not a member of group 0"),
        (["--user", "nobody", "--gid", "4000000"], "no such group: 4000000"),
        (["--user", "nobody", "--uid", "-1"], "bad uid '-1': expected a number"),
        # str.isdigit() says yes to these; int() then raised ValueError (a traceback).
        (["--user", "nobody", "--uid", "²"], "bad uid '²': expected a number"),
        (["--user", "nobody", "--gid", "٦٥٥٣٤"], "bad gid '٦٥٥٣٤': expected a number"),
        ([], "no job user"),
    ],
)
def test_missing_or_mismatched_users_are_refused(lab, options, message):
    lab.write_config(CONFIG)
    result = nsctl("setup", "--job-id", "312", *options)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.lexists(lab.base) and not os.path.lexists(lab.run)
