#!/usr/bin/env python3
"""Benchmark: the Epilog's wall time for a job that left 10^6 files, next to an empty job's.

The Epilog (`nsctl-epilog`, as Slurm runs it) unmounts the job's namespaces, moves its trees
aside and returns; a detached process at idle priority deletes them. So its wall time must not
grow with the number of files: the figure is the ratio of the two medians (goal: at most 2),
measured in the same run, in alternating rounds (the full job first in even rounds). Between
rounds the background deletion is waited for, so it never overlaps a measured Epilog; its own
duration is reported too, next to `--wait` (the synchronous mode) for one round.

Needs root; re-executes itself under `unshare -m --propagation private` so nothing it mounts can
reach the host. Usage: python3 bench/bench_epilog.py [--files 1000000] [--rounds 5] [--nsctl PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = "defaults:\n  base_path: {base}\n  auto_base_path: true\n"


def sandbox(argv: list[str]) -> None:
    if os.environ.get("NSCTL_BENCH_SANDBOX") != "1":
        os.environ["NSCTL_BENCH_SANDBOX"] = "1"
        unshare = ["unshare", "-m", "--propagation", "private"]
        os.execvp("unshare", [*unshare, sys.executable, os.path.abspath(__file__), *argv])


def run(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def fill(backing: str, count: int) -> None:
    """count empty files in 1,000-file directories (as a job's scratch usually is)."""
    for start in range(0, count, 1000):
        top = os.path.join(backing, f"d{start // 1000}")
        os.mkdir(top)
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(start, min(start + 1000, count)):
                os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        finally:
            os.close(fd)


def wait_empty(base: str, timeout: float = 3600) -> float:
    started = time.perf_counter()
    while os.listdir(base):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"the background deletion did not finish in {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nsctl", default=shutil.which("nsctl") or "nsctl")
    args = parser.parse_args()
    sandbox(sys.argv[1:])
    bindir = os.path.dirname(os.path.realpath(args.nsctl)) if "/" in args.nsctl else ""
    prolog = os.path.join(bindir, "nsctl-prolog")
    epilog = os.path.join(bindir, "nsctl-epilog")
    work = tempfile.mkdtemp(prefix="nsctl-bench-epilog-", dir="/var/tmp")
    os.chmod(work, 0o755)
    base = os.path.join(work, "base")
    with open(os.path.join(work, "ns.yaml"), "w", encoding="utf-8") as handle:
        handle.write(CONFIG.format(base=base))
    env = {
        "PATH": "/usr/bin:/bin",
        "NSCTL_CONFIG": os.path.join(work, "ns.yaml"),
        "NSCTL_RUN_DIR": os.path.join(work, "run"),
        "SLURMD_NODENAME": "bench",
        "SLURM_JOB_UID": "65534",
        "SLURM_JOB_GID": "65534",
        "SLURM_JOB_USER": "nobody",
    }
    times: dict[str, list[float]] = {"empty": [], "full": []}
    background: list[float] = []
    job = 0
    try:
        for round_ in range(args.rounds):
            for kind in ("full", "empty") if round_ % 2 == 0 else ("empty", "full"):
                job += 1
                jenv = {**env, "SLURM_JOB_ID": str(job)}
                subprocess.run([prolog], env=jenv, check=True, stderr=subprocess.DEVNULL)
                if kind == "full":
                    fill(os.path.join(base, str(job), f".{job}", "_tmp"), args.files)
                times[kind].append(run([epilog], jenv))
                took = wait_empty(base)
                if kind == "full":
                    background.append(took)
        job += 1
        jenv = {**env, "SLURM_JOB_ID": str(job)}
        subprocess.run([prolog], env=jenv, check=True, stderr=subprocess.DEVNULL)
        fill(os.path.join(base, str(job), f".{job}", "_tmp"), args.files)
        synchronous = run([epilog, "--wait"], jenv)
    finally:
        subprocess.run(["umount", "-R", "-l", base], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    empty, full = statistics.median(times["empty"]), statistics.median(times["full"])
    print(f"{args.rounds} rounds; {args.files} files; nsctl-epilog = {epilog}")
    print()
    print("| Epilog of a job                          |     median |        min |")
    print("|------------------------------------------|-----------:|-----------:|")
    for label, kind in (("with no files", "empty"), (f"with {args.files} files", "full")):
        values = times[kind]
        print(
            f"| {label:<40} | {statistics.median(values) * 1e3:7.1f} ms "
            f"| {min(values) * 1e3:7.1f} ms |"
        )
    print()
    print(f"Epilog(full) / Epilog(empty): {full / empty:.2f} by median (goal: at most 2)")
    print(
        f"background deletion of {args.files} files: {statistics.median(background):.1f} s "
        f"(median); the same deletion inside the Epilog (--wait): {synchronous:.1f} s"
    )


if __name__ == "__main__":
    main()
