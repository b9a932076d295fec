"""The engine: run a setup plan for real, undo it on failure, and tear a job down.

All above (config, plan) is preparation; this is where nsctl touches the kernel. Setup is
transactional: when any step fails, the job's teardown (derived from the plan's paths, not from
what happened to succeed) removes every mount, directory, holder and index entry, and the error
names the step. Jobs are serialised per job id with a byte-range lock on one file, so parallel
Prologs and Epilogs of different jobs never wait for each other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import stat
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Optional

from . import holder, libc, plan
from .errors import SetupError, TeardownError
from .layout import NS_JOIN_ORDER, JobPaths, format_index, lock_path, read_index
from .scripts import run_script

if TYPE_CHECKING:
    from . import rmtree

CHILD_TIMEOUT = 60.0  # seconds for the namespace child to report (its mounts can hit autofs)
HOLDER_EXIT_WAIT = 5.0  # seconds to wait for a killed holder to disappear
BIND_ATTEMPTS = 8  # see _create_namespaces: EINVAL binding an mnt-ns file is retried
_O_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class _RetryBind(Exception):
    """The kernel refused to bind the new mount namespace's file (EINVAL): make it again."""


class _Interrupted(BaseException):
    """SIGTERM/SIGINT/SIGHUP during setup: roll back, then fail."""


# ---------------------------------------------------------------------------------------------
# Small helpers


@contextlib.contextmanager
def _lock(offset: int, name: str = "nsctl.lock", teardown: bool = False) -> Iterator[None]:
    """An exclusive POSIX byte-range lock; never inherited by children (the holder).

    Closing ANY descriptor of a file drops all of the process's POSIX locks on it, so a lock
    taken while another is held must be on a different file (the base lock is).
    """
    path = lock_path(name)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        # A full or read-only /run: an nsctl error, so that --on-error still decides (a raw
        # OSError would end in a traceback and exit 1, draining even a fail-open node).
        where = exc.filename or path
        if teardown:
            raise TeardownError(f"lock {path}: {exc.strerror} ({where})") from None
        raise SetupError(f"lock {path}", f"{exc.strerror} ({where})") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
        except _Interrupted as exc:  # SIGTERM while a concurrent run of this job holds the lock
            raise SetupError(f"wait for lock {path}", f"interrupted by {exc}") from None
        yield
    finally:
        os.close(fd)


def open_dir_nofollow(path: str) -> int:
    """An O_PATH fd for ``path``, refusing a symlink in ANY component (none can redirect it)."""
    parts = [p for p in path.split("/") if p]
    if ".." in parts or not path.startswith("/"):
        raise OSError(errno.EINVAL, "not a normalised absolute path", path)
    fd = os.open("/", _O_DIR)
    try:
        for part in parts:
            try:
                child = os.open(part, _O_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(
                        exc.errno, "a path component is a symlink or not a directory", path
                    ) from None
                raise OSError(exc.errno, exc.strerror, path) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _nsfs_id(path: str) -> Optional[tuple[int, int]]:
    """(dev, ino) of the namespace bound on ``path``, or None when nothing is bound there."""
    try:
        st = os.lstat(path)  # a symlink here would name another job's namespace
        nsfs_dev = os.stat("/proc/self/ns/mnt").st_dev
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_dev == nsfs_dev else None


def _proc_field(pid: int, index: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[index - 3].decode()
    except (OSError, IndexError):
        return None


def _is_ns_init(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    return line.split()[-1] == "1"
    except OSError:
        pass
    return False


def _pids_in_ns(ns_id: tuple[int, int], entry: Optional[dict]) -> list[int]:
    """Verified holders of the PID namespace ``ns_id``: PID 1 of exactly that namespace, pid > 1."""

    def verified(pid: int) -> bool:
        try:
            st = os.stat(f"/proc/{pid}/ns/pid")
        except OSError:
            return False
        # A zombie still shows its namespace, but a dead PID 1 is a dead namespace: not live.
        return (
            pid > 1
            and (st.st_dev, st.st_ino) == ns_id
            and _is_ns_init(pid)
            and _proc_field(pid, 3) not in (None, "Z", "X")
        )

    if entry and entry.get("holder_pid", "0").isdigit():
        pid = int(entry["holder_pid"])
        if pid > 1 and _proc_field(pid, 22) == entry.get("holder_start") and verified(pid):
            return [pid]
    # No (trustworthy) index entry: look for the namespace's init among all processes.
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and verified(int(name))]


def _umount_ns_file(path: str) -> None:
    try:
        libc.umount2(path, libc.MNT_DETACH | libc.UMOUNT_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise


# ---------------------------------------------------------------------------------------------
# Host-side operations


def _ensure_base(op: plan.EnsureBase) -> None:
    try:
        st = os.lstat(op.path)
    except FileNotFoundError:
        if not op.create:
            raise OSError(
                errno.ENOENT, "base directory does not exist (auto_base_path is off)", op.path
            ) from None
        with _lock(0, "base.lock"):
            old = os.umask(0o022)
            try:
                os.makedirs(op.path, mode=0o755, exist_ok=True)
            finally:
                os.umask(old)
        st = os.lstat(op.path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "base path is not a directory (or is a symlink)", op.path)
    # A base others can write to lets any user pre-create or swap the next job's directory.
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(
            errno.EPERM,
            "base directory must be owned by root and not group/world-writable",
            op.path,
        )


def _make_dir(op: plan.MakeDir) -> None:
    os.mkdir(op.path, op.mode)
    os.chmod(op.path, op.mode)  # mkdir's mode is filtered by the umask
    if op.uid != plan.ROOT or op.gid != plan.KEEP:
        os.lchown(op.path, op.uid, op.gid)


def _bind_self_private(op: plan.BindSelfPrivate) -> None:
    libc.mount(op.path, op.path, None, libc.MS.BIND)
    libc.mount(None, op.path, None, libc.MS.PRIVATE | libc.MS.REC)


def _make_ns_file(op: plan.MakeNsFile) -> None:
    os.close(
        os.open(op.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    )


def _check_target(op: plan.CheckTarget) -> None:
    os.close(open_dir_nofollow(op.path))


# ---------------------------------------------------------------------------------------------
# The namespace child


def _child_op(op: plan.ChildOp) -> None:
    if isinstance(op, plan.SetPropagation):
        if op.shared:
            libc.mount(None, "/", None, libc.MS.REC | libc.MS.SHARED)
            libc.mount(None, "/", None, libc.MS.REC | libc.MS.SLAVE)
        else:
            libc.mount(None, "/", None, libc.MS.REC | libc.MS.PRIVATE)
    elif isinstance(op, plan.MountProc):
        libc.mount("proc", "/proc", "proc", libc.MS.NOSUID | libc.MS.NODEV | libc.MS.NOEXEC)
    elif isinstance(op, plan.TmpfsMount):
        bits = sum(libc.MOUNT_FLAG_BITS[f] for f in op.flags)
        fd = open_dir_nofollow(op.target)
        try:
            libc.mount("tmpfs", f"/proc/self/fd/{fd}", "tmpfs", bits, ",".join(op.data) or None)
        finally:
            os.close(fd)
    elif isinstance(op, plan.BindMount):
        # Mount through O_PATH fds so a path swapped for a symlink after the check changes nothing.
        source, target = open_dir_nofollow(op.source), open_dir_nofollow(op.target)
        try:
            libc.mount(f"/proc/self/fd/{source}", f"/proc/self/fd/{target}", None, libc.MS.BIND)
            backing = os.fstat(source)
        finally:
            os.close(source)
            os.close(target)
        if op.flags:
            bits = sum(libc.MOUNT_FLAG_BITS[f] for f in op.flags)
            mounted = open_dir_nofollow(op.target)
            try:
                # The path is looked up again: the remount must hit the mount just made (whose
                # root is the backing dir), not a directory a user renamed into its place.
                st = os.fstat(mounted)
                if (st.st_dev, st.st_ino) != (backing.st_dev, backing.st_ino):
                    raise OSError(errno.EBUSY, "target changed under the mount", op.target)
                libc.mount(
                    None, f"/proc/self/fd/{mounted}", None, libc.MS.BIND | libc.MS.REMOUNT | bits
                )
            finally:
                os.close(mounted)


def _send(fd: int, message: str) -> None:
    os.write(fd, (message.replace("\n", " ") + "\n").encode())


def _child_main(
    op: plan.CreateNamespaces, cpu: int, go_fd: int, status_fd: int, holder_path
) -> None:
    """Runs in the forked child; every path ends in os._exit or exec."""
    flags = libc.CLONE.NEWNS
    if "pid" in op.kinds:
        flags |= libc.CLONE.NEWPID
    if "user" in op.kinds:
        flags |= libc.CLONE.NEWUSER
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    affinity = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})  # the namespace id batch is per CPU: see _create_namespaces
        libc.unshare(flags)
        os.sched_setaffinity(0, affinity)
    except OSError as exc:
        _send(status_fd, f"err unshare({','.join(op.kinds)}): {exc.strerror}")
        os._exit(1)
    if op.holder:
        worker = os.fork()  # the first child in the new PID namespace is its PID 1
        if worker:
            _send(status_fd, f"pid {worker}")
            os._exit(0)
    else:
        _send(status_fd, f"pid {os.getpid()}")
    if os.read(go_fd, 2) != b"go":
        os._exit(1)  # the parent gave up (or died): leave quietly
    for child_op in op.child:
        try:
            _child_op(child_op)
        except OSError as exc:
            # A /proc/self/fd/N path (we mount through O_PATH fds) means nothing to the reader;
            # the step's description already names the source and target.
            named = exc.filename and not str(exc.filename).startswith("/proc/self/fd/")
            where = f" ({exc.filename})" if named else ""
            _send(status_fd, f"err {child_op.describe()}: {exc.strerror}{where}")
            os._exit(1)
    _send(status_fd, "ok")
    if op.holder:
        holder.become_holder(op.job_id, holder_path)
    os._exit(0)


class _Reader:
    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise SetupError("namespace child", f"no answer within {timeout:g} s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise SetupError("namespace child", "exited without reporting (killed?)")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace")


def _kill_and_reap(pid: int) -> None:
    if pid <= 1:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _create_once(op: plan.CreateNamespaces, cpu: int, holder_path, log) -> tuple[int, str]:
    go_read, go_write = os.pipe()
    status_read, status_write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(go_write)
            os.close(status_read)
            _child_main(op, cpu, go_read, status_write, holder_path)
        finally:
            os._exit(1)
    os.close(go_read)
    os.close(status_write)
    reader = _Reader(status_read)
    worker = 0
    unreaped = {child}  # pids we may still signal: our own children, not yet reaped
    bound: list[str] = []
    try:
        first = reader.line(CHILD_TIMEOUT)
        if not first.startswith("pid "):
            raise SetupError("create namespaces", first[4:] if first.startswith("err ") else first)
        worker = int(first[4:])
        if op.holder:
            os.waitpid(child, 0)  # the worker (PID 1 inside) is now re-parented to us, a subreaper
            unreaped = {worker}
        for kind, path in op.ns_files:
            try:
                libc.mount(f"/proc/{worker}/ns/{kind}", path, None, libc.MS.BIND)
            except OSError as exc:
                if exc.errno == errno.EINVAL and kind == "mnt":
                    raise _RetryBind() from None
                raise SetupError(f"bind {kind} namespace onto {path}", exc.strerror) from None
            bound.append(path)
        if "user" in op.kinds:
            _map_user_ns(op, worker, log)
        try:
            os.write(go_write, b"go")
        except BrokenPipeError:  # killed already (e.g. by user_ns_script): say so, not EPIPE
            raise SetupError("namespace child", "exited without reporting (killed?)") from None
        answer = reader.line(CHILD_TIMEOUT)
        if answer != "ok":
            raise SetupError("namespace setup", answer[4:] if answer.startswith("err ") else answer)
        if op.holder:
            _protect_from_oom(worker, log)
            return worker, _proc_field(worker, 22) or "0"
        os.waitpid(worker, 0)
        return 0, "0"
    except BaseException:
        for path in reversed(bound):
            with contextlib.suppress(OSError):
                _umount_ns_file(path)
        for pid in unreaped:
            _kill_and_reap(pid)
        raise
    finally:
        os.close(go_write)
        os.close(status_read)


def _protect_from_oom(pid: int, log) -> None:
    """oom_score_adj -999, as Slurm gives its holder; lowering it needs CAP_SYS_RESOURCE."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as handle:
            handle.write("-999")
    except OSError as exc:
        log.warning("cannot set the holder's oom_score_adj to -999: %s", exc.strerror)


def _map_user_ns(op: plan.CreateNamespaces, worker: int, log) -> None:
    if op.user_ns_script:
        script = op.user_ns_script
        env = {**dict(script.env), "SLURM_NS_PID": str(worker)}
        result = run_script(script.name, script.path, env, script.timeout, log)
        if not result.ok:
            raise SetupError(f"user_ns_script {script.path}", result.detail)
        return
    for name in ("uid_map", "gid_map"):
        try:
            with open(f"/proc/{worker}/{name}", "w") as handle:
                handle.write("0 0 4294967295\n")
        except OSError as exc:
            raise SetupError(f"write /proc/{worker}/{name}", exc.strerror) from None


def _create_namespaces(op: plan.CreateNamespaces, holder_path, log) -> tuple[int, str]:
    """Make the namespaces, retrying a refused mnt-ns bind on another CPU.

    The kernel refuses to bind an mnt-namespace file unless that namespace is newer than the
    binder's own. Namespace ids come in per-CPU batches, so inside a nested mount namespace (a
    sandbox, a containerised slurmd) a fresh namespace can get an OLDER id and the bind fails
    with EINVAL at random. Creating it again on another CPU succeeds.
    """
    cpus = sorted(os.sched_getaffinity(0))
    for attempt in range(BIND_ATTEMPTS):
        try:
            return _create_once(op, cpus[attempt % len(cpus)], holder_path, log)
        except _RetryBind:
            log.debug("binding the mount namespace failed with EINVAL; creating it again")
    raise SetupError("bind mnt namespace", f"EINVAL in {BIND_ATTEMPTS} attempts")


# ---------------------------------------------------------------------------------------------
# Setup and teardown


class SetupResult(NamedTuple):
    status: str  # "created" or "already set up"
    holder_pid: int


def _write_index(op: plan.WriteIndex, holder_pid: int, holder_start: str) -> None:
    entry = dict(op.entry)
    entry["holder_pid"], entry["holder_start"] = str(holder_pid), holder_start
    directory = os.path.dirname(op.path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    # The TaskProlog reads the entry as the job user: a strict umask (here, or in whichever
    # nsctl command made the runtime directory first) must not close the way to it.
    for path in (os.path.dirname(directory), directory):
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode & 0o055 != 0o055:
            os.chmod(path, mode | 0o055)
    tmp = f"{op.path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(format_index(entry))
        os.chmod(tmp, 0o644)
        os.replace(tmp, op.path)
    except BaseException:
        # A full /run must not leave a half-written entry behind (the rollback removes only
        # the real name).
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def is_live(paths: JobPaths, entry: Optional[dict]) -> bool:
    """A job is fully set up when its index entry exists, its namespaces are still bound and,
    with a PID namespace, its holder is alive."""
    if not entry:
        return False
    kinds = entry.get("namespaces", "").split(",")
    if any(_nsfs_id(paths.ns_file(kind)) is None for kind in kinds):
        return False
    if "pid" in kinds:
        return bool(_pids_in_ns(_nsfs_id(paths.ns_file("pid")), entry))
    return True


def _on_signal(signum, _frame):
    raise _Interrupted(signal.Signals(signum).name)


def setup(
    the_plan: plan.Plan,
    teardown_plan: plan.TeardownPlan,
    log: logging.Logger,
    holder_path: Optional[str] = None,
) -> SetupResult:
    """Run a setup plan. On failure everything is undone and SetupError names the step."""
    job = the_plan.job
    libc.set_child_subreaper()
    old_handlers = {
        s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        with _lock(int(job.job_id)):
            entry = read_index(job.job_id)
            if is_live(the_plan.paths, entry):
                log.info("already set up; nothing to do")
                return SetupResult("already set up", int(entry.get("holder_pid", "0")))
            if entry or os.path.lexists(the_plan.paths.job_dir):
                log.warning("cleaning up what an earlier run of this job left behind")
                teardown_locked(teardown_plan, log, run_epilog=True)
            holder_pid, holder_start = 0, "0"
            step = "setup"
            try:
                for op in the_plan.ops:
                    step = op.describe().splitlines()[0]
                    log.debug("step: %s", step)
                    if isinstance(op, plan.EnsureBase):
                        _ensure_base(op)
                    elif isinstance(op, plan.CheckTarget):
                        _check_target(op)
                    elif isinstance(op, plan.MakeDir):
                        _make_dir(op)
                    elif isinstance(op, plan.BindSelfPrivate):
                        _bind_self_private(op)
                    elif isinstance(op, plan.MakeNsFile):
                        _make_ns_file(op)
                    elif isinstance(op, plan.RunScript):
                        result = run_script(op.name, op.path, dict(op.env), op.timeout, log)
                        if not result.ok:
                            raise SetupError(f"{op.name} {op.path}", result.detail)
                    elif isinstance(op, plan.CreateNamespaces):
                        holder_pid, holder_start = _create_namespaces(op, holder_path, log)
                    elif isinstance(op, plan.WriteIndex):
                        # A holder killed since (by clone_ns_script, the OOM killer, an admin)
                        # took the PID namespace with it: nothing could join this job.
                        if holder_pid and _proc_field(holder_pid, 3) in (None, "Z", "X"):
                            raise SetupError(
                                "holder", f"pid {holder_pid} died before setup finished"
                            )
                        _write_index(op, holder_pid, holder_start)
                    else:  # pragma: no cover - the plan only holds the types above
                        raise AssertionError(op)
            except BaseException as exc:
                # A (further) SIGTERM must not cut the rollback short: it is what undoes the
                # mounts and the holder. slurmd's SIGKILL after its grace time still ends us.
                for signum in old_handlers:
                    signal.signal(signum, signal.SIG_IGN)
                _rollback(teardown_plan, log)
                if isinstance(exc, SetupError):
                    raise
                if isinstance(exc, OSError):
                    where = f" ({exc.filename})" if exc.filename else ""
                    raise SetupError(step, f"{exc.strerror or exc}{where}") from None
                if isinstance(exc, _Interrupted):
                    raise SetupError(step, f"interrupted by {exc}") from None
                raise
            log.info(
                "namespaces ready (%s)", f"holder pid {holder_pid}" if holder_pid else "no holder"
            )
            return SetupResult("created", holder_pid)
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)


def _rollback(teardown_plan: plan.TeardownPlan, log) -> None:
    try:
        teardown_locked(teardown_plan, log, run_epilog=False)
    except Exception as exc:  # the original error matters more; this one is logged
        log.error("rollback incomplete: %s", exc)


def teardown(teardown_plan: plan.TeardownPlan, log: logging.Logger) -> list[str]:
    """Destroy a job's namespaces and files. Idempotent; returns what could not be removed."""
    with _lock(int(teardown_plan.job_id), teardown=True):
        return teardown_locked(teardown_plan, log, run_epilog=True)


def teardown_locked(tp: plan.TeardownPlan, log, run_epilog: bool) -> list[str]:
    from . import rmtree  # teardown only: setup needs it just to roll back

    entry = read_index(tp.job_id)
    existing = [d for d in tp.job_dirs if os.path.lexists(d)]
    if run_epilog and tp.epilog and existing:
        result = run_script(
            tp.epilog.name, tp.epilog.path, dict(tp.epilog.env), tp.epilog.timeout, log
        )
        if not result.ok:
            log.error(
                "clone_ns_epilog %s failed: %s; tearing down anyway", tp.epilog.path, result.detail
            )
    leftovers: list[str] = []
    for job_dir in existing:
        st = os.lstat(job_dir)
        if not stat.S_ISDIR(st.st_mode):
            # A symlink (or file) where B/J belongs is never entered: its .ns files, holder and
            # tree would be someone else's. Remove the link itself so setup can go on.
            leftovers += _report(rmtree.remove_tree(job_dir), log)
            continue
        if _not_ours(job_dir, st, log):
            continue
        ns_dir = os.path.join(job_dir, ".ns")
        pid_ns = _nsfs_id(os.path.join(ns_dir, "pid"))
        if pid_ns:
            for pid in _pids_in_ns(pid_ns, entry):
                log.info("killing holder pid %d", pid)
                _kill_and_wait(pid)
        for kind in NS_JOIN_ORDER:
            path = os.path.join(ns_dir, kind)
            try:
                _umount_ns_file(path)
            except OSError as exc:
                raise TeardownError(
                    f"cannot unmount {path}: {exc.strerror}; leaving {job_dir} in place"
                ) from None
        leftovers += _remove_job_dir(job_dir, log)
    for root in tp.dir_job_roots:
        with contextlib.suppress(FileNotFoundError):
            if _not_ours(root, os.lstat(root), log):
                continue
        leftovers += _report(rmtree.remove_tree(root), log)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tp.index_file)
    return leftovers


def _not_ours(path: str, st: os.stat_result, log) -> bool:
    """nsctl makes B/J and D/J root-owned: one owned by a user (who could create it only in a
    base others can write to, which setup refuses) is theirs, with .ns entries that may point
    at another job's namespaces. It is left alone, and is no leftover of ours."""
    if stat.S_ISDIR(st.st_mode) and st.st_uid != 0:
        log.warning("left %s alone: owned by uid %d, so nsctl never made it", path, st.st_uid)
        return True
    return False


def _kill_and_wait(pid: int) -> None:
    assert pid > 1, pid  # never kill(-1), never init
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + HOLDER_EXIT_WAIT
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours when setup rolls back (we are its subreaper)
        state = _proc_field(pid, 3)
        if state is None or state in ("Z", "X"):
            return
        time.sleep(0.005)


def _report(result: rmtree.Result, log) -> list[str]:
    left = []
    for failure in result.failures:
        log.error("could not remove %s: %s", failure.path, failure.error)
        left.append(failure.path)
    for path in result.skipped_mounts:
        log.error("left %s alone: it is a mount point", path)
        left.append(path)
    return left


def _remove_job_dir(job_dir: str, log) -> list[str]:
    from . import rmtree

    leftovers = _report(rmtree.remove_contents(job_dir), log)
    try:
        libc.umount2(job_dir, libc.MNT_DETACH | libc.UMOUNT_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            log.error("cannot unmount %s: %s", job_dir, exc.strerror)
            return leftovers + [job_dir]
    if not leftovers:
        leftovers = _report(rmtree.remove_tree(job_dir), log)
    return leftovers
