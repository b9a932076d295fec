"""Helpers shared by the privileged tests (importable, unlike conftest)."""

from __future__ import annotations

import os


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return {line.split()[4] for line in handle}


def live_children() -> list[int]:
    """This test process's children that are not zombies: holders orphaned to it, or strays."""
    children = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != b"Z":
            children.append(int(name))
    return children
