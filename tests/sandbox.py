"""Helpers shared by the privileged tests (importable, unlike conftest)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Optional

from nsctl import libc
from nsctl.layout import parse_index


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return {line.split()[4] for line in handle}


@contextlib.contextmanager
def tmpfs(path: str, options: str, flags: int = 0) -> Iterator[str]:
    """A small tmpfs on ``path`` (made if missing) for the test's duration, e.g. a full disk."""
    os.makedirs(path, exist_ok=True)
    libc.mount("tmpfs", path, "tmpfs", flags, options)
    try:
        yield path
    finally:
        libc.umount2(path, libc.MNT_DETACH)


def proc_stat(pid: int) -> Optional[list[str]]:
    """Fields 3 onward of /proc/PID/stat (state, ppid, ...; the comm may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def proc_state(pid: int) -> Optional[str]:
    """R, S, Z, ... or None once the process is gone (reaped)."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


def index_entry(run_dir: str, job_id: str) -> dict[str, str]:
    """A job's runtime index entry, parsed the way nsctl parses it."""
    with open(os.path.join(run_dir, "jobs", job_id), encoding="utf-8") as handle:
        return parse_index(handle.read())


def holder_pid(run_dir: str, job_id: str) -> int:
    return int(index_entry(run_dir, job_id)["holder_pid"])


def live_children() -> list[int]:
    """This test process's children that are not zombies: holders orphaned to it, or strays."""
    children = []
    for name in os.listdir("/proc"):
        fields = proc_stat(int(name)) if name.isdigit() else None
        if fields and int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.append(int(name))
    return children


def holder_pids() -> set[int]:
    """Live holders of THIS test run: pytest is their subreaper, so they are its children
    (another run on the same machine has holders too, and they are none of ours)."""
    pids = set()
    for pid in live_children():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().startswith(b"nsctl: ["):
                    pids.add(pid)
        except OSError:
            continue
    return pids
