"""Many Prologs and Epilogs at once on one node, requeued jobs, huge trees (root, sandboxed).

Slurm runs the Prologs and Epilogs of different jobs in parallel, and may run a job's Epilog
while a Prolog of the same id is still going (a cancelled or requeued job). Every command here is
a separate ``nsctl`` process, as Slurm would start it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from sandbox import holder_pid, live_children

CONFIG = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
"""

NSCTL = f"{sys.executable} -m nsctl"


def nsctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nsctl", *args], capture_output=True, text=True, timeout=timeout
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args[3:6]} -> {result.returncode}\n{result.stderr}"
    return result


def as_user(job_id: str, script: str) -> subprocess.CompletedProcess:
    return ok(nsctl("join", "--job-id", job_id, "--as-user", "--", "/bin/sh", "-ec", script))


def _cycle(job_id: str) -> subprocess.CompletedProcess:
    """One job's life, as Prolog, task and Epilog: each step must succeed, /tmp is the job's own."""
    script = f"""
        set -e
        {NSCTL} setup --job-id {job_id} --user nobody
        {NSCTL} join --job-id {job_id} --as-user -- /bin/sh -ec \
            'echo {job_id} > /tmp/mine; ls -A /tmp; cat /tmp/mine; ls -A /dev/shm | wc -l'
        {NSCTL} teardown --wait --job-id {job_id}
    """
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=300)


def test_fifty_concurrent_job_cycles_leave_nothing_behind(lab):
    lab.write_config(CONFIG)
    job_ids = [str(1000 + n) for n in range(50)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = dict(zip(job_ids, pool.map(_cycle, job_ids)))
    for job_id, result in results.items():
        assert result.returncode == 0, f"job {job_id}: {result.stderr}"
        assert result.stdout == f"mine\n{job_id}\n0\n", f"job {job_id} saw {result.stdout!r}"
    assert lab.job_files() == []
    assert lab.index_entries() == []
    assert live_children() == []


def test_concurrent_setups_of_the_same_job_create_it_once(lab):
    lab.write_config(CONFIG)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nsctl", "setup", "--job-id", "501", "--user", "nobody", "-v"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * 6, errors
        assert sum("setup: created" in err for err in errors) == 1, errors
        assert sum("setup: already set up" in err for err in errors) == 5, errors
        assert len(live_children()) == 1  # one holder
        out = as_user("501", "ls -A /tmp | wc -l; ps -o args= -p 1").stdout.split("\n")
        assert out[0] == "0" and out[1].startswith("nsctl: [501:namespace]")
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "501"))
    assert lab.job_files() == [] and lab.index_entries() == [] and live_children() == []


def test_setup_and_teardown_of_the_same_job_racing_end_consistent(lab):
    lab.write_config(CONFIG)
    for round_ in range(8):
        job_id = str(600 + round_)
        setup = subprocess.Popen(
            [sys.executable, "-m", "nsctl", "setup", "--job-id", job_id, "--user", "nobody"],
            stderr=subprocess.PIPE,
        )
        teardown = subprocess.Popen(
            [sys.executable, "-m", "nsctl", "teardown", "--wait", "--job-id", job_id],
            stderr=subprocess.PIPE,
        )
        assert setup.wait(timeout=120) == 0, setup.stderr.read()
        assert teardown.wait(timeout=120) == 0, teardown.stderr.read()
        setup.stderr.close()
        teardown.stderr.close()
        # Either teardown came first (the job is fully set up) or last (nothing is left).
        if lab.index_entries() == [job_id]:
            assert as_user(job_id, "ls -A /tmp | wc -l").stdout == "0\n"
            assert len(live_children()) == 1
            ok(nsctl("teardown", "--wait", "--job-id", job_id))
        assert lab.index_entries() == [] and live_children() == []
        assert not os.path.lexists(os.path.join(lab.base, job_id))


@pytest.mark.parametrize("holder_state", ["zombie", "reaped"])
def test_requeued_job_with_a_dead_namespace_is_cleaned_and_recreated(lab, holder_state):
    # The same job id comes back (requeue) while B/J of its first run is still there with the
    # user's files, its namespace files still bound, but its holder dead.
    lab.write_config(CONFIG)
    ok(nsctl("setup", "--job-id", "701", "--user", "nobody"))
    as_user("701", "echo old > /tmp/old; mkdir /tmp/d; chmod 000 /tmp/d")
    holder = holder_pid(lab.run, "701")
    os.kill(holder, signal.SIGKILL)
    # The holder was orphaned to this process (a subreaper): a zombie until we reap it.
    if holder_state == "reaped":
        os.waitpid(holder, 0)
    try:
        result = ok(nsctl("setup", "--job-id", "701", "--user", "nobody"))
        assert "cleaning up what an earlier run of this job left behind" in result.stderr
        assert as_user("701", "ls -A /tmp | wc -l").stdout == "0\n"
        assert len(live_children()) == 1
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "701"))
    assert lab.job_files() == [] and lab.index_entries() == []


def test_requeued_job_after_a_reboot_finds_only_files_and_recreates(lab):
    # After a node reboot only the disk remains: B/J with files, no mounts, no index.
    lab.write_config(CONFIG)
    stale = os.path.join(lab.base, "702", ".702", "_tmp", "deep", "er")
    os.makedirs(stale)
    with open(os.path.join(stale, "old"), "w", encoding="utf-8") as handle:
        handle.write("old\n")
    os.makedirs(os.path.join(lab.base, "702", ".ns"))
    open(os.path.join(lab.base, "702", ".ns", "pid"), "w").close()
    try:
        ok(nsctl("setup", "--job-id", "702", "--user", "nobody"))
        assert as_user("702", "ls -A /tmp | wc -l").stdout == "0\n"
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "702"))
    assert lab.job_files() == [] and lab.index_entries() == []


def test_teardown_of_100000_files_removes_everything(lab):
    lab.write_config(CONFIG)
    ok(nsctl("setup", "--job-id", "801", "--user", "nobody"))
    try:
        # 100 directories of 1000 files, some of them empty, some not, created by the job user.
        as_user(
            "801",
            '/usr/bin/python3 -c "'
            "import os\n"
            "for d in range(100):\n"
            "    os.mkdir(f'/tmp/d{d}')\n"
            "    for f in range(1000):\n"
            "        fd = os.open(f'/tmp/d{d}/f{f}', os.O_CREAT | os.O_WRONLY, 0o600)\n"
            "        if f % 10 == 0: os.write(fd, b'data')\n"
            "        os.close(fd)\n"
            '"',
        )
        backing = os.path.join(lab.base, "801", ".801", "_tmp")
        assert sum(len(files) for _, _, files in os.walk(backing)) == 100_000
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "801"))
    assert not os.path.lexists(os.path.join(lab.base, "801"))
    assert lab.job_files() == [] and lab.index_entries() == []
