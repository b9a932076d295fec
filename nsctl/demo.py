"""``nsctl demo``: a job namespace made, used and torn down, on an embedded example config.

The demo runs the real commands (validate, setup, join, teardown) as a Prolog, a user and an
Epilog would, for job 4242 of user ``nobody``. It first moves itself into a private mount
namespace, so even a demo that fails halfway cannot leave a mount on the host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

from . import libc

JOB_ID = "4242"
USER = "nobody"
EXAMPLE = """\
# nsctl demo: private /tmp and /dev/shm (64 MiB) and a PID namespace for every job
defaults:
  base_path: "{base}"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
  dir_confs:
    - path: /tmp
    - path: /dev/shm
      options: "size=64m"
"""
IN_JOB = "id -un; ls -ld /tmp; echo hello > /tmp/demo.txt; ls -l /tmp; ps -eo pid,args"


class DemoFailed(Exception):
    pass


def _run(echo: Callable[[str], None], env: dict, *args: str) -> str:
    echo(f"$ nsctl {' '.join(shlex.quote(a) for a in args)}")
    result = subprocess.run(
        [sys.executable, "-m", "nsctl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",  # never pick up a source tree in the current directory instead of this nsctl
    )
    for line in (result.stdout + result.stderr).splitlines():
        echo(f"    {line}")
    if result.returncode != 0:
        raise DemoFailed(f"nsctl {args[0]} exited {result.returncode}")
    return result.stdout


def _check(echo: Callable[[str], None], ok: bool, what: str) -> None:
    echo(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        raise DemoFailed(what)


def run(echo: Callable[[str], None]) -> int:
    if os.geteuid() != 0:
        echo("nsctl demo needs root (it makes real mounts and namespaces)")
        return 1
    libc.unshare(libc.CLONE.NEWNS)
    libc.mount(None, "/", None, libc.MS.REC | libc.MS.PRIVATE)
    work = tempfile.mkdtemp(prefix="nsctl-demo-", dir="/var/tmp")
    os.chmod(work, 0o755)
    base = os.path.join(work, "base")
    config = os.path.join(work, "namespace.yaml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(EXAMPLE.format(base=base))
    env = {**os.environ, "NSCTL_CONFIG": config, "NSCTL_RUN_DIR": os.path.join(work, "run")}
    env["SLURMD_NODENAME"] = "demo-node"
    try:
        echo(f"Example namespace.yaml ({config}):")
        for line in EXAMPLE.format(base=base).splitlines():
            echo(f"    {line}")
        _run(echo, env, "validate", config)
        echo(f"\nProlog of job {JOB_ID} (user {USER}):")
        _run(echo, env, "setup", "--job-id", JOB_ID, "--user", USER, "--verbose")
        echo("\nInside the job, as the user:")
        out = _run(
            echo, env, "join", "--job-id", JOB_ID, "--as-user", "--", "/bin/sh", "-c", IN_JOB
        )
        lines = out.splitlines()
        _check(echo, lines[0] == USER, f"the job runs as {USER}")
        _check(
            echo,
            lines[1].startswith("drwx------") and f" {USER} root " in lines[1],
            "its /tmp is private: mode 0700, owned by the user, group root",
        )
        processes = [line.split(None, 1) for line in lines[lines.index("    PID COMMAND") + 1 :]]
        _check(
            echo,
            processes[0] == ["1", f"nsctl: [{JOB_ID}:namespace]"] and len(processes) == 3,
            "PID 1 in the job is nsctl's holder; only the job's processes are visible",
        )
        backing = os.path.join(base, JOB_ID, f".{JOB_ID}", "_tmp", "demo.txt")
        echo("\nOn the host:")
        _check(echo, not os.path.exists("/tmp/demo.txt"), "/tmp/demo.txt is not in the host's /tmp")
        _check(echo, os.path.isfile(backing), f"it lives in the job's backing directory {backing}")
        echo(f"\nEpilog of job {JOB_ID}:")
        _run(echo, env, "teardown", "--wait", "--job-id", JOB_ID, "--verbose")
        _check(echo, os.listdir(base) == [], f"{base} is empty again")
        _check(
            echo,
            not os.path.exists(os.path.join(work, "run", "jobs", JOB_ID)),
            "the runtime index entry is gone",
        )
    except DemoFailed as exc:
        echo(f"\ndemo FAILED: {exc}")
        subprocess.run(
            [sys.executable, "-m", "nsctl", "teardown", "--wait", "--job-id", JOB_ID],
            env=env,
            capture_output=True,
            cwd="/",
        )
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    echo("\ndemo passed: a job namespace was made, used and torn down.")
    return 0
