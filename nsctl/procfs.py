"""The one place that reads /proc: process state and start time, namespace identities, holders.

A pid alone is never trusted (it is reused): a holder is believed only when its start time (field
22 of /proc/PID/stat) is the one recorded at setup, or when it is PID 1 of exactly the namespace
bound on the job's ``.ns/pid`` file.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional


class NsId(NamedTuple):
    """A namespace, as the (device, inode) of its nsfs file; equal ids mean the same namespace."""

    dev: int
    ino: int


def stat_fields(pid: int) -> Optional[list[str]]:
    """Fields 3 onward of /proc/PID/stat (the comm in field 2 may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def state(pid: int) -> Optional[str]:
    """R, S, D, Z, ... or None once the process is gone (reaped)."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    """Running or sleeping: not gone, not a zombie."""
    return state(pid) not in (None, "Z", "X")


def start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat: clock ticks since boot at which the process started."""
    fields = stat_fields(pid)
    return fields[19] if fields else None


def ns_id(path: str) -> Optional[NsId]:
    """The namespace a /proc/PID/ns/* file (or a file one is bound on) refers to, else None.

    A path that does not lead to an nsfs inode (an empty placeholder file, a missing file, a
    symlink planted where a namespace file belongs) is None: ``lstat`` never follows.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return NsId(st.st_dev, st.st_ino) if st.st_dev == _nsfs_dev() else None


def process_ns(pid: int, kind: str) -> Optional[NsId]:
    """The ``kind`` (mnt, pid, user, ...) namespace of a process, None if it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return NsId(st.st_dev, st.st_ino)


_NSFS_DEV: list[int] = []


def _nsfs_dev() -> int:
    if not _NSFS_DEV:
        _NSFS_DEV.append(os.stat("/proc/self/ns/mnt").st_dev)
    return _NSFS_DEV[0]


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def is_ns_init(pid: int) -> bool:
    """True when the process is PID 1 of its innermost PID namespace."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    return line.split()[-1] == "1"
    except OSError:
        pass
    return False


def is_holder_of(pid: int, pid_ns: NsId) -> bool:
    """``pid`` (> 1) is alive and PID 1 of exactly the PID namespace ``pid_ns``."""
    return pid > 1 and process_ns(pid, "pid") == pid_ns and is_ns_init(pid) and alive(pid)


def holders(pid_ns: NsId, pid: int = 0, start: str = "") -> list[int]:
    """Verified holders of the PID namespace ``pid_ns``: the recorded (pid, start time) when it
    still is one, else whatever process is PID 1 of that namespace (a scan of /proc)."""
    if pid > 1 and start and start_time(pid) == start and is_holder_of(pid, pid_ns):
        return [pid]
    return [p for p in pids() if is_holder_of(p, pid_ns)]


def in_mount_ns(mnt_ns: NsId) -> list[int]:
    """Every live process whose mount namespace is ``mnt_ns`` (never ourselves, never pid 1)."""
    me = os.getpid()
    return [p for p in pids() if p not in (1, me) and process_ns(p, "mnt") == mnt_ns and alive(p)]
