"""Helpers shared by the privileged tests (importable, unlike conftest)."""

from __future__ import annotations


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return {line.split()[4] for line in handle}
