"""The holder: PID 1 of a job's PID namespace, alive for the job's lifetime.

When PID 1 of a PID namespace exits, the kernel kills the namespace and nothing can enter it
again, so something must stay. The holder reaps orphans (every task whose parent exits is
re-parented to it), is named ``nsctl: [J:namespace]`` in ps, keeps no inherited descriptor (Slurm
waits on the Prolog's output pipes), and is small: a fresh ``python -I -S`` running the loop
below (no site, no nsctl, no ctypes), or the optional C holder built in contrib/slurm/spank
(``nsctl setup --holder PATH``), which is a few hundred kB.

Everything here runs in the forked namespace child, between fork and exec.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

# Runs in a bare interpreter: only builtin modules. The title replaces the argv area the
# kernel shows as /proc/PID/cmdline, the way setproctitle does; comm is set through prctl's
# sibling, /proc/self/comm.
HOLDER_CODE = r"""
import os, signal, sys
title = sys.argv[1].encode()
try:
    with open('/proc/self/comm', 'wb') as f:
        f.write(title[:15])
    with open('/proc/self/stat', 'rb') as f:
        fields = f.read().rsplit(b')', 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    with open('/proc/self/mem', 'r+b', buffering=0) as mem:
        mem.seek(start)
        mem.write(title[: end - start - 1].ljust(end - start, b'\0'))
except OSError:
    pass
del title
watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
signal.pthread_sigmask(signal.SIG_BLOCK, watched)
while True:
    signal.sigwait(watched)
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
"""


def title(job_id: str) -> str:
    return f"nsctl: [{job_id}:namespace]"


def become_holder(job_id: str, holder_path: Optional[str] = None) -> None:
    """Detach from everything inherited and exec the holder. Never returns."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.close(int(name))
            except OSError:
                pass  # the descriptor listdir itself used
    os.chdir("/")
    if holder_path:
        os.execv(holder_path, [title(job_id)])
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", HOLDER_CODE, title(job_id)])
