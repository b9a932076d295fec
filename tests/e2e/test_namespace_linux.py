"""Slurm's own namespace/linux (26.05) runs in the lab, beside nsctl, from the same namespace.yaml.

The reference nsctl re-implements: these checks make sure the harness's ``linux`` mode gives
jobs what namespace/linux gives them, so parity tests can compare the two in one run. Debian
builds Slurm with multiple-slurmd support, so the job dir is ``B/<NodeName>/J``.
"""

from __future__ import annotations

import pytest
from slurmlab import Lab

pytestmark = pytest.mark.parametrize("lab", ["26.05"], indirect=True, ids=["slurm-26.05"])


@pytest.fixture
def linux(lab: Lab) -> Lab:
    lab.configure("linux")
    return lab


def test_a_job_under_namespace_linux_gets_a_private_tmp(linux: Lab) -> None:
    with linux.running_job("touch /tmp/file /dev/shm/file; ls -A /tmp /dev/shm") as job:
        job_dir = linux.nl_base / linux.node / job.job_id
        assert job_dir.is_dir(), sorted(p.name for p in linux.nl_base.rglob("*"))
        assert linux.mounts_under(str(job_dir)), linux.mounts_under(str(linux.nl_base))
    assert job.read().split() == ["/dev/shm:", "file", "/tmp:", "file"], job.read()
    assert not job_dir.exists() and not linux.mounts_under(str(linux.nl_base))


def test_namespace_linux_binds_every_jobs_namespace(linux: Lab) -> None:
    """Slurm's plugin does not retry the namespace-file bind that the kernel refuses at random
    in a nested mount namespace (slurm-lab.md); the lab burns namespace ids so that it never
    has to. Without the burn, 0 or 8 of these 12 jobs failed here (namespace/tmpfs too), as the
    lab's namespaces happened to get ids from a later per-CPU batch than a CPU's or not."""
    mark = linux.log_mark()
    results = [linux.srun("sh", "-c", "stat -c %a:%U /tmp") for _ in range(12)]
    assert [(r.returncode, r.stdout) for r in results] == [(0, f"700:{linux.user}\n")] * 12, [
        str(r) for r in results if r.returncode
    ]
    assert "Invalid argument" not in linux.logs_since(mark)
