"""ctypes over libc: mount, umount2, unshare, setns, prctl, ioctl, poll. Errors become OSError
with the path.

Loaded once with ``use_errno``; every wrapper turns -1 into ``OSError(errno, strerror, path)``
and retries EINTR. Flags are ``unsigned long`` as mount(2) declares them.
"""

from __future__ import annotations

import ctypes
import os

try:  # the glibc soname; find_library would spawn ldconfig on every run
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - another libc
    import ctypes.util

    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.unshare.restype = ctypes.c_int
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_libc.prctl.restype = ctypes.c_int
_libc.sched_getcpu.argtypes = ()
_libc.sched_getcpu.restype = ctypes.c_int
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_libc.ioctl.restype = ctypes.c_int
_libc.poll.argtypes = (ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int)
_libc.poll.restype = ctypes.c_int


class MS:
    """mount(2) flags (plain ints: enum costs every Prolog an import)."""

    RDONLY = 0x1
    NOSUID = 0x2
    NODEV = 0x4
    NOEXEC = 0x8
    REMOUNT = 0x20
    NOATIME = 0x400
    NODIRATIME = 0x800
    BIND = 0x1000
    REC = 0x4000
    PRIVATE = 1 << 18
    SLAVE = 1 << 19
    SHARED = 1 << 20
    RELATIME = 1 << 21


MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8


class CLONE:
    """clone(2)/unshare(2)/setns(2) namespace flags."""

    NEWNS = 0x00020000
    NEWUTS = 0x04000000
    NEWUSER = 0x10000000
    NEWPID = 0x20000000


# namespace kind -> (setns type, /proc/PID/ns file name), in the order jobs are joined.
NAMESPACES = {"pid": CLONE.NEWPID, "user": CLONE.NEWUSER, "mnt": CLONE.NEWNS}

PR_SET_CHILD_SUBREAPER = 36

# The seven option words Slurm turns into mount flags.
MOUNT_FLAG_BITS = {
    "noexec": MS.NOEXEC,
    "nosuid": MS.NOSUID,
    "nodev": MS.NODEV,
    "ro": MS.RDONLY,
    "noatime": MS.NOATIME,
    "nodiratime": MS.NODIRATIME,
    "relatime": MS.RELATIME,
}


def _encode(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _check(result: int, path: str | None = None) -> None:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def _call(func, *args, path: str | None = None) -> int:
    while True:
        result = func(*args)
        if result != -1 or ctypes.get_errno() != 4:  # EINTR
            _check(result, path)
            return result


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    _call(
        _libc.mount,
        _encode(source),
        _encode(target),
        _encode(fstype),
        int(flags),
        _encode(data),
        path=target,
    )


def umount2(target: str, flags: int = 0) -> None:
    _call(_libc.umount2, _encode(target), flags, path=target)


def unshare(flags: int) -> None:
    _call(_libc.unshare, int(flags))


def setns(fd: int, nstype: int, path: str | None = None) -> None:
    # Always pass the explicit type: 0 would skip the kernel's check that fd is that kind.
    _call(_libc.setns, fd, int(nstype), path=path)


# ioprio_set(2) has no glibc wrapper: the syscall number per architecture (asm/unistd.h).
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "ppc64le": 273, "s390x": 282}
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_IDLE = 3


def set_idle_io_priority() -> bool:
    """The calling process gets disk time only when no one else wants it. False if unknown."""
    number = _SYS_IOPRIO_SET.get(os.uname().machine)
    if number is None:
        return False
    _libc.syscall.restype = ctypes.c_long
    result = _libc.syscall(
        ctypes.c_long(number),
        ctypes.c_int(IOPRIO_WHO_PROCESS),
        ctypes.c_int(0),
        ctypes.c_int(IOPRIO_CLASS_IDLE << 13),
    )
    return result == 0


def ioctl_u64(fd: int, request: int) -> int:
    """An ioctl that fills in one __u64 (NS_GET_ID); fcntl.ioctl would cost the Prolog a
    module to load."""
    value = ctypes.c_uint64()
    _call(_libc.ioctl, fd, request, ctypes.byref(value))
    return value.value


class _PollFd(ctypes.Structure):
    _fields_ = (("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short))


_POLLIN = 0x1


def readable(fd: int, timeout: float) -> bool:
    """poll(2): True once ``fd`` can be read (data or end of file), False after ``timeout``
    seconds (rounded up to the next ms). select.select would cost the Prolog a module to load."""
    entry = _PollFd(fd, _POLLIN, 0)
    return _call(_libc.poll, ctypes.byref(entry), 1, max(0, int(timeout * 1000) + 1)) > 0


def sched_getcpu() -> int:
    """The CPU this thread runs on now."""
    return _call(_libc.sched_getcpu)


def prctl(option: int, arg2: int = 0) -> None:
    _call(_libc.prctl, option, arg2, 0, 0, 0)


def set_child_subreaper() -> None:
    """Orphaned descendants (a namespace's PID 1 after its parent exits) are re-parented to us."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)
