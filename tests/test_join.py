"""nsctl join on a real job (root, sandboxed; issue 8, finding 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from sandbox import holder_pid

CONFIGS = {
    "pid": "  clone_ns_flags: [CLONE_NEWPID]\n",
    "pid+user": "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]\n",
}
BASE = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
"""


def nsctl(*args, **kwargs) -> subprocess.CompletedProcess:
    """nsctl without a terminal (not even the one pytest may have been started from)."""
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "nsctl", *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(params=sorted(CONFIGS))
def job(request, lab):
    """A real job of user nobody, set up and torn down by nsctl itself."""
    lab.write_config(BASE + CONFIGS[request.param])
    job_id = "2601"
    ok(nsctl("setup", "--job-id", job_id, "--user", "nobody"))
    try:
        yield job_id
    finally:
        ok(nsctl("teardown", "--job-id", job_id))
    assert lab.job_files() == [] and lab.index_entries() == []


# ---------------------------------------------------------------------------------------------
# Finding 7: a job whose holder died


def test_join_into_a_job_whose_holder_died_says_so(lab, job):
    holder = holder_pid(lab.run, job)
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)  # orphaned to this process, a subreaper
    result = nsctl("join", "--job-id", job, "--as-user", "--", "/bin/true")
    assert result.returncode == 1
    assert result.stderr == (
        f"nsctl: error: job {job}: its PID namespace is gone (its holder, PID {holder}, "
        "died); nothing can join the job any more, only teardown can clean it up\n"
    )
