"""The engine: run a setup plan for real, undo it on failure, and run a teardown plan.

All above (config, plan) is preparation; this is where nsctl touches the kernel. Each plan op
type has one handler, in ``_SETUP_STEPS``, ``_CHILD_STEPS`` (the namespace's first process) and
``_TEARDOWN_STEPS``. Setup is transactional: when any step fails, the job's teardown (planned
from the config and the index, not from what happened to succeed) removes every mount,
directory, holder and index entry, and the error names the step.
Jobs are serialised per job id with a byte-range lock on one file, so parallel Prologs and
Epilogs of different jobs never wait for each other.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py makes enums, an import each Prolog pays
import errno
import gc
import os
import stat
import time

from . import fsafe, libc, plan, procfs
from .errors import InputError, SetupError, TeardownError
from .layout import (
    NS_JOIN_ORDER,
    BadIndex,
    IndexEntry,
    open_run_subdir,
    parse_trash_name,
    read_index,
    run_dir,
    trash_name,
)
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

    from . import rmtree
    from .log import Log

CHILD_TIMEOUT = 60.0  # seconds for the namespace child to report (its mounts can hit autofs)
HOLDER_EXIT_WAIT = 5.0  # seconds to wait for a killed holder to disappear
KILL_WAIT = 10.0  # seconds for a job's killed processes to disappear
BIND_ATTEMPTS = 8  # see _create_namespaces: EINVAL binding an mnt-ns file is retried
MAX_ID_BURN = 1 << 16  # see _pass_own_mount_ns: a CPU's id batch holds a few thousand ids
_NS_GET_ID = (2 << 30) | (8 << 16) | (0xB7 << 8) | 0x0D  # _IOR(NSIO, 0xd, __u64), linux/nsfs.h

if TYPE_CHECKING:
    TeardownPlanFor = Callable[[Optional[IndexEntry]], "plan.TeardownPlan"]


class _RetryBind(Exception):
    """The kernel refused to bind the new mount namespace's file (EINVAL): make it again."""


class _Interrupted(BaseException):
    """SIGTERM/SIGINT/SIGHUP during setup: roll back, then fail."""


# ---------------------------------------------------------------------------------------------
# Small helpers


class _Lock:
    """An exclusive POSIX byte-range lock at ``offset`` of a lock file; never inherited by
    children (the holder). A context manager.

    Closing ANY descriptor of a file drops all of the process's POSIX locks on it, so a lock
    taken while another is held must be on a different file.
    """

    def __init__(self, offset: int, name: str = "nsctl.lock", teardown: bool = False):
        self.offset, self.name, self.teardown = offset, name, teardown
        self.fd = -1

    def __enter__(self) -> None:
        name = self.name
        try:
            locks = open_run_subdir("locks", create=True)
            try:
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                self.fd = os.open(name, flags, 0o600, dir_fd=locks)
            finally:
                os.close(locks)
        except OSError as exc:
            # A full or read-only /run, or a runtime directory someone else can write to: an
            # nsctl error, so that --on-error still decides (a raw OSError would end in a
            # traceback).
            path = os.path.join(run_dir(), "locks", name)
            where = f" ({exc.filename})" if str(exc.filename).startswith("/") else ""
            if self.teardown:
                raise TeardownError(f"lock {path}: {exc.strerror}{where}") from None
            raise SetupError(f"lock {path}", f"{exc.strerror}{where}") from None
        try:
            os.lseek(self.fd, self.offset, os.SEEK_SET)  # lockf(3): POSIX locks from here on
            os.lockf(self.fd, os.F_LOCK, 1)
        except _Interrupted as exc:  # SIGTERM while a concurrent run of this job holds it
            os.close(self.fd)
            raise SetupError(f"wait for lock {name}", f"interrupted by {exc}") from None

    def __exit__(self, *exc_info) -> None:
        os.close(self.fd)


_lock = _Lock


def job_lock(job_id: str, teardown: bool = False):
    """The job's lock, as setup and teardown take it (for nsctl gc)."""
    return _lock(int(job_id), teardown=teardown)


# Kept under its old name: mount targets and sources are opened this way everywhere.
open_dir_nofollow = fsafe.open_dir


def _umount_ns_file(path: str) -> None:
    try:
        libc.umount2(path, libc.MNT_DETACH | libc.UMOUNT_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise


def _fd_path(fd: int, *names: str) -> str:
    return os.path.join(f"/proc/self/fd/{fd}", *names)


# ---------------------------------------------------------------------------------------------
# Host-side setup steps


class _SetupState:
    """What one setup run carries from step to step."""

    def __init__(self, log: Log, program_fd: Optional[int]):
        self.log = log
        self.program_fd = program_fd
        self.step = "setup"
        self.holder_pid = 0
        self.holder_start = "0"


def _ensure_base(op: plan.EnsureBase, state: _SetupState) -> None:
    # A base an ancestor of which others can write lets a user swap it for a symlink; one others
    # can write lets any user pre-create or swap the next job's directory.
    try:
        os.close(fsafe.trusted_dir(op.path, "base directory", 0o755 if op.create else None))
    except FileNotFoundError:
        raise OSError(
            errno.ENOENT, "base directory does not exist (auto_base_path is off)", op.path
        ) from None


def _make_dir(op: plan.MakeDir, state: _SetupState) -> None:
    os.mkdir(op.path, op.mode)
    os.chmod(op.path, op.mode)  # mkdir's mode is filtered by the umask
    if op.uid != plan.ROOT or op.gid != plan.KEEP:
        os.lchown(op.path, op.uid, op.gid)


def _bind_self_private(op: plan.BindSelfPrivate, state: _SetupState) -> None:
    libc.mount(op.path, op.path, None, libc.MS.BIND)
    libc.mount(None, op.path, None, libc.MS.PRIVATE | libc.MS.REC)


def _make_ns_file(op: plan.MakeNsFile, state: _SetupState) -> None:
    # 0700, as Slurm's namespace/linux makes them (the mode of a mount point nobody reads)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(op.path, flags, 0o700))


def _make_marker(op: plan.MakeMarker, state: _SetupState) -> None:
    os.close(
        os.open(op.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    )


def run_script(name: str, path: str, env: dict, timeout: float, log: Log):
    """scripts.run_script, its module loaded only for a job that has a script."""
    from . import scripts

    return scripts.run_script(name, path, env, timeout, log)


def _check_target(op: plan.CheckTarget, state: _SetupState) -> None:
    os.close(open_dir_nofollow(op.path))


def _run_setup_script(op: plan.RunScript, state: _SetupState) -> None:
    result = run_script(op.name, op.path, dict(op.env), op.timeout, state.log)
    if not result.ok:
        raise SetupError(f"{op.name} {op.path}", result.detail)


def _create_namespaces_step(op: plan.CreateNamespaces, state: _SetupState) -> None:
    state.holder_pid, state.holder_start = _create_namespaces(op, state.program_fd, state.log)


def _write_index(op: plan.WriteIndex, state: _SetupState) -> None:
    # A holder killed since (by clone_ns_script, the OOM killer, an admin) took the PID
    # namespace with it: nothing could join this job.
    if state.holder_pid and not procfs.alive(state.holder_pid):
        raise SetupError("holder", f"pid {state.holder_pid} died before setup finished")
    entry = op.entry._replace(
        holder_pid=state.holder_pid,
        holder_start=state.holder_start,
        job_dir_id=_dir_id(op.entry.job_dir),
        dir_root_ids=tuple(_dir_id(root) for root in op.entry.dir_roots),
    )
    name = entry.job_id
    tmp = f"{name}.tmp.{os.getpid()}"
    jobs = open_run_subdir("jobs", create=True)
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=jobs,
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(entry.format())
                os.fchmod(handle.fileno(), 0o644)
            os.replace(tmp, name, src_dir_fd=jobs, dst_dir_fd=jobs)
        except BaseException:
            # A full /run must not leave a half-written entry behind.
            try:
                os.unlink(tmp, dir_fd=jobs)
            except OSError:
                pass
            raise
    finally:
        os.close(jobs)


def _dir_id(path: str) -> str:
    st = os.lstat(path)  # made by this setup, inside a base checked to be root's alone
    return f"{st.st_dev}:{st.st_ino}"


def _remove_temp_index_files(job_id: str) -> None:
    """``jobs/J.tmp.PID`` that a setup killed at the rename left behind."""
    try:
        jobs = open_run_subdir("jobs", create=False)
    except FileNotFoundError:
        return
    try:
        for name in os.listdir(jobs):
            if name.startswith(f"{job_id}.tmp."):
                try:
                    os.unlink(name, dir_fd=jobs)
                except FileNotFoundError:
                    pass
    finally:
        os.close(jobs)


_SETUP_STEPS: dict[type, Callable] = {
    plan.EnsureBase: _ensure_base,
    plan.CheckTarget: _check_target,
    plan.MakeDir: _make_dir,
    plan.BindSelfPrivate: _bind_self_private,
    plan.MakeNsFile: _make_ns_file,
    plan.MakeMarker: _make_marker,
    plan.RunScript: _run_setup_script,
    plan.CreateNamespaces: _create_namespaces_step,
    plan.WriteIndex: _write_index,
}


# ---------------------------------------------------------------------------------------------
# The namespace child


def _set_propagation(op: plan.SetPropagation) -> None:
    if op.shared:
        libc.mount(None, "/", None, libc.MS.REC | libc.MS.SHARED)
        libc.mount(None, "/", None, libc.MS.REC | libc.MS.SLAVE)
    else:
        libc.mount(None, "/", None, libc.MS.REC | libc.MS.PRIVATE)


def _mount_proc(op: plan.MountProc) -> None:
    libc.mount("proc", "/proc", "proc", libc.MS.NOSUID | libc.MS.NODEV | libc.MS.NOEXEC)


def _tmpfs_mount(op: plan.TmpfsMount) -> None:
    if op.replace:
        # namespace/tmpfs's /dev/shm: the node's tmpfs goes first (only in this namespace:
        # / is private here). Not following a symlink, like every target nsctl mounts on.
        try:
            libc.umount2(op.target, libc.UMOUNT_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: nothing is mounted there
                raise
    bits = sum(libc.MOUNT_FLAG_BITS[f] for f in op.flags)
    fd = open_dir_nofollow(op.target)
    try:
        libc.mount("tmpfs", _fd_path(fd), "tmpfs", bits, ",".join(op.data) or None)
    finally:
        os.close(fd)


def _bind_mount(op: plan.BindMount) -> None:
    # Mount through O_PATH fds so a path swapped for a symlink after the check changes nothing.
    source, target = open_dir_nofollow(op.source), open_dir_nofollow(op.target)
    try:
        libc.mount(_fd_path(source), _fd_path(target), None, libc.MS.BIND)
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
            libc.mount(None, _fd_path(mounted), None, libc.MS.BIND | libc.MS.REMOUNT | bits)
        finally:
            os.close(mounted)


def _hide_job_dir(op: plan.HideJobDir) -> None:
    # B/J's self-bind, copied into the new namespace; the bind mounts made from it stay.
    libc.umount2(op.path, libc.MNT_DETACH | libc.UMOUNT_NOFOLLOW)


# The ops the namespace's first process runs, after the parent released it.
_CHILD_STEPS: dict[type, Callable] = {
    plan.SetPropagation: _set_propagation,
    plan.MountProc: _mount_proc,
    plan.TmpfsMount: _tmpfs_mount,
    plan.BindMount: _bind_mount,
    plan.HideJobDir: _hide_job_dir,
}


def _child_op(op: plan.ChildOp) -> None:
    _CHILD_STEPS[type(op)](op)


def _send(fd: int, message: str) -> None:
    os.write(fd, (message.replace("\n", " ") + "\n").encode())


def _ns_number(path: str) -> Optional[int]:
    """The kernel's id of a namespace (NS_GET_ID, Linux 6.x), None where it has none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return libc.ioctl_u64(fd, _NS_GET_ID)
    except OSError:
        return None
    finally:
        os.close(fd)


def _pass_own_mount_ns() -> None:
    """Make sure the next namespace made on this CPU gets an id above our own mount namespace's.

    The kernel refuses to bind a mount-namespace file unless that namespace is newer (has a
    higher id) than the binder's own. Ids come from one counter in per-CPU batches, so inside a
    nested mount namespace (a sandbox, a containerised slurmd) this CPU's batch can lie below
    our namespace's id, and every namespace made here would be refused. Throwaway UTS
    namespaces use up the batch until its ids pass ours (or the CPU takes a fresh, higher
    batch); then we return to our own UTS namespace. This works whatever the affinity mask: the
    caller stays on one CPU until it has made the job's namespaces.
    """
    own = _ns_number("/proc/self/ns/mnt")
    if own is None:
        return  # no ids to compare: such kernels hand them out in order
    uts = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _ in range(MAX_ID_BURN):
            libc.unshare(libc.CLONE.NEWUTS)
            if (_ns_number("/proc/self/ns/uts") or 0) > own:
                break
    finally:
        try:
            libc.setns(uts, libc.CLONE.NEWUTS)
        finally:
            os.close(uts)


class _OnOneCpu:
    """Stay on the CPU we run on (always in the affinity mask) for the block's duration."""

    def __enter__(self) -> None:
        try:
            self.affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {libc.sched_getcpu()})
        except OSError:
            self.affinity = None  # not allowed to pin (some containers): the bind retry helps

    def __exit__(self, *exc_info) -> None:
        if self.affinity is not None:
            try:
                os.sched_setaffinity(0, self.affinity)
            except OSError:
                pass


def _unshare_past_own_mount_ns(flags: int) -> None:
    """unshare(flags), on one CPU, after burning ids past this process's own mount namespace
    (see _pass_own_mount_ns; best effort: the bind retry is the fallback)."""
    with _OnOneCpu():
        try:
            _pass_own_mount_ns()
        except OSError:
            pass
        libc.unshare(flags)


def _child_main(
    op: plan.CreateNamespaces, go_fd: int, status_fd: int, program_fd: Optional[int]
) -> None:
    """Runs in the forked child; every path ends in os._exit, an exec or the holder's loop."""
    flags = libc.CLONE.NEWNS
    if "pid" in op.kinds:
        flags |= libc.CLONE.NEWPID
    if "user" in op.kinds:
        flags |= libc.CLONE.NEWUSER
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        _unshare_past_own_mount_ns(flags)
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
            _send(status_fd, f"err {_step_failure(child_op, exc)}")
            os._exit(1)
    _send(status_fd, "ok")
    if op.holder:
        from . import holder  # loaded by _create_once, before the mounts

        os.close(go_fd)
        holder.become_holder(op.job_id, status_fd, program_fd)
    os._exit(0)


class _Reader:
    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def line(self, timeout: float, eof_ok: bool = False) -> Optional[str]:
        """The next line; at end of file None when ``eof_ok``, else a SetupError."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not libc.readable(self.fd, left):
                raise SetupError("namespace child", f"no answer within {timeout:g} s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                if eof_ok and not self.buffer:
                    return None
                raise SetupError("namespace child", "exited without reporting (killed?)")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace")


def _kill_and_reap(pid: int) -> None:
    if pid <= 1:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _error_of(line: str) -> str:
    return line[4:] if line.startswith("err ") else line


def _step_failure(child_op: plan.ChildOp, exc: OSError) -> str:
    # A /proc/self/fd/N path (we mount through O_PATH fds) means nothing to the reader; the
    # step's description already names the source and target.
    named = exc.filename and not str(exc.filename).startswith("/proc/self/fd/")
    where = f" ({exc.filename})" if named else ""
    return f"{child_op.describe()}: {exc.strerror}{where}"


def _create_here(op: plan.CreateNamespaces) -> None:
    """A job with a mount namespace alone: this process makes it, mounts in it and comes back
    to its own, then binds it; no child to fork and wait for (about 1 ms of every Prolog)."""
    (path,) = [path for kind, path in op.ns_files if kind == "mnt"]
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    job = -1
    try:
        try:
            _unshare_past_own_mount_ns(libc.CLONE.NEWNS)
        except OSError as exc:
            raise SetupError("unshare(mnt)", exc.strerror) from None
        try:
            for child_op in op.child:
                try:
                    _child_op(child_op)
                except OSError as exc:
                    raise SetupError("namespace setup", _step_failure(child_op, exc)) from None
            job = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            # Back before anything else happens (or is rolled back); the job's namespace,
            # unless bound below, goes with the last descriptor of it.
            try:
                libc.setns(home, libc.CLONE.NEWNS)
            except OSError as exc:
                raise SetupError("return to the node's mount namespace", exc.strerror) from None
        try:
            libc.mount(_fd_path(job), path, None, libc.MS.BIND)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise _RetryBind() from None
            raise SetupError(f"bind mnt namespace onto {path}", exc.strerror) from None
    finally:
        os.close(home)
        if job >= 0:
            os.close(job)


def _create_once(op: plan.CreateNamespaces, program_fd: Optional[int], log) -> tuple[int, str]:
    if op.kinds == ("mnt",):
        _create_here(op)
        return 0, "0"
    if op.holder:
        # Loaded here, for the child: after its mounts nsctl's own files may be out of its
        # sight (a venv under /tmp), and only jobs with a holder pay for the module.
        from . import holder  # noqa: F401
    go_read, go_write = os.pipe()
    status_read, status_write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(go_write)
            os.close(status_read)
            _child_main(op, go_read, status_write, program_fd)
        finally:
            os._exit(1)
    os.close(go_read)
    os.close(status_write)
    reader = _Reader(status_read)
    worker = 0
    unreaped = {child}  # pids we may still signal: our own children, not yet reaped
    bound: list[str] = []
    try:
        first = reader.line(CHILD_TIMEOUT) or ""
        if not first.startswith("pid "):
            raise SetupError("create namespaces", _error_of(first))
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
            raise SetupError("namespace setup", _error_of(answer or ""))
        if not op.holder:
            os.waitpid(worker, 0)
            return 0, "0"
        # The holder closes the pipe once it runs (an exec closes it on success); an exec that
        # failed says why. Either way nothing is "ready" about a holder that is not running.
        last = reader.line(CHILD_TIMEOUT, eof_ok=True)
        if last is not None:
            raise SetupError("holder", _error_of(last))
        if not procfs.alive(worker):
            raise SetupError("holder", f"pid {worker} exited as soon as it started")
        _protect_from_oom(worker, log)
        return worker, procfs.start_time(worker) or "0"
    except BaseException:
        for path in reversed(bound):
            try:
                _umount_ns_file(path)
            except OSError:
                pass
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


def _create_namespaces(
    op: plan.CreateNamespaces, program_fd: Optional[int], log
) -> tuple[int, str]:
    """Make the namespaces; a refused mnt-ns bind (see _pass_own_mount_ns) is tried again."""
    for _ in range(BIND_ATTEMPTS):
        try:
            return _create_once(op, program_fd, log)
        except _RetryBind:
            log.debug("binding the mount namespace failed with EINVAL; creating it again")
    raise SetupError("bind mnt namespace", f"EINVAL in {BIND_ATTEMPTS} attempts")


def open_holder_program(path: str) -> int:
    """The holder program, opened now: before any private mount can hide where it lives.

    It must be a root-owned executable that only root can write, in a directory only root can
    change (fsafe's rules), or a user could swap it for their own program run as root.
    """
    directory, name = os.path.split(path)
    try:
        parent = fsafe.trusted_dir(directory, "the holder's directory")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
    except OSError as exc:
        raise SetupError(f"open holder {path}", str(exc)) from None
    st = os.fstat(fd)
    if (
        not stat.S_ISREG(st.st_mode)
        or st.st_uid != 0
        or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        or not st.st_mode & stat.S_IXUSR
    ):
        os.close(fd)
        raise SetupError(
            f"open holder {path}", "must be an executable owned by root and writable only by root"
        )
    return fd


# ---------------------------------------------------------------------------------------------
# Setup


class SetupResult(Record):
    status: str  # "created" or "already set up"
    holder_pid: int


def is_live(entry: Optional[IndexEntry]) -> bool:
    """A job is fully set up when its index entry exists, its namespaces are still bound and,
    with a PID namespace, its holder is alive."""
    if entry is None:
        return False
    ns_files = {kind: os.path.join(entry.ns_dir, kind) for kind in entry.namespaces}
    if any(procfs.ns_id(path) is None for path in ns_files.values()):
        return False
    if "pid" in ns_files:
        pid_ns = procfs.ns_id(ns_files["pid"])
        return bool(pid_ns and procfs.holders(pid_ns, entry.holder_pid, entry.holder_start))
    return True


def _difference(entry: IndexEntry, wanted: IndexEntry) -> Optional[str]:
    """What makes a live job not the one this setup is for (a requeue under another owner)."""
    for field in ("uid", "gid", "user", "namespaces", "job_dir", "dirs", "dir_bases"):
        have, want = getattr(entry, field), getattr(wanted, field)
        if have != want:
            show = (lambda v: ",".join(v)) if isinstance(want, tuple) else str
            return f"{field} is {show(have)}, not {show(want)}"
    return None


_SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"}


def _on_signal(signum, _frame):
    raise _Interrupted(_SIGNAL_NAMES.get(signum, f"signal {signum}"))


def setup(
    the_plan: plan.Plan,
    teardown_plan_for: TeardownPlanFor,
    log: Log,
    holder_path: Optional[str] = None,
) -> SetupResult:
    """Run a setup plan. On failure everything is undone and SetupError names the step.

    ``teardown_plan_for(entry)`` plans the teardown of this job given its current index entry:
    used to clean what an earlier run left, and to roll back.
    """
    job = the_plan.job
    libc.set_child_subreaper()
    old_handlers = {
        s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    state = _SetupState(log, None)
    try:
        if holder_path:
            state.program_fd = open_holder_program(holder_path)
        with _lock(int(job.job_id)):
            return _setup_locked(the_plan, teardown_plan_for, state, old_handlers)
    except (OSError, _Interrupted) as exc:
        if isinstance(exc, _Interrupted):
            raise SetupError(state.step, f"interrupted by {exc}") from None
        where = f" ({exc.filename})" if exc.filename else ""
        raise SetupError(state.step, f"{exc.strerror or exc}{where}") from None
    finally:
        if state.program_fd is not None:
            os.close(state.program_fd)
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)


def _run_steps(ops, state: _SetupState) -> None:
    for op in ops:
        state.step = op.describe().splitlines()[0]
        state.log.debug("step: %s", state.step)
        _SETUP_STEPS[type(op)](op, state)


def _setup_locked(the_plan, teardown_plan_for, state: _SetupState, handlers) -> SetupResult:
    log, job_id = state.log, the_plan.job.job_id
    # The bases are checked first: nothing is done inside a base before it is known to be
    # root's alone, not even cleaning what an earlier run left there.
    checks = 0
    while isinstance(the_plan.ops[checks], plan.EnsureBase):
        checks += 1
    _run_steps(the_plan.ops[:checks], state)
    state.step = "clean up an earlier run"
    _remove_temp_index_files(job_id)
    try:
        entry = read_index(job_id)
    except BadIndex as exc:  # steers nothing: the config says where to clean
        log.error("%s; ignoring it", exc)
        entry = None
    except InputError as exc:
        raise SetupError("read runtime index", str(exc)) from None
    if is_live(entry):
        wanted = next(op.entry for op in the_plan.ops if isinstance(op, plan.WriteIndex))
        difference = _difference(entry, wanted)
        if difference is None:
            log.info("already set up; nothing to do")
            return SetupResult("already set up", entry.holder_pid)
        log.warning(
            "a live namespace of this job id does not match this job (%s): tearing it down "
            "and building the job again",
            difference,
        )
    if entry or os.path.lexists(the_plan.paths.job_dir):
        log.warning("cleaning up what an earlier run of this job left behind")
        leftovers = teardown_locked(teardown_plan_for(entry), log, run_epilog=True)
        if leftovers:
            raise SetupError(state.step, f"left behind: {', '.join(leftovers)}")
    rollback = teardown_plan_for(None)
    try:
        _run_steps(the_plan.ops[checks:], state)
    except BaseException:
        # A (further) SIGTERM must not cut the rollback short: it is what undoes the mounts
        # and the holder. slurmd's SIGKILL after its grace time still ends us.
        for signum in handlers:
            signal.signal(signum, signal.SIG_IGN)
        _rollback(rollback, log)
        raise
    holder_pid = state.holder_pid
    log.info("namespaces ready (%s)", f"holder pid {holder_pid}" if holder_pid else "no holder")
    return SetupResult("created", holder_pid)


def _rollback(teardown_plan: plan.TeardownPlan, log) -> None:
    try:
        teardown_locked(teardown_plan, log, run_epilog=False)
    except Exception as exc:  # the original error matters more; this one is logged
        log.error("rollback incomplete: %s", exc)


# ---------------------------------------------------------------------------------------------
# Teardown


class _JobDir(Record):
    """A directory teardown may act on: opened from a trusted parent, checked to be nsctl's."""

    path: str
    parent: int  # fd of B (or D)
    name: str  # J
    fd: int  # O_RDONLY fd of B/J itself
    ident: str  # "dev:ino"


class _TeardownState:
    def __init__(self, tp: plan.TeardownPlan, log, run_epilog: bool):
        self.plan = tp
        self.log = log
        self.run_epilog = run_epilog
        self.dirs: dict[str, Optional[_JobDir]] = {}
        self.unreachable: set[str] = set()  # job dirs that exist but must not be touched
        self.pid_ns: set[str] = set()  # job dirs whose PID namespace holder was killed
        self.leftovers: list[str] = []
        self.moved: list[str] = []  # trees moved aside, to delete
        self.tmpfs: list[tuple[int, tuple[str, ...]]] = []  # (mnt ns fd, tmpfs dirs) to measure
        self.strays: list[tuple[int, str]] = []  # (mnt ns fd, B/J) whose processes to kill
        self.afterwards: Optional[Callable[[], object]] = None  # run by the deleter, at the end

    def left(self, path: str, message: str) -> None:
        """``path`` stays behind; ``message`` (which names it) says why."""
        self.log.error("%s", message)
        self.leftovers.append(path)

    def close(self) -> None:
        for job_dir in self.dirs.values():
            if job_dir:
                os.close(job_dir.fd)
                os.close(job_dir.parent)
        for fd, _ in self.tmpfs + self.strays:
            os.close(fd)
        self.tmpfs, self.strays = [], []


def _open_owned(path: str, expected_id: str, what: str, state: _TeardownState) -> Optional[_JobDir]:
    """B/J (or D/J) for teardown, or None when there is nothing of nsctl's to act on.

    The parent is reached from / without a symlink and must be root's alone (fsafe); B/J must be
    a root-owned directory and, when the index recorded one, the very directory setup made.
    """
    parent_path, name = os.path.split(path)
    try:
        parent = fsafe.trusted_dir(parent_path, what)
    except FileNotFoundError:
        return None
    except OSError as exc:
        state.unreachable.add(path)
        state.left(path, f"left {path} alone: {exc.strerror}")
        return None
    try:
        found = _open_child(parent, name, path, expected_id, state)
    except OSError as exc:
        state.unreachable.add(path)
        state.left(path, f"left {path} alone: {exc.strerror}")
        found = None
    if found is None:
        os.close(parent)
    return found


def _open_child(
    parent: int, name: str, path: str, expected_id: str, state: _TeardownState
) -> Optional[_JobDir]:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        # A symlink (or file) where B/J belongs is never entered: its .ns files, holder and
        # tree would be someone else's. Remove the link itself so setup can go on.
        os.unlink(name, dir_fd=parent)
        return None
    if st.st_uid != 0:
        # nsctl makes B/J and D/J root-owned: one owned by a user (who could create it only in
        # a base others can write to, which setup refuses) is theirs, with .ns entries that may
        # point at another job's namespaces. It is no leftover of ours.
        state.log.warning("left %s alone: owned by uid %d, so nsctl never made it", path, st.st_uid)
        return None
    ident = f"{st.st_dev}:{st.st_ino}"
    if expected_id and ident != expected_id:
        state.unreachable.add(path)
        state.left(
            path,
            f"left {path} alone: it is not the directory setup made (it is {ident}; the index "
            f"recorded {expected_id})",
        )
        return None
    fd = os.open(name, fsafe.O_READ_DIR, dir_fd=parent)
    if fsafe.identity(fd) != ident:  # replaced between the stat and the open
        os.close(fd)
        state.unreachable.add(path)
        state.left(path, f"left {path} alone: it changed while teardown opened it")
        return None
    return _JobDir(path, parent, name, fd, ident)


def _td_epilog(op: plan.RunScript, state: _TeardownState) -> None:
    if not state.run_epilog or not any(os.path.lexists(d) for d in state.plan.job_dirs):
        return
    result = run_script(op.name, op.path, dict(op.env), op.timeout, state.log)
    if not result.ok:
        state.log.error(
            "clone_ns_epilog %s failed: %s; tearing down anyway", op.path, result.detail
        )


def _td_open(op: plan.OpenJobDir, state: _TeardownState) -> None:
    state.dirs[op.path] = _open_owned(op.path, op.expected_id, "base directory", state)


def _td_kill_holder(op: plan.KillHolder, state: _TeardownState) -> None:
    job_dir = state.dirs.get(op.job_dir)
    if job_dir is None:
        # B/J cannot be reached (it was swapped, or its base made unsafe): the holder the index
        # names is still killed, known by its pid and start time, so the job's PID namespace
        # does not outlive its Epilog.
        recorded = op.pid > 1 and procfs.start_time(op.pid) == op.start
        if op.job_dir in state.unreachable and recorded and procfs.is_ns_init(op.pid):
            state.log.info("killing holder pid %d", op.pid)
            _kill_and_wait(op.pid, HOLDER_EXIT_WAIT)
        return
    pid_ns = procfs.ns_id(_fd_path(job_dir.fd, ".ns", "pid"))
    if pid_ns is None:
        return
    state.pid_ns.add(op.job_dir)
    for pid in procfs.holders(pid_ns, op.pid, op.start):
        state.log.info("killing holder pid %d", pid)
        if not _kill_and_wait(pid, HOLDER_EXIT_WAIT):
            state.left(op.job_dir, f"holder pid {pid} of {op.job_dir} still alive after SIGKILL")


def _td_kill_processes(op: plan.KillJobProcesses, state: _TeardownState) -> None:
    """A job without a PID namespace has no init whose death takes its processes along: a
    daemon that escaped Slurm's process tracking would keep the mount namespace (and its
    /dev/shm) alive and keep writing while its files are deleted."""
    job_dir = state.dirs.get(op.job_dir)
    if job_dir is None or op.job_dir in state.pid_ns:
        return
    ns_file = _fd_path(job_dir.fd, ".ns", "mnt")
    mnt_ns = procfs.ns_id(ns_file)
    if mnt_ns is None:
        return
    if not op.now:
        # A scan of every process costs the Epilog ~1 ms per 500 of them: the deleter does it.
        # Its descriptor keeps the namespace, and so its id, from being freed and reused.
        try:
            state.strays.append((os.open(ns_file, os.O_RDONLY | os.O_CLOEXEC), op.job_dir))
        except OSError:
            pass
        return
    _kill_in_mount_ns(mnt_ns, op.job_dir, state)


def _kill_in_mount_ns(mnt_ns: procfs.NsId, job_dir: str, state: _TeardownState) -> None:
    deadline = time.monotonic() + KILL_WAIT
    killed: set[int] = set()
    while True:
        pids = procfs.in_mount_ns(mnt_ns)
        if not pids:
            break
        if time.monotonic() > deadline:
            state.left(
                job_dir,
                f"processes {sorted(pids)} in the mount namespace of {job_dir} did not die "
                "after SIGKILL",
            )
            return
        for pid in pids:
            if pid not in killed:
                state.log.info("killing pid %d, still in the job's mount namespace", pid)
                killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, os.WNOHANG)  # ours when setup rolls back
            except ChildProcessError:
                pass
        time.sleep(0.005)


def _td_unmount_ns(op: plan.UnmountNsFiles, state: _TeardownState) -> None:
    job_dir = state.dirs.get(op.job_dir)
    if job_dir is None:
        return
    for kind in NS_JOIN_ORDER:
        try:
            _umount_ns_file(_fd_path(job_dir.fd, ".ns", kind))
        except OSError as exc:
            # Deleting past a still-mounted namespace file fails anyway; leave the tree whole.
            state.left(
                op.job_dir,
                f"cannot unmount {op.job_dir}/.ns/{kind}: {exc.strerror}; leaving {op.job_dir} "
                "in place",
            )
            state.dirs[op.job_dir] = None
            os.close(job_dir.fd)
            os.close(job_dir.parent)
            return


def _td_measure_tmpfs(op: plan.MeasureTmpfs, state: _TeardownState) -> None:
    """Keep the job's mount namespace (its tmpfs dirs) open for the deleter to measure: the
    namespace lives on while a descriptor of it is open, after .ns/mnt is unmounted."""
    job_dir = state.dirs.get(op.job_dir)
    if job_dir is None:
        return
    try:
        fd = os.open(_fd_path(job_dir.fd, ".ns", "mnt"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    state.tmpfs.append((fd, op.targets))


def tmpfs_usage(mnt_ns: str, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(bytes, files) in use on each tmpfs target in a mount namespace, read by a child inside
    it (a tmpfs has no backing directory: only its superblock knows)."""
    try:
        ns = os.open(mnt_ns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        return _tmpfs_usage_of(ns, targets)
    finally:
        os.close(ns)


def _tmpfs_usage_of(ns: int, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    read, write = os.pipe()
    try:
        child = os.fork()
        if child == 0:
            try:
                os.close(read)
                libc.setns(ns, libc.CLONE.NEWNS)
                for target in targets:
                    try:
                        st = os.statvfs(target)
                        used = (st.f_blocks - st.f_bfree) * st.f_frsize
                        files = st.f_files - st.f_ffree - 1  # not its root directory
                        os.write(write, f"{used} {files} {target}\n".encode())
                    except OSError:
                        pass
            finally:
                os._exit(0)
        os.close(write)
        write = -1
        data = b""
        while True:
            chunk = os.read(read, 65536)
            if not chunk:
                break
            data += chunk
        os.waitpid(child, 0)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    usage = {}
    for line in data.decode(errors="replace").splitlines():
        used, files, target = line.split(" ", 2)
        usage[target] = (int(used), int(files))
    return usage


def _td_remove_job_dir(op: plan.RemoveJobDir, state: _TeardownState) -> None:
    job_dir = state.dirs.get(op.job_dir)
    if job_dir is None:
        return
    # The lazy unmount of B/J's self-bind also takes away whatever is still mounted inside it.
    try:
        libc.umount2(_fd_path(job_dir.parent, job_dir.name), libc.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            state.left(job_dir.path, f"cannot unmount {job_dir.path}: {exc.strerror}")
            return
    _move_aside(job_dir, state)


def _td_remove_dir_root(op: plan.RemoveDirRoot, state: _TeardownState) -> None:
    root = _open_owned(op.path, op.expected_id, "dir_confs base directory", state)
    if root is not None:
        try:
            _move_aside(root, state)
        finally:
            os.close(root.fd)
            os.close(root.parent)


def _move_aside(job_dir: _JobDir, state: _TeardownState) -> None:
    """Rename B/J (or D/J) to a name no job id can take: the id is free at once (a requeued job
    can start), and the deletion can take as long as it takes."""
    moved = trash_name(state.plan.job_id, int(job_dir.ident.split(":")[1]))
    try:
        os.rename(job_dir.name, moved, src_dir_fd=job_dir.parent, dst_dir_fd=job_dir.parent)
    except OSError as exc:
        state.left(job_dir.path, f"could not move {job_dir.path} aside: {exc.strerror}")
        return
    state.moved.append(os.path.join(os.path.dirname(job_dir.path), moved))


def _td_delete_moved(op: plan.DeleteMovedAside, state: _TeardownState) -> None:
    moved, tmpfs, log, afterwards = list(state.moved), state.tmpfs, state.log, state.afterwards
    strays = state.strays
    if op.wait:
        state.leftovers += delete_moved(moved, op.dirs, tmpfs, log, op.job_id, strays)
        state.tmpfs, state.strays = [], []
        if afterwards is not None:
            afterwards()
        return
    if not moved and not strays and afterwards is None:
        return

    def work() -> None:
        delete_moved(moved, op.dirs, tmpfs, None, op.job_id, strays)
        if afterwards is not None:
            afterwards()

    pid = run_detached(work, keep=tuple(fd for fd, _ in tmpfs + strays))
    if moved:
        log.info("deleting the job's files in the background (pid %d)", pid)


def delete_moved(
    moved: list[str],
    dirs: tuple[str, ...],
    tmpfs: list[tuple[int, tuple[str, ...]]],
    log: Optional[Log],
    job_id: str,
    strays: list[tuple[int, str]] = (),
) -> list[str]:
    """Kill the processes left in the ``strays`` mount namespaces, measure the tmpfs dirs
    (through their mount namespace's descriptor; each is closed then), delete the trees moved
    aside, log the usage line; return what could not be removed.

    Each tree is locked (flock) while it is deleted, so that nsctl gc, which finishes deletions
    a reboot interrupted, leaves alone one that is being deleted. ``log`` None: this is the
    detached deleter, which logs anew (its parent's stderr may be a pipe Slurm waits on).
    """
    from .log import job_logger

    log = log or job_logger(job_id)
    state = _TeardownState(plan.TeardownPlan(job_id, ()), log, run_epilog=False)
    for fd, job_dir in strays:
        try:
            st = os.fstat(fd)
            _kill_in_mount_ns(procfs.NsId(st.st_dev, st.st_ino), job_dir, state)
        finally:
            os.close(fd)
    usage: dict[str, tuple[int, int]] = {}
    for fd, targets in tmpfs:
        try:
            usage.update(_tmpfs_usage_of(fd, targets))
        finally:
            os.close(fd)
    for path in moved:
        _delete_tree(path, dirs, usage, state)
    if usage:
        order = [d for d in dirs if d in usage] + [d for d in usage if d not in dirs]
        parts = [f"{d} {usage[d][0]} bytes in {usage[d][1]} files" for d in order]
        log.info("usage: %s", "; ".join(parts))
    return state.leftovers


def _delete_tree(
    path: str, dirs: tuple[str, ...], usage: dict[str, tuple[int, int]], state: _TeardownState
) -> None:
    from . import rmtree

    parent_path, name = os.path.split(path)
    try:
        parent = fsafe.trusted_dir(parent_path, "base directory")
    except FileNotFoundError:
        return
    except OSError as exc:
        state.left(path, f"left {path} alone: {exc.strerror}")
        return
    try:
        try:
            fd = os.open(name, fsafe.O_READ_DIR, dir_fd=parent)
        except FileNotFoundError:
            return
        try:
            import fcntl  # the detached deleter only

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                state.log.info("%s is being deleted by another nsctl", path)
                return
            # First each private directory's backing directory, measured, then the rest.
            job_id = parse_trash_name(name) or ""
            backing = {target.replace("/", "_"): target for target in dirs}
            for holder in (f".{job_id}", ""):
                for sub, target in backing.items():
                    where = os.path.join(holder, sub) if holder else sub
                    try:
                        sub_fd = os.open(where, fsafe.O_READ_DIR, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        result = rmtree.remove_contents(sub_fd, os.path.join(path, where), True)
                    finally:
                        os.close(sub_fd)
                    old = usage.get(target, (0, 0))
                    usage[target] = (old[0] + result.bytes, old[1] + result.files)
            if _report(rmtree.remove_contents(fd, path), state):
                try:
                    os.rmdir(name, dir_fd=parent)
                except OSError as exc:
                    state.left(path, f"could not remove {path}: {exc.strerror}")
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def _report(result: rmtree.Result, state: _TeardownState) -> bool:
    for failure in result.failures:
        state.left(failure.path, f"could not remove {failure.path}: {failure.error}")
    for path in result.skipped_mounts:
        state.left(path, f"left {path} alone: it is a mount point")
    return result.ok


def run_detached(work: Callable[[], object], keep: tuple[int, ...] = ()) -> int:
    """Run ``work`` in a child in its own session, at idle CPU and I/O priority, with no
    descriptor of ours but ``keep`` and a log file (never a pipe: Slurm would wait for it to
    close). The caller, about to exit, does not wait for it (its orphan is init's, or the
    nearest subreaper's, to reap); returns its pid."""
    child = os.fork()
    if child:
        return child
    try:
        gc.enable()  # the launchers turn it off for their few ms; this child may run for long
        os.setsid()
        _detach_stdio(keep)
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 19)
        except OSError:
            pass
        libc.set_idle_io_priority()
        work()
    finally:
        os._exit(0)


def _detach_stdio(keep: tuple[int, ...] = ()) -> None:
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    for fd in (1, 2):
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False
        if not regular:
            os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 and int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass


def _td_remove_index(op: plan.RemoveIndex, state: _TeardownState) -> None:
    job_id = state.plan.job_id
    if state.leftovers:
        # What is left is still the job's: the entry lets the next teardown find it.
        state.log.warning("keeping the runtime index entry: something was left behind")
        return
    try:
        jobs = open_run_subdir("jobs", create=False)
    except FileNotFoundError:
        return
    try:
        try:
            os.unlink(job_id, dir_fd=jobs)
        except FileNotFoundError:
            pass
    finally:
        os.close(jobs)
    _remove_temp_index_files(job_id)


_TEARDOWN_STEPS: dict[type, Callable] = {
    plan.RunScript: _td_epilog,
    plan.OpenJobDir: _td_open,
    plan.KillHolder: _td_kill_holder,
    plan.KillJobProcesses: _td_kill_processes,
    plan.MeasureTmpfs: _td_measure_tmpfs,
    plan.UnmountNsFiles: _td_unmount_ns,
    plan.RemoveJobDir: _td_remove_job_dir,
    plan.RemoveDirRoot: _td_remove_dir_root,
    plan.RemoveIndex: _td_remove_index,
    plan.DeleteMovedAside: _td_delete_moved,
}


def teardown(
    teardown_plan: plan.TeardownPlan,
    log: Log,
    afterwards: Optional[Callable[[], object]] = None,
) -> list[str]:
    """Destroy a job's namespaces and files. Idempotent; returns what could not be removed.

    ``afterwards`` runs once the job's files are deleted: in the detached deleter, unless the
    plan waits for the deletion.
    """
    with _lock(int(teardown_plan.job_id), teardown=True):
        return teardown_locked(teardown_plan, log, run_epilog=True, afterwards=afterwards)


def teardown_locked(
    tp: plan.TeardownPlan,
    log,
    run_epilog: bool,
    afterwards: Optional[Callable[[], object]] = None,
) -> list[str]:
    state = _TeardownState(tp, log, run_epilog)
    state.afterwards = afterwards
    try:
        for op in tp.ops:
            log.debug("teardown: %s", op.describe())
            _TEARDOWN_STEPS[type(op)](op, state)
    finally:
        state.close()
    return state.leftovers


def _kill_and_wait(pid: int, timeout: float) -> bool:
    """SIGKILL a verified pid and wait for it to be gone (or a zombie). True when it is."""
    assert pid > 1, pid  # never kill(-1), never init
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.waitpid(pid, os.WNOHANG)  # ours when setup rolls back (we are its subreaper)
        except ChildProcessError:
            pass
        if not procfs.alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
