"""One real Slurm cluster for the whole e2e session; it must leave nothing behind.

These tests need root and install Debian's Slurm when it is missing. They fail, never skip, when
the machine cannot run them: CI has to prove the real thing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slurmlab  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab() -> Iterator[slurmlab.Lab]:
    if os.geteuid() != 0:
        pytest.fail("the e2e tests need root (they start slurmd and mount namespaces)")
    cluster = slurmlab.Lab()
    try:
        cluster.prepare()
        yield cluster
    finally:
        cluster.stop()
    leftovers = cluster.leftovers()
    assert not leftovers, "the e2e lab leaked onto the host:\n" + "\n".join(leftovers)


@pytest.fixture(scope="session")
def observations() -> dict[str, dict[str, object]]:
    """What each isolation mode showed, for the parity comparison at the end of the run."""
    return {}
