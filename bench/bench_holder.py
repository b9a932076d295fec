#!/usr/bin/env python3
"""Benchmark: memory of the PID-namespace holder (RSS and PSS), next to `sleep infinity`.

Sets up JOBS jobs with CLONE_NEWPID at once (each gets its own holder, as on a busy node), then
reads /proc/PID/smaps_rollup of every holder: RSS (pages resident), PSS (resident pages divided
by the number of processes sharing them: the fair per-job cost) and USS (private pages: what
killing it frees). The same for JOBS `sleep infinity` processes, the baseline Slurm's own
plugin uses as its holder, and, when given with --holder (or built by `make -C
contrib/slurm/holder` in a temporary directory when a C compiler is present), the C holder.

Needs root; re-executes itself under `unshare -m --propagation private`.
Usage: python3 bench/bench_holder.py [--jobs 5] [--holder PATH]
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
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = """defaults:
  base_path: {base}
  auto_base_path: true
  clone_ns_flags: [CLONE_NEWPID]
"""


def sandbox(argv: list[str]) -> None:
    if os.environ.get("NSCTL_BENCH_SANDBOX") != "1":
        os.environ["NSCTL_BENCH_SANDBOX"] = "1"
        unshare = ["unshare", "-m", "--propagation", "private"]
        os.execvp("unshare", [*unshare, sys.executable, os.path.abspath(__file__), *argv])


def rollup(pid: int) -> dict[str, int]:
    """kB figures from /proc/PID/smaps_rollup."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0])
    values["Uss"] = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values


def wait_for_title(pid: int, prefix: bytes) -> None:
    """The holder is ready once it renamed itself (after exec and its few imports)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if handle.read().startswith(prefix):
                time.sleep(0.2)  # let it reach its sigwait loop
                return
        time.sleep(0.01)
    raise SystemExit(f"holder {pid} never named itself")


def build_c_holder(work: str) -> Optional[str]:
    source = os.path.join(HERE, "..", "contrib", "slurm", "holder")
    if not shutil.which(os.environ.get("CC", "gcc")):
        return None
    build = os.path.join(work, "holder-build")
    shutil.copytree(source, build)
    result = subprocess.run(["make", "-C", build], capture_output=True, text=True)
    path = os.path.join(build, "nsctl-holder")
    if result.returncode != 0 or not os.path.exists(path):
        print(f"(C holder not built: {result.stderr.strip()[:200]})")
        return None
    os.chmod(build, 0o755)
    return path


def measure_holders(
    env: dict[str, str], jobs: int, first_id: int, holder: Optional[str]
) -> list[dict[str, int]]:
    nsctl = [sys.executable, "-m", "nsctl"]
    extra = ["--holder", holder] if holder else []
    ids = [str(first_id + n) for n in range(jobs)]
    try:
        for job in ids:
            subprocess.run(
                [*nsctl, "setup", "--job-id", job, "--user", "nobody", *extra],
                env=env,
                check=True,
                capture_output=True,
            )
        pids = []
        for job in ids:
            with open(os.path.join(env["NSCTL_RUN_DIR"], "jobs", job), encoding="utf-8") as f:
                entry = dict(line.split("=", 1) for line in f.read().splitlines())
            pids.append(int(entry["holder_pid"]))
            wait_for_title(pids[-1], f"nsctl: [{job}:".encode())
        return [rollup(pid) for pid in pids]
    finally:
        for job in ids:
            subprocess.run(
                [*nsctl, "teardown", "--job-id", job], env=env, check=False, capture_output=True
            )


def measure_sleep(jobs: int) -> list[dict[str, int]]:
    procs = [subprocess.Popen(["sleep", "infinity"], start_new_session=True) for _ in range(jobs)]
    try:
        time.sleep(0.2)
        return [rollup(proc.pid) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="holders alive at once [5]")
    parser.add_argument("--holder", help="a C holder binary to measure as well")
    parser.add_argument("--dir", default="/var/tmp", help="where the base goes (not under /tmp)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    sandbox(argv)

    work = tempfile.mkdtemp(prefix="nsctl-bench-holder-", dir=args.dir)
    os.chmod(work, 0o755)
    config = os.path.join(work, "namespace.yaml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(CONFIG.format(base=os.path.join(work, "base")))
    env = {
        **os.environ,
        "NSCTL_CONFIG": config,
        "NSCTL_RUN_DIR": os.path.join(work, "run"),
        "SLURMD_NODENAME": "bench",
    }
    try:
        rows = {"sleep infinity": measure_sleep(args.jobs)}
        rows["nsctl holder (Python)"] = measure_holders(env, args.jobs, 100, None)
        c_holder = args.holder or build_c_holder(work)
        if c_holder:
            rows["nsctl holder (C, --holder)"] = measure_holders(env, args.jobs, 200, c_holder)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.jobs} processes of each kind alive at once; median per process, kB\n")
    print(f"| {'process':<28} | {'RSS':>7} | {'PSS':>7} | {'USS':>7} |")
    print(f"|{'-' * 30}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|")
    for label, values in rows.items():
        cells = [statistics.median(v[key] for v in values) for key in ("Rss", "Pss", "Uss")]
        print(f"| {label:<28} | {cells[0]:>7.0f} | {cells[1]:>7.0f} | {cells[2]:>7.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
