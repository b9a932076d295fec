"""Logging to stderr and to syslog (ident ``nsctl``), every line tagged with the job id.

Not the logging package: Slurm starts a fresh interpreter for every Prolog and Epilog, and
importing logging alone costs one several milliseconds. Lines go to stderr as
``nsctl: job J: LEVEL: message`` and, at info and above, to the syslog socket when there is
one, as ``<PRI>nsctl: job J: message`` (facility user), the way syslog(3) clients write it.
"""

from __future__ import annotations

import os
import sys

SYSLOG = "/dev/log"
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
_SEVERITY = {INFO: 6, WARNING: 4, ERROR: 3}  # syslog(3) severities; facility user is 1


class Log:
    """What nsctl logs through: ``debug``, ``info``, ``warning``, ``error``, ``exception``,
    each taking a message and %-arguments, as logging's methods do."""

    def __init__(self, job_id: str | None = None, verbose: bool = False):
        self.tag = f"job {job_id}: " if job_id else ""
        self.verbose = verbose
        self.syslog = _connect()

    def _emit(self, level: int, message: str, args: tuple) -> None:
        if level == DEBUG and not self.verbose:
            return
        text = message % args if args else message
        try:
            sys.stderr.write(f"nsctl: {self.tag}{_NAMES[level]}: {text}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # no stderr (closed by a detached deleter, say): syslog still has it
        if self.syslog is not None and level >= INFO:
            line = f"<{8 + _SEVERITY[level]}>nsctl: {self.tag}{text}".encode(errors="replace")
            try:
                self.syslog.send(line[:8000] + b"\0")
            except OSError:
                pass  # a syslog daemon that went away must not fail a job

    def debug(self, message: str, *args) -> None:
        self._emit(DEBUG, message, args)

    def info(self, message: str, *args) -> None:
        self._emit(INFO, message, args)

    def warning(self, message: str, *args) -> None:
        self._emit(WARNING, message, args)

    def error(self, message: str, *args) -> None:
        self._emit(ERROR, message, args)

    def exception(self, message: str, *args) -> None:
        """An error, with the traceback of the exception being handled."""
        import traceback  # only for nsctl's own bugs

        self._emit(ERROR, message, args)
        try:
            sys.stderr.write(traceback.format_exc())
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.close()
            self.syslog = None


def _connect():
    if not os.path.exists(SYSLOG):
        return None
    import _socket  # the C module: socket.py would pull in enum and selectors

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        sock.connect(SYSLOG)
    except OSError:
        sock.close()
        return None  # no syslog daemon listening: stderr still has everything
    return sock


_current: list[Log] = []


def job_logger(job_id: str | None, verbose: bool = False) -> Log:
    """The log for one command run (tests call it many times in one process: the previous
    one's syslog socket is closed)."""
    while _current:
        _current.pop().close()
    log = Log(job_id, verbose)
    _current.append(log)
    return log
