"""The holder: PID 1 of a job's PID namespace, alive for the job's lifetime.

When PID 1 of a PID namespace exits, the kernel kills the namespace and nothing can enter it
again, so something must stay. The holder reaps orphans (every task whose parent exits is
re-parented to it), is named ``nsctl: [J:namespace]`` in ps, keeps no inherited descriptor (Slurm
waits on the Prolog's output pipes), and never depends on a path inside the job's mount
namespace, where /tmp (or wherever nsctl is installed) may already be the job's empty private
directory:

- by default it is the namespace's first process itself, a fork of ``nsctl setup`` that simply
  stays (nothing is executed, nothing is read from disk);
- with ``nsctl setup --holder PATH`` (the small C holder in contrib/slurm/holder) the program is
  opened before any private mount is made and executed from that descriptor; an exec failure
  reaches setup through the status pipe, which is close-on-exec (the way subprocess reports it).

Everything here runs in the forked namespace child, after its mounts are made.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py makes enums, an import each Prolog pays
import gc
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


def title(job_id: str) -> str:
    return f"nsctl: [{job_id}:namespace]"


def set_title(text: str) -> None:
    """Show ``text`` as this process's name: comm (15 bytes) and the argv area ps prints, the
    way setproctitle does (the area keeps its size; the rest is zeroed)."""
    raw = text.encode()
    try:
        with open("/proc/self/comm", "wb") as handle:
            handle.write(raw[:15])
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(raw[: end - start - 1].ljust(end - start, b"\0"))
    except (OSError, ValueError, IndexError):
        pass  # a name is a courtesy: never a reason for the job to fail


def _detach(keep: tuple[int, ...]) -> None:
    """Own session, /dev/null on 0-2, cwd /, every other inherited descriptor closed."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the descriptor listdir itself used
    os.chdir("/")


def _reap_forever() -> None:
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    while True:
        signal.sigwait(watched)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass


def become_holder(job_id: str, status_fd: int, program_fd: Optional[int] = None) -> None:
    """Turn this process into the holder. Never returns.

    ``status_fd`` is the pipe to setup, which has already read "ok": it is closed when the holder
    runs (EOF tells setup so), or carries "err ..." when ``program_fd`` cannot be executed.
    """
    _detach(keep=(status_fd,) if program_fd is None else (status_fd, program_fd))
    name = title(job_id)
    if program_fd is None:
        gc.enable()  # the launchers turn it off for their few ms; a holder runs for the job
        set_title(name)
        os.close(status_fd)
        _reap_forever()
    os.set_inheritable(status_fd, False)  # closed by a successful exec: EOF means it runs
    try:
        os.execve(program_fd, [name], dict(os.environ))
    except OSError as exc:
        os.write(status_fd, f"err exec holder: {exc.strerror}\n".encode())
    os._exit(127)
