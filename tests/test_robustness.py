"""Failures that are nobody's input: nsctl's own bugs, signals while waiting, a full /run, races."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sandbox import tmpfs

from nsctl import engine, hooks, libc, loader, plan

CONFIG = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
"""


@pytest.mark.parametrize(("policy", "status"), [("fail", 1), ("ignore", 0)])
def test_an_internal_error_is_logged_and_the_fail_policy_still_decides(
    lab, monkeypatch, capsys, policy, status
):
    """A fail-open site must not drain nodes over a bug in nsctl either (a fake bug here)."""
    lab.write_config(CONFIG)

    def buggy(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(plan, "plan_setup", buggy)
    assert hooks.run_setup(job_id="81", user="nobody", on_error=policy) == status
    err = capsys.readouterr().err
    assert "nsctl: job 81: ERROR: setup failed: internal error: boom" in err
    assert "RuntimeError: boom" in err  # the traceback goes to the log, for the bug report


def test_sigterm_while_waiting_for_the_job_lock_is_a_clean_setup_failure(lab):
    lab.write_config(CONFIG)
    holder_code = (
        "import sys, time\n"
        "from nsctl import engine\n"
        "with engine._lock(82):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "locked\n"
        setup = subprocess.Popen(
            [sys.executable, "-m", "nsctl", "setup", "--job-id", "82", "--user", "nobody"],
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # nsctl is now blocked on the lock
        setup.send_signal(signal.SIGTERM)
        _, err = setup.communicate(timeout=30)
    finally:
        other.kill()
        other.wait()
    assert setup.returncode == 1
    assert "interrupted by SIGTERM" in err and "wait for lock" in err
    assert "Traceback" not in err
    assert lab.job_files() == []


def test_a_full_runtime_dir_leaves_no_partial_cache_file(lab, monkeypatch):
    lab.write_config(CONFIG)
    with tmpfs(lab.run, "size=4k,nr_inodes=16"):
        os.makedirs(os.path.join(lab.run, "cache"))
        fd = os.open(os.path.join(lab.run, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass  # ENOSPC: the runtime dir is full, which is what this test wants
        finally:
            os.close(fd)
        resolved = loader.load_node_config(lab.config, "node1", "node1")
        assert resolved.base_path == lab.base  # a cache that cannot be written only costs speed
        assert os.listdir(os.path.join(lab.run, "cache")) == []


def test_the_remount_refuses_a_target_that_is_no_longer_the_new_mount(lab, monkeypatch):
    """Between the bind and the remount the target is looked up again; if a user renamed another
    directory into its place (a race the kernel will not produce on demand: faked here by
    returning the wrong directory), the remount is refused instead of hitting that directory."""
    source, target, decoy = (lab.dir / name for name in ("src", "target", "decoy"))
    for path in (source, target, decoy):
        path.mkdir()
    real = engine.open_dir_nofollow
    calls = []

    def racing(path):
        calls.append(path)
        return real(str(decoy)) if len(calls) == 3 else real(path)

    pid = os.fork()
    if pid == 0:  # a private mount namespace: nothing here reaches the test process
        code = 1
        try:
            libc.unshare(libc.CLONE.NEWNS)
            libc.mount(None, "/", None, libc.MS.REC | libc.MS.PRIVATE)
            monkeypatch.setattr(engine, "open_dir_nofollow", racing)
            try:
                engine._child_op(plan.BindMount(str(source), str(target), ("ro",)))
            except OSError as exc:
                code = 0 if "target changed under the mount" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
