"""Delete a user-controlled directory tree as root without ever leaving it.

Teardown runs as root over directories whose contents belong to the job's user, who may have
planted symlinks, mode 000 directories, trees deeper than PATH_MAX, or a process that keeps
renaming things while we delete; a mount left behind by a failed unmount may sit inside the
tree too. The guarantees, for :func:`remove_tree` and :func:`remove_contents`:

- **Symlinks are never followed.** Every open uses ``O_NOFOLLOW``; symlinks are unlinked like
  files. A symlink given as the top path is unlinked, not followed.
- **Mounts are never crossed.** Before descending, the opened directory's device *and* mount id
  (``statx`` ``STATX_MNT_ID``, else ``/proc/self/fdinfo``) must equal the reference ones, so a
  bind mount of the same filesystem is caught too. Such directories are left alone and listed in
  ``Result.skipped_mounts``; so is a non-directory whose unlink fails with ``EBUSY`` (a file bind
  mount). The reference for :func:`remove_tree` is the *parent* of the top, so a top that is
  itself a mount point is skipped whole; for :func:`remove_contents` it is the directory itself.
- **Everything is relative to directory fds** (``openat``/``unlinkat``/``fstatat`` through
  ``dir_fd``), so renaming a directory while we work can redirect us only to wherever that
  directory now is: its own contents, which the user could delete anyway. Whenever an fd has to
  be re-opened (see below), the new fd's identity is checked against the recorded one.
- **Unreadable or unwritable directories** (the user's ``chmod 000``) are made ``0700`` through
  an fd before use (as root this is rarely needed; as the owner it always is). The top's parent
  (or, for :func:`remove_contents`, the directory itself) is never chmod-ed.
- **Any depth, bounded fds.** The walk is iterative. At most :data:`MAX_OPEN_DIRS` directory
  fds stay open (plus the top's parent and a few transient ones); older ancestors are closed
  and later re-opened through the child's ``..``, accepted only if (device, inode, mount id) is
  the one recorded on the way down. If that fails (the user moved a directory), the path is
  re-walked from the top by name with the same check at each step; a part that moved away is
  abandoned, and found again by the re-scan that a parent's ``ENOTEMPTY`` triggers (at most
  :data:`MAX_SCANS` scans per directory).
- **Per-entry errors never raise**: they are collected in ``Result.failures``. A missing top is
  success with nothing removed, so teardown can run again.

Files are unlinked while the directory is being read (memory stays bounded even for a flat
directory of millions of files); sub-directories are remembered by name and visited after the
scan, so only one ``scandir`` stream is open at a time. Single-threaded on purpose: see the
benchmark (bench/bench_rmtree.py) for how it compares with ``rm -rf --one-file-system``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Union

__all__ = ["MAX_OPEN_DIRS", "MAX_SCANS", "Failure", "Result", "remove_contents", "remove_tree"]

MAX_OPEN_DIRS = 64
MAX_SCANS = 3

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH = getattr(os, "O_PATH", 0o10000000)
_PRIVATE_MODE = 0o700

# statx(2) ABI (include/uapi/linux/stat.h): a 256-byte struct, fields at fixed offsets.
_AT_EMPTY_PATH = 0x1000
_STATX_INO = 0x100
_STATX_MNT_ID = 0x1000
_STATX_SIZE = 256
_OFF_MASK, _OFF_INO, _OFF_DEV, _OFF_MNT_ID = 0, 32, 136, 144


class Failure(Record):
    path: str
    error: str


class Result:
    """What a removal did. ``files`` counts every non-directory (symlinks, sockets...).

    A plain class, not a dataclass: teardown runs in every Epilog, and importing dataclasses
    would add a few milliseconds to each.
    """

    __slots__ = ("files", "dirs", "bytes", "failures", "skipped_mounts")

    def __init__(
        self,
        files: int = 0,
        dirs: int = 0,
        failures: Optional[list[Failure]] = None,
        skipped_mounts: Optional[list[str]] = None,
        bytes: int = 0,  # noqa: A002 - the figure's name in usage reports
    ) -> None:
        self.files = files
        self.dirs = dirs
        self.bytes = bytes
        self.failures: list[Failure] = failures or []
        self.skipped_mounts: list[str] = skipped_mounts or []

    def _fields(self) -> tuple:
        return (self.files, self.dirs, self.failures, self.skipped_mounts, self.bytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and self._fields() == other._fields()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return (
            f"Result(files={self.files}, dirs={self.dirs}, failures={self.failures!r}, "
            f"skipped_mounts={self.skipped_mounts!r}, bytes={self.bytes})"
        )

    @property
    def ok(self) -> bool:
        """True when everything asked for is gone: no failure and no mount left in the way."""
        return not self.failures and not self.skipped_mounts


class _Ident(Record):
    dev: int
    ino: int
    mnt: Optional[int]  # None only where neither statx nor /proc can tell


def _load_statx():
    try:
        func = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):  # glibc < 2.28 has no wrapper: fall back to fstat
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
    func.restype = ctypes.c_int
    return func


_statx = _load_statx()


def _fdinfo_mnt_id(fd: int) -> Optional[int]:
    # Kernels before 5.8 (RHEL 8) have no STATX_MNT_ID, but fdinfo has had mnt_id since 3.15.
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _identity(fd: int) -> _Ident:
    if _statx is not None:
        buf = ctypes.create_string_buffer(_STATX_SIZE)
        if _statx(fd, b"", _AT_EMPTY_PATH, _STATX_INO | _STATX_MNT_ID, buf) == 0:
            (mask,) = struct.unpack_from("=I", buf, _OFF_MASK)
            (ino,) = struct.unpack_from("=Q", buf, _OFF_INO)
            major, minor = struct.unpack_from("=II", buf, _OFF_DEV)
            if mask & _STATX_MNT_ID:
                (mnt,) = struct.unpack_from("=Q", buf, _OFF_MNT_ID)
            else:
                mnt = _fdinfo_mnt_id(fd)
            return _Ident(os.makedev(major, minor), ino, mnt)
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err))
    st = os.fstat(fd)
    return _Ident(st.st_dev, st.st_ino, _fdinfo_mnt_id(fd))


def _error_text(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


class _Frame:
    """One directory on the walk's stack; ``fd`` is None while closed to bound open fds."""

    __slots__ = ("name", "ident", "fd", "pending", "scanned", "scans", "blocked", "chmodded")

    def __init__(self, name: str, ident: _Ident, fd: int):
        self.name = name
        self.ident = ident
        self.fd: Optional[int] = fd
        self.pending: list[str] = []  # sub-directories seen by the scan, still to visit
        self.scanned = False
        self.scans = 0
        self.blocked = False  # something inside must stay (mount, failure): rmdir cannot work
        self.chmodded = False


class _Remover:
    """The walk. ``stack[0]`` is the anchor: never removed, never chmod-ed, never closed here."""

    def __init__(self, anchor: _Frame, result: Result, measure: bool = False):
        self.stack = [anchor]
        self.ref = anchor.ident
        self.result = result
        self.measure = measure  # count the disk space (st_blocks) of what is removed

    def run(self) -> None:
        stack = self.stack
        while True:
            frame = stack[-1]
            if not frame.scanned:
                self._scan(frame)
            elif frame.pending:
                child = self._open_child(frame, frame.pending.pop())
                if child is not None:
                    stack.append(child)
                    self._bound_open_fds()
            elif len(stack) == 1:
                return
            else:
                self._finish(frame)

    # -- reporting ------------------------------------------------------------------------------

    def _path(self, depth: int, name: Optional[str] = None) -> str:
        # Built only when reporting: storing a path per frame is quadratic in depth.
        parts = [f.name for f in self.stack[: depth + 1]]
        if name is not None:
            parts.append(name)
        return os.path.join(*parts)

    def _fail(self, depth: int, name: Optional[str], exc: OSError) -> None:
        """Report ``name`` in stack[depth] (or that directory itself); it cannot be removed."""
        self.result.failures.append(Failure(self._path(depth, name), _error_text(exc)))
        self.stack[depth].blocked = True

    def _skip_mount(self, depth: int, name: str) -> None:
        self.result.skipped_mounts.append(self._path(depth, name))
        self.stack[depth].blocked = True

    # -- per-directory steps --------------------------------------------------------------------

    def _make_writable(self, frame: _Frame) -> bool:
        """chmod 0700 once, for a directory we are going to delete anyway."""
        if frame is self.stack[0] or frame.chmodded:
            return False
        frame.chmodded = True
        try:
            os.fchmod(frame.fd, _PRIVATE_MODE)
        except OSError:
            return False
        return True

    def _scan(self, frame: _Frame) -> None:
        depth = len(self.stack) - 1
        frame.scanned = True
        frame.scans += 1
        unlink, fd, pending, measure = os.unlink, frame.fd, frame.pending, self.measure
        while True:
            removed = size = 0
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                        except OSError:  # d_type unknown and gone before lstat: unlink decides
                            is_dir = False
                        if is_dir:
                            pending.append(entry.name)
                            continue
                        # The common case inline: per-file Python overhead is what makes us
                        # slower than rm; every error goes through _unlink's full handling.
                        try:
                            if measure:
                                blocks = entry.stat(follow_symlinks=False).st_blocks
                            unlink(entry.name, dir_fd=fd)
                            removed += 1
                            if measure:
                                size += blocks * 512
                        except OSError:
                            self._unlink(frame, depth, entry.name)
                return
            except OSError as exc:
                if exc.errno == errno.EACCES and self._make_writable(frame):
                    continue
                self._fail(depth, None, exc)
                return
            finally:
                self.result.files += removed
                self.result.bytes += size

    def _unlink(self, frame: _Frame, depth: int, name: str) -> None:
        while True:
            try:
                os.unlink(name, dir_fd=frame.fd)
                self.result.files += 1
                return
            except OSError as exc:
                code = exc.errno
                if code == errno.ENOENT:
                    return
                if code == errno.EISDIR:
                    # Swapped for a directory under us: leave it to the re-scan after rmdir
                    # fails, which bounds how long a racing user can keep us busy.
                    return
                if code in (errno.EACCES, errno.EPERM) and self._make_writable(frame):
                    continue
                if code == errno.EBUSY:  # only a mount point (file bind mount) is busy here
                    self._skip_mount(depth, name)
                else:
                    self._fail(depth, name, exc)
                return

    def _open_child(self, parent: _Frame, name: str) -> Optional[_Frame]:
        depth = len(self.stack) - 1
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # No longer a directory (a symlink swapped in, or a file): unlink, never follow.
                self._unlink(parent, depth, name)
                return None
            if exc.errno == errno.EACCES:
                fd = self._open_unreadable(parent, depth, name)
                if fd is None:
                    return None
            else:
                if exc.errno != errno.ENOENT:
                    self._fail(depth, name, exc)
                return None
        try:
            ident = _identity(fd)
        except OSError as exc:
            os.close(fd)
            self._fail(depth, name, exc)
            return None
        if ident.dev != self.ref.dev or ident.mnt != self.ref.mnt:
            os.close(fd)
            self._skip_mount(depth, name)
            return None
        return _Frame(name, ident, fd)

    def _open_unreadable(self, parent: _Frame, depth: int, name: str) -> Optional[int]:
        """Open a directory we may not read (mode 000 and we are its owner, not root).

        O_PATH needs no permission on the directory itself; chmod and re-open then go through
        /proc/self/fd, which names the pinned inode, so no rename can slip another one in.
        """
        try:
            path_fd = os.open(
                name, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd
            )
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self._fail(depth, name, exc)
            return None
        try:
            ident = _identity(path_fd)
            if ident.dev != self.ref.dev or ident.mnt != self.ref.mnt:
                self._skip_mount(depth, name)
                return None
            proc_path = f"/proc/self/fd/{path_fd}"
            os.chmod(proc_path, _PRIVATE_MODE)
            fd = os.open(proc_path, _DIR_FLAGS & ~os.O_NOFOLLOW)
            if _identity(fd) != ident:
                os.close(fd)
                raise OSError(errno.ESTALE, "directory changed while being opened")
            return fd
        except OSError as exc:
            self._fail(depth, name, exc)
            return None
        finally:
            os.close(path_fd)

    def _finish(self, frame: _Frame) -> None:
        """Remove the fully emptied top-of-stack directory from its parent, then pop it."""
        parent = self._open_parent()
        if parent is None:  # the stack was cut back to what could be re-verified
            return
        depth = len(self.stack) - 1
        try:
            os.rmdir(frame.name, dir_fd=parent.fd)
            self.result.dirs += 1
        except OSError as exc:
            code = exc.errno
            not_empty = code in (errno.ENOTEMPTY, errno.EEXIST)
            if not_empty and not frame.blocked and frame.scans < MAX_SCANS:
                frame.scanned = False  # something appeared (or moved in): scan again
                return
            if code in (errno.EACCES, errno.EPERM) and self._make_writable(parent):
                return
            if code != errno.ENOENT:
                if not (not_empty and frame.blocked):  # the cause is already reported
                    self._fail(depth - 1, frame.name, exc)
                parent.blocked = True
        os.close(frame.fd)
        self.stack.pop()

    # -- bounded fds ----------------------------------------------------------------------------

    def _bound_open_fds(self) -> None:
        # Open frames are always the anchor plus a contiguous run at the top of the stack.
        old = len(self.stack) - 1 - MAX_OPEN_DIRS
        if old >= 1 and self.stack[old].fd is not None:
            os.close(self.stack[old].fd)
            self.stack[old].fd = None

    def _open_parent(self) -> Optional[_Frame]:
        stack = self.stack
        child, parent = stack[-1], stack[-2]
        if parent.fd is not None:
            return parent
        try:
            fd = os.open("..", _DIR_FLAGS, dir_fd=child.fd)
        except OSError:
            fd = None
        if fd is not None:
            try:
                if _identity(fd) == parent.ident:
                    parent.fd = fd
                    return parent
            except OSError:
                pass
            os.close(fd)
        return self._rewalk(len(stack) - 2)

    def _rewalk(self, target: int) -> Optional[_Frame]:
        """Re-open stack[target] by name from the anchor, checking identity at every step.

        Frames from the first step that fails on have moved away: they are dropped (closing
        their fds), and the walk resumes at the last verified one.
        """
        stack = self.stack
        cur_fd = stack[0].fd
        for depth in range(1, target + 1):
            frame = stack[depth]
            fd: Optional[int] = None
            try:
                fd = os.open(frame.name, _DIR_FLAGS, dir_fd=cur_fd)
                if _identity(fd) != frame.ident:
                    os.close(fd)
                    fd = None
            except OSError:
                if fd is not None:
                    os.close(fd)
                fd = None
            if fd is None:
                if depth - 1 >= 1:
                    stack[depth - 1].fd = cur_fd
                for dropped in stack[depth:]:
                    if dropped.fd is not None:
                        os.close(dropped.fd)
                del stack[depth:]
                return None
            if depth - 1 >= 1:
                os.close(cur_fd)
            cur_fd = fd
        stack[target].fd = cur_fd
        return stack[target]


def remove_tree(path: str, measure: bool = False) -> Result:
    """Remove ``path`` and everything below it, on its parent's mount only.

    The parent directory of ``path`` is trusted (resolved normally); ``path``'s last component
    is not: a symlink or file there is unlinked (even with a trailing slash), a directory is
    emptied and removed, a mount point is left alone. A missing ``path`` is success. A path
    whose last component is ``.`` or ``..`` (or ``/``) raises ValueError: that is a caller bug.
    """
    result = Result()
    # No normpath: it would resolve ".." lexically, which is wrong through symlinks and would
    # turn "x/.." into x's parent. Only trailing slashes go (they must not make us follow).
    parent_path, name = os.path.split(path.rstrip("/"))
    if name in ("", ".", ".."):
        raise ValueError(f"refusing to remove {path!r}: it has no last component to remove")
    try:
        parent_fd = os.open(parent_path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            result.failures.append(Failure(parent_path, _error_text(exc)))
        return result
    try:
        anchor = _Frame(parent_path, _identity(parent_fd), parent_fd)
        anchor.scanned = True  # never list the parent: only ``name`` is ours
        anchor.pending.append(name)
        _run(anchor, result, measure)
    except OSError as exc:
        result.failures.append(Failure(parent_path, _error_text(exc)))
    finally:
        os.close(parent_fd)
    return result


def remove_contents(
    target: Union[int, str], label: Optional[str] = None, measure: bool = False
) -> Result:
    """Empty a directory, given as a path or as an open directory fd (left open), on its mount.

    A path must name a directory itself, not a symlink to one; a missing path is success.
    ``label`` names an fd's directory in ``Result.failures`` (the path it was opened as).
    ``measure`` also counts, in ``Result.bytes``, the disk space of the files removed (one more
    system call per file).
    """
    result = Result()
    if isinstance(target, int):
        fd, label, owned = target, label or f"<fd {target}>", False
    else:
        label, owned = target, True
        try:
            fd = os.open(target, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                result.failures.append(Failure(target, _error_text(exc)))
            return result
    try:
        _run(_Frame(label, _identity(fd), fd), result, measure)
    except OSError as exc:
        result.failures.append(Failure(label, _error_text(exc)))
    finally:
        if owned:
            os.close(fd)
    return result


def _run(anchor: _Frame, result: Result, measure: bool = False) -> None:
    remover = _Remover(anchor, result, measure)
    try:
        remover.run()
    finally:
        for frame in remover.stack[1:]:  # only after an unexpected exception
            if frame.fd is not None:
                os.close(frame.fd)
