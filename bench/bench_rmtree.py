"""Benchmark nsctl.rmtree.remove_tree against ``rm -rf --one-file-system`` on the same trees.

Usage::

    python3 bench/bench_rmtree.py                      # 10^4, 10^5, 10^6 files, 4 rounds each
    python3 bench/bench_rmtree.py --sizes 10000,100000 --rounds 5 --dir /var/tmp

Each round builds two identical trees and removes one with each tool, alternating which goes
first; the report gives per-tool medians and the ratio nsctl/rm (below 1.0 = nsctl faster).
Trees are made of leaf directories of 100 empty files, grouped 100 leaves per group directory
(10^6 files = 100 groups x 100 leaves x 100 files), a shape like an unpacked source tree.

The trees must be on a real disk filesystem, not tmpfs (a job's backing directories live on
the node's disk), so --dir defaults to /var/tmp. Creating an inode costs far more than removing
one on some virtual disks, so trees are built by many threads at once, each in its own leaf
directory (creations in one directory serialise on its lock). Before every timed removal the
filesystem is synced, so that neither tool pays for the other's deferred writes. The default
run takes about 20 minutes on a 2-cpu VM, nearly all of it building the 10^6-file trees.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from nsctl.rmtree import remove_tree

FILES_PER_LEAF = 100
LEAVES_PER_GROUP = 100
BUILD_THREADS = 64


def _make_leaf(job: tuple[str, int]) -> None:
    path, nfiles = job
    os.makedirs(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(nfiles):
            os.mknod(f"f{i:03d}", stat.S_IFREG | 0o600, dir_fd=fd)
    finally:
        os.close(fd)


def build_tree(root: str, nfiles: int) -> None:
    jobs = []
    left = nfiles
    leaf = 0
    while left > 0:
        group, index = divmod(leaf, LEAVES_PER_GROUP)
        count = min(FILES_PER_LEAF, left)
        jobs.append((os.path.join(root, f"g{group:03d}", f"d{index:02d}"), count))
        left -= count
        leaf += 1
    os.makedirs(root)
    with ThreadPoolExecutor(BUILD_THREADS) as pool:
        list(pool.map(_make_leaf, jobs))


def _nsctl(root: str) -> None:
    result = remove_tree(root)
    if not result.ok:
        raise SystemExit(f"nsctl remove_tree left things behind: {result}")


def _rm(root: str) -> None:
    subprocess.run(["rm", "-rf", "--one-file-system", root], check=True)


TOOLS: dict[str, Callable[[str], None]] = {"nsctl": _nsctl, "rm": _rm}


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (longest mount point prefix)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            mount_point = fields[4]
            fstype = fields[fields.index("-") + 1]
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, kind = mount_point, fstype
    return kind


def timed_removal(tool: str, root: str) -> float:
    os.sync()
    start = time.perf_counter()
    TOOLS[tool](root)
    elapsed = time.perf_counter() - start
    if os.path.lexists(root):
        raise SystemExit(f"{tool} did not remove {root}")
    return elapsed


def bench_size(work: str, nfiles: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    for rnd in range(rounds):
        order = list(TOOLS) if rnd % 2 == 0 else list(reversed(TOOLS))
        roots = {tool: os.path.join(work, f"{tool}-{nfiles}-{rnd}") for tool in order}
        started = time.perf_counter()
        for root in roots.values():
            build_tree(root, nfiles)
        built = time.perf_counter() - started
        for tool in order:
            times[tool].append(timed_removal(tool, roots[tool]))
        print(
            f"  round {rnd + 1}/{rounds}: built 2 trees in {built:.1f}s; "
            + ", ".join(f"{tool} {times[tool][-1]:.3f}s" for tool in order),
            flush=True,
        )
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="timed removals per tool and size (even: each tool goes first as often) [4]",
    )
    parser.add_argument("--dir", default="/var/tmp", help="where to build (not tmpfs)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]

    kind = fs_type(args.dir)
    if kind == "tmpfs":
        parser.error(f"{args.dir} is tmpfs; give a directory on a disk filesystem")
    work = tempfile.mkdtemp(prefix="bench-rmtree-", dir=args.dir)
    print(f"building under {work} ({kind}), {os.cpu_count()} cpus, {args.rounds} rounds")
    summary = []
    try:
        for nfiles in sizes:
            print(f"{nfiles} files:", flush=True)
            times = bench_size(work, nfiles, args.rounds)
            medians = {tool: statistics.median(samples) for tool, samples in times.items()}
            summary.append((nfiles, medians))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'files':>9} {'nsctl s':>9} {'rm s':>9} {'nsctl/rm':>9} {'nsctl us/file':>14}")
    for nfiles, medians in summary:
        ratio = medians["nsctl"] / medians["rm"]
        per_file = medians["nsctl"] / nfiles * 1e6
        print(
            f"{nfiles:>9} {medians['nsctl']:>9.3f} {medians['rm']:>9.3f} {ratio:>9.2f} "
            f"{per_file:>14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
