"""Exceptions and the one table of exit codes.

The library raises these; only ``cli.py`` turns them into exit codes. In Slurm a
non-zero Prolog or Epilog drains the node, so every code here is deliberate.
"""

from __future__ import annotations


class Exit:
    """Exit statuses (plain ints: enum costs every Prolog an import)."""

    OK = 0
    FAILURE = 1  # invalid config, failed setup/teardown, bad input
    USAGE = 2  # bad command line (click's own code for usage errors)


class NsctlError(Exception):
    """Base class: a clear, user-facing failure (never shown with a traceback)."""


class ConfigError(NsctlError):
    """namespace.yaml cannot be used; ``issues`` holds every problem found."""

    def __init__(self, message: str, issues: tuple = ()):
        super().__init__(message)
        self.issues = issues


class InputError(NsctlError):
    """A job id, user or other input from the caller or environment is unacceptable."""


class SetupError(NsctlError):
    """A setup step failed; ``step`` names it. Everything done before was undone."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step


class TeardownError(NsctlError):
    """Teardown stopped to avoid deleting through a still-mounted namespace file."""
