"""Every job namespace on this node, as ``nsctl status`` shows it and ``nsctl gc`` judges it.

Three sources, none trusted more than it deserves: the runtime index (``jobs/J``, believed as
teardown believes it), the base paths (from the config, and from the index entries, so a base
that has since changed is still seen), and /proc (namespaces bound on ``.ns`` files, holders,
locks). A directory is nsctl's only when it holds nsctl's mark ``.nsctl``; a job directory of
Slurm's own namespace/linux plugin (``B/J`` or, in multiple-slurmd builds, ``B/<NodeName>/J``,
with a ``.ns`` directory and no mark) is listed as Slurm's, and never collected.

States:

- ``live``: set up (its index entry exists, or Slurm's plugin made it), its namespaces bound,
  and with a PID namespace a holder alive;
- ``holder dead``: like live, but the PID namespace's holder is gone: nothing can join it;
- ``half-built``: a setup or teardown holds its lock now, or namespaces are bound but setup
  never wrote the index entry (a setup that was killed);
- ``orphan``: what is left of a job with nothing bound (a crash, a reboot: /run was emptied);
- ``deleting``: a torn-down job's tree moved aside, deleted by a detached process (or left by
  one a reboot interrupted).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import stat
import time

from . import fsafe, procfs
from .config import NodeConfig
from .errors import InputError
from .layout import (
    MARKER,
    NS_JOIN_ORDER,
    BadIndex,
    IndexEntry,
    parse_trash_name,
    read_index,
    run_dir,
    valid_job_id,
)
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

STATES = ("live", "holder dead", "half-built", "orphan", "deleting")


class DirUsage(Record):
    path: str  # inside the job
    tmpfs: bool
    bytes: Optional[int] = None  # None: not measured (nsctl status without --usage)
    files: Optional[int] = None


class JobRecord(Record):
    job_id: str
    state: str
    made_by: str  # "nsctl" or "slurm" (Slurm's own namespace/linux plugin)
    job_dir: Optional[str]  # B/J, or None (only an index entry, or only trees being deleted)
    user: Optional[str]
    holder_pid: int  # 0: none alive
    started: Optional[float]  # seconds since the epoch
    namespaces: tuple[str, ...]  # the kinds bound on .ns now
    dirs: tuple[DirUsage, ...]
    indexed: bool
    busy: bool  # a setup or teardown of this job holds its lock now
    dir_roots: tuple[str, ...] = ()  # the D/J that exist
    deleting: tuple[str, ...] = ()  # B/.nsctl-deleting.J.INO and the like
    entry: Optional[IndexEntry] = None

    def as_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "made_by": self.made_by,
            "user": self.user,
            "holder_pid": self.holder_pid or None,
            "started": self.started,
            "namespaces": list(self.namespaces),
            "job_dir": self.job_dir,
            "dirs": [
                {"path": d.path, "tmpfs": d.tmpfs, "bytes": d.bytes, "files": d.files}
                for d in self.dirs
            ],
            "deleting": list(self.deleting),
        }


# ---------------------------------------------------------------------------------------------
# Locks: probed on one descriptor (closing any descriptor of the lock file would drop all of
# this process's locks on it, see engine._lock)


class LockProbe:
    def __init__(self) -> None:
        path = os.path.join(run_dir(), "locks", "nsctl.lock")
        try:
            self.fd: Optional[int] = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            self.fd = None  # no lock file: nobody has ever locked anything

    def busy(self, job_id: str) -> bool:
        if self.fd is None:
            return False
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(job_id))
        except OSError:
            return True
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, int(job_id))
        return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------------
# Finding them


def index_entries() -> dict[str, Optional[IndexEntry]]:
    """Job id -> its index entry (None: a root-owned entry nsctl did not write)."""
    jobs = os.path.join(run_dir(), "jobs")
    try:
        names = os.listdir(jobs)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"cannot list {jobs}: {exc.strerror}") from None
    entries: dict[str, Optional[IndexEntry]] = {}
    for name in sorted(names, key=lambda n: (len(n), n)):
        if valid_job_id(name) != name:
            continue  # temporary files and anything else nsctl did not name
        try:
            entries[name] = read_index(name)
        except BadIndex:
            entries[name] = None
    return entries


def base_paths(config: Optional[NodeConfig], entries: Iterable[Optional[IndexEntry]]) -> list[str]:
    """Where job directories may be: the config's base path and per-dir bases (and, for Slurm's
    multiple-slurmd builds, B/<NodeName>), and every base an index entry names."""
    bases: dict[str, None] = {}
    if config is not None and config.enabled and config.base_path:
        bases[config.base_path] = None
        bases[os.path.join(config.base_path, config.node)] = None
        for d in config.dir_confs:
            if d.base_path and not d.tmpfs:
                bases[d.base_path] = None
                bases[os.path.join(d.base_path, config.node)] = None
    for entry in entries:
        if entry is not None:
            bases[os.path.dirname(entry.job_dir)] = None
            bases.update(dict.fromkeys(entry.dir_bases))
    return list(bases)


def _listing(base: str) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of the entries of a trusted base directory; [] when it is missing, or not
    root's alone (then nothing in it can be believed)."""
    try:
        fd = fsafe.trusted_dir(base, "base directory")
    except OSError:
        return []
    try:
        found = []
        for name in os.listdir(fd):
            try:
                found.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
            except OSError:
                continue
        return found
    finally:
        os.close(fd)


def _marked(path: str) -> bool:
    try:
        st = os.lstat(os.path.join(path, MARKER))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0


def _slurms(path: str) -> bool:
    """A job directory of Slurm's own plugin: root's, 0700, with a root-owned .ns directory."""
    try:
        st, ns = os.lstat(path), os.lstat(os.path.join(path, ".ns"))
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == 0
        and not st.st_mode & 0o077
        and stat.S_ISDIR(ns.st_mode)
        and ns.st_uid == 0
    )


class _Found:
    def __init__(self) -> None:
        self.job_dirs: dict[str, str] = {}  # job id -> B/J
        self.slurm: dict[str, str] = {}  # job id -> B[/<NodeName>]/J of Slurm's plugin
        self.roots: dict[str, list[str]] = {}  # job id -> D/J
        self.deleting: dict[str, list[str]] = {}


def scan(config: Optional[NodeConfig], entries: dict[str, Optional[IndexEntry]]) -> _Found:
    found = _Found()
    job_bases = {os.path.dirname(e.job_dir) for e in entries.values() if e is not None}
    if config is not None and config.enabled and config.base_path:
        job_bases |= {config.base_path, os.path.join(config.base_path, config.node)}
    for base in base_paths(config, entries.values()):
        for name, st in _listing(base):
            path = os.path.join(base, name)
            trashed = parse_trash_name(name)
            if trashed and stat.S_ISDIR(st.st_mode) and st.st_uid == 0:
                found.deleting.setdefault(trashed, []).append(path)
                continue
            if valid_job_id(name) != name or not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
                continue
            if _marked(path):
                if base in job_bases and os.path.isdir(os.path.join(path, ".ns")):
                    found.job_dirs.setdefault(name, path)
                else:
                    found.roots.setdefault(name, []).append(path)
            elif base in job_bases and _slurms(path):
                found.slurm.setdefault(name, path)
    return found


# ---------------------------------------------------------------------------------------------
# Judging them


def _user_of(job_dir: str, job_id: str) -> Optional[str]:
    try:
        uid = os.lstat(os.path.join(job_dir, f".{job_id}")).st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return None


def _started(job_dir: Optional[str], holder: int) -> Optional[float]:
    for path in (os.path.join(job_dir, MARKER) if job_dir else None, job_dir):
        if path:
            try:
                return os.lstat(path).st_mtime
            except OSError:
                continue
    if holder:
        ticks = procfs.start_time(holder)
        if ticks:
            with open("/proc/uptime", encoding="ascii") as handle:
                uptime = float(handle.read().split()[0])
            return time.time() - uptime + int(ticks) / os.sysconf("SC_CLK_TCK")
    return None


def judge(
    job_id: str,
    entries: dict[str, Optional[IndexEntry]],
    found: _Found,
    locks: LockProbe,
    config: Optional[NodeConfig] = None,
) -> JobRecord:
    """The record of one job, from what was found."""
    entry = entries.get(job_id)
    made_by = "slurm" if job_id in found.slurm and job_id not in found.job_dirs else "nsctl"
    job_dir = entry.job_dir if entry else found.job_dirs.get(job_id) or found.slurm.get(job_id)
    if job_dir and not os.path.isdir(job_dir):
        job_dir = None
    ns_dir = os.path.join(job_dir, ".ns") if job_dir else None
    bound = tuple(
        kind for kind in NS_JOIN_ORDER if ns_dir and procfs.ns_id(os.path.join(ns_dir, kind))
    )
    holder = 0
    if "pid" in bound:
        pid_ns = procfs.ns_id(os.path.join(ns_dir, "pid"))
        pid, start = (entry.holder_pid, entry.holder_start) if entry else (0, "")
        holders = procfs.holders(pid_ns, pid, start) if pid_ns else []
        holder = holders[0] if holders else 0
    elif made_by == "slurm" and "mnt" in bound:
        # Slurm's plugin has a holder with or without CLONE_NEWPID: PID 1's mnt namespace.
        mnt_ns = procfs.ns_id(os.path.join(ns_dir, "mnt"))
        inside = procfs.in_mount_ns(mnt_ns) if mnt_ns else []
        holder = min(inside) if inside else 0
    busy = locks.busy(job_id) if made_by == "nsctl" else False
    wanted = entry.namespaces if entry else bound
    set_up = entry is not None or made_by == "slurm"
    if not job_dir and not entry and job_id in found.deleting and job_id not in found.roots:
        state = "deleting"
    elif busy:
        state = "half-built"
    elif set_up and bound and set(wanted) <= set(bound):
        state = "holder dead" if "pid" in bound and not holder else "live"
    elif bound:
        state = "half-built"
    else:
        state = "orphan"
    dirs: tuple[DirUsage, ...] = ()
    if entry:
        tmpfs = set(entry.tmpfs_dirs)
        dirs = tuple(DirUsage(d, d in tmpfs) for d in entry.dirs)
    elif config is not None and config.enabled:
        dirs = tuple(DirUsage(d.path, d.tmpfs) for d in config.dir_confs if "%" not in d.path)
    return JobRecord(
        job_id=job_id,
        state=state,
        made_by=made_by,
        job_dir=job_dir,
        user=entry.user if entry else (_user_of(job_dir, job_id) if job_dir else None),
        holder_pid=holder,
        started=_started(job_dir, holder),
        namespaces=bound,
        dirs=dirs,
        indexed=job_id in entries,
        busy=busy,
        dir_roots=tuple(found.roots.get(job_id, ())),
        deleting=tuple(found.deleting.get(job_id, ())),
        entry=entry,
    )


def inventory(config: Optional[NodeConfig], job_id: Optional[str] = None) -> list[JobRecord]:
    """Every job namespace on this node (or just ``job_id``'s), in job id order."""
    entries = index_entries()
    found = scan(config, entries)
    ids = set(entries) | set(found.job_dirs) | set(found.slurm) | set(found.roots)
    ids |= set(found.deleting)
    if job_id is not None:
        ids &= {job_id}
    locks = LockProbe()
    try:
        return [judge(j, entries, found, locks, config) for j in sorted(ids, key=int)]
    finally:
        locks.close()


# ---------------------------------------------------------------------------------------------
# Usage (nsctl status --usage)


def tree_usage(path: str) -> tuple[Optional[int], Optional[int]]:
    """(bytes on disk, files) under a directory, on its own mount only, no symlink followed;
    (None, None) when it cannot be read."""
    try:
        top = os.open(path, fsafe.O_READ_DIR)
    except OSError:
        return None, None
    total = files = 0
    try:
        dev = os.fstat(top).st_dev
        for _, dirnames, filenames, dirfd in os.fwalk(dir_fd=top, follow_symlinks=False):
            for name in filenames:
                try:
                    total += os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_blocks * 512
                    files += 1
                except OSError:
                    continue
            for name in list(dirnames):
                try:
                    if os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_dev != dev:
                        dirnames.remove(name)  # a mount point: not this job's tree
                except OSError:
                    dirnames.remove(name)
    except OSError:
        return None, None
    finally:
        os.close(top)
    return total, files


def with_usage(record: JobRecord) -> JobRecord:
    """The record with every private directory's disk space and file count measured."""
    from .engine import tmpfs_usage

    if not record.job_dir or not record.dirs:
        return record
    tmpfs = [d.path for d in record.dirs if d.tmpfs]
    inside = {}
    if tmpfs and "mnt" in record.namespaces:
        inside = tmpfs_usage(os.path.join(record.job_dir, ".ns", "mnt"), tuple(tmpfs))
    measured = []
    bases = {os.path.dirname(root): root for root in record.dir_roots}
    entry = record.entry
    for d in record.dirs:
        if d.tmpfs:
            used, count = inside.get(d.path, (None, None))
        else:
            name = d.path.replace("/", "_")
            candidates = [os.path.join(record.job_dir, f".{record.job_id}", name)]
            candidates.append(os.path.join(record.job_dir, name))
            if entry:
                candidates += [os.path.join(b, record.job_id, name) for b in entry.dir_bases]
            candidates += [os.path.join(root, name) for root in bases.values()]
            used, count = None, None
            for candidate in candidates:
                if os.path.isdir(candidate):
                    used, count = tree_usage(candidate)
                    break
        measured.append(d._replace(bytes=used, files=count))
    return record._replace(dirs=tuple(measured))


def leftovers_seen(config: Optional[NodeConfig], exclude: str) -> bool:
    """A cheap look, for the Epilog: does a base path hold an nsctl job directory with no index
    entry and no setup or teardown running, or a deletion nobody is running? Only a hint:
    nsctl gc judges everything again."""
    jobs = os.path.join(run_dir(), "jobs")
    locks: Optional[LockProbe] = None
    try:
        for base in base_paths(config, ()):
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for name in names:
                trashed = parse_trash_name(name)
                if trashed and trashed != exclude and not _flocked(os.path.join(base, name)):
                    return True
                if name == exclude or valid_job_id(name) != name:
                    continue
                if os.path.exists(os.path.join(jobs, name)) or not _marked(
                    os.path.join(base, name)
                ):
                    continue
                locks = locks or LockProbe()
                if not locks.busy(name):
                    return True
    finally:
        if locks is not None:
            locks.close()
    return False


def _flocked(path: str) -> bool:
    try:
        fd = os.open(path, fsafe.O_READ_DIR)
    except OSError:
        return True  # gone meanwhile: nothing left to do there
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the flock we may have taken
    return False
