"""The one place that reads /proc: process state and start time, namespace identities, holders.

A pid alone is never trusted (it is reused): a holder is believed only when its start time (field
22 of /proc/PID/stat) is the one recorded at setup, or when it is PID 1 of exactly the namespace
bound on the job's ``.ns/pid`` file.
"""

from __future__ import annotations

import os

from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


class NsId(Record):
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
    me, found = os.getpid(), []
    for pid in pids():  # one stat per process (an Epilog's path: no record per process)
        try:
            st = os.stat(f"/proc/{pid}/ns/mnt")
        except OSError:
            continue
        same = st.st_ino == mnt_ns.ino and st.st_dev == mnt_ns.dev
        if same and pid not in (1, me) and alive(pid):
            found.append(pid)
    return found


def mount_namespaces() -> dict[NsId, int]:
    """Every mount namespace some process is in, with one of its processes."""
    found: dict[NsId, int] = {}
    for pid in pids():
        ns = process_ns(pid, "mnt")
        if ns is not None and ns not in found:
            found[ns] = pid
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fs_location(path: str) -> Optional[tuple[str, str]]:
    """(major:minor, the path within its file system) of a directory, from our mountinfo: how
    a bind mount of it (or of anything below it) shows in any namespace's mountinfo root field."""
    try:
        st = os.stat(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best: Optional[tuple[str, str]] = None
    for line in lines:
        fields = line.split()
        root, point = _unescape(fields[3]), _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if fields[2] == device and inside and (best is None or len(point) > len(best[1])):
            best = (root, point)
    if best is None:
        return None
    root, point = best
    rest = path[len(point) :].lstrip("/") if point != "/" else path.lstrip("/")
    return device, os.path.normpath(os.path.join(root, rest))


def mounted_elsewhere(paths: list[str], exclude: tuple = ()) -> list[tuple[int, str]]:
    """(pid, mount point) of every mount of one of ``paths``, or of something below it, in the
    mount namespace of any process but ours (and those in ``exclude``): a job's backing
    directory bound into a job's task, or into a namespace a task made (a container), keeps the
    job in use after its .ns files are gone."""
    wanted = [loc for loc in map(fs_location, paths) if loc is not None]
    if not wanted:
        return []
    skip = {process_ns(os.getpid(), "mnt"), *exclude}
    hits = []
    for ns, pid in mount_namespaces().items():
        if ns in skip:
            continue
        try:
            with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            root = _unescape(fields[3])
            if root.endswith("//deleted"):
                continue  # the directory it came from is gone: not one of ours now
            for device, rel in wanted:
                if fields[2] == device and (root == rel or root.startswith(rel.rstrip("/") + "/")):
                    hits.append((pid, _unescape(fields[4])))
    return hits
