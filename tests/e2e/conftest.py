"""Real Slurm clusters for the e2e session, one per Slurm version; they must leave nothing behind.

Every e2e test runs once per version (``lab``: a session-scoped one-node cluster for each of
slurmlab.VERSIONS, ids ``slurm-22.05`` ...); test_multinode.py has a three-node cluster per
version (``cluster3``). Each lab is built on first use (its Debian root is made with debootstrap
when it is not cached yet) and stopped when pytest moves on to the next version. These tests need
root; they fail, never skip, when the machine cannot run them: CI has to prove the real thing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slurmlab  # noqa: E402

IDS = [f"slurm-{version}" for version in slurmlab.VERSIONS]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


STARTED: list[tuple[slurmlab.Lab, dict[str, set[int]]]] = []  # every lab of the session


@pytest.fixture(scope="session", autouse=True)
def host_stays_clean() -> Iterator[None]:
    """After the session (every lab stopped): nothing of any lab is left on the host, neither
    a process in one of their namespaces, nor a mount under the lab directories or the cached
    roots, nor an entry naming a lab in the host's /run/nsctl."""
    yield
    problems = [p for cluster, namespaces in STARTED for p in cluster.host_leftovers(namespaces)]
    for mountinfo in ("/proc/self/mountinfo", "/proc/1/mountinfo"):
        for prefix in (str(slurmlab.LAB_PARENT), str(slurmlab.roots.CACHE)):
            problems += [
                f"mount {m} ({mountinfo})" for m in slurmlab.mounts_under(prefix, mountinfo)
            ]
    assert not problems, "the e2e labs leaked onto the host:\n" + "\n".join(sorted(set(problems)))


def run_lab(cluster: slurmlab.Lab) -> Iterator[slurmlab.Lab]:
    """Bring a lab up, hand it to the tests, and check that it leaves nothing: in the lab while
    it still runs (jobs' mounts, index entries, holders), then on the host once it stopped."""
    if os.geteuid() != 0:
        pytest.fail("the e2e tests need root (they start slurmd and mount namespaces)")
    problems: list[str] = []
    namespaces: dict[str, set[int]] = {}
    try:
        cluster.prepare()
        namespaces = cluster.recorded_namespaces()
        STARTED.append((cluster, namespaces))
        yield cluster
        if cluster.daemons_alive():
            cluster.cancel_all()
        problems = cluster.leftovers()
    finally:
        namespaces = namespaces or cluster.recorded_namespaces()
        cluster.stop()
    problems += cluster.host_leftovers(namespaces)
    assert not problems, f"the e2e lab {cluster.name} leaked:\n" + "\n".join(problems)


@pytest.fixture(scope="session", params=slurmlab.VERSIONS, ids=IDS)
def lab(request: pytest.FixtureRequest) -> Iterator[slurmlab.Lab]:
    yield from run_lab(slurmlab.Lab(request.param))


@pytest.fixture(scope="session")
def observations(lab: slurmlab.Lab) -> dict[str, dict[str, object]]:
    """What each isolation mode showed on this version, for the parity comparison."""
    return {}


def cgroup_node(prefix: str) -> str:
    """A node name no other lab uses (the prefix and this test run's pid), for a lab with
    configure(cgroups=True): the host's cgroup v1 hierarchies are shared by every lab, and
    Slurm's cgroups are named after the node (slurm_<NodeName>). Clears what a killed run
    with this prefix left (its labs' processes died with it)."""
    for stale in slurmlab.CGROUP_ROOT.glob(f"*/slurm_{prefix}*"):
        pid = stale.name.removeprefix(f"slurm_{prefix}")
        if pid.isdigit() and not slurmlab.pid_alive(int(pid)):
            slurmlab.remove_cgroups([stale])
    return f"{prefix}{os.getpid()}"


@pytest.fixture(scope="session", params=slurmlab.VERSIONS, ids=IDS)
def cgroup_lab(request: pytest.FixtureRequest) -> Iterator[slurmlab.Lab]:
    """A one-node cluster for configure(cgroups=True); stop() removes its cgroups."""
    version = request.param
    node = cgroup_node(f"cg{version.replace('.', '')}x")
    yield from run_lab(slurmlab.Lab(version, nodes=(node,), name=f"slurm-{version}-cg"))


@pytest.fixture(scope="session", params=slurmlab.VERSIONS, ids=IDS)
def cluster3(request: pytest.FixtureRequest) -> Iterator[slurmlab.Lab]:
    """Three slurmd nodes n1, n2, n3 (own hostnames, addresses, /run, local disk) and one
    slurmctld."""
    yield from run_lab(slurmlab.Lab(request.param, nodes=("n1", "n2", "n3")))


@pytest.fixture(scope="module", params=slurmlab.VERSIONS, ids=IDS)
def pam_lab(request: pytest.FixtureRequest) -> Iterator[slurmlab.Lab]:
    """A one-node lab of its own for test_pam.py, with proctrack/cgroup (its node name its
    own, see cgroup_node)."""
    node = cgroup_node(f"pam{request.param.replace('.', '')}x")
    lab = slurmlab.Lab(request.param, nodes=(node,), hostnames=("pamnode",),
                       name=f"pam-{request.param}")  # fmt: skip
    yield from run_lab(lab)
