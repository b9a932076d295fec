#!/usr/bin/env python3
"""Benchmark: `nsctl setup` + `nsctl teardown` of a default job next to the same work in shell.

nsctl runs as Slurm runs it: `nsctl-prolog` and `nsctl-epilog` with the job in SLURM_JOB_*.

The default job (CLONE_NEWNS only; /tmp bind-mounted from B/J/.J/_tmp, /dev/shm a fresh tmpfs)
is set up and torn down by nsctl, and by a shell script doing the same with util-linux:

  setup:    mkdir B/J; mount --bind B/J B/J; mount --make-rprivate B/J; mkdir .ns .J .J/_tmp;
            chown; touch .ns/mnt; unshare --mount=B/J/.ns/mnt --propagation private
            sh -c 'mount --bind B/J/.J/_tmp /tmp; mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm'
  teardown: umount -l B/J/.ns/mnt; umount -l B/J; rm -rf --one-file-system B/J

Each of the four commands runs as a fresh process, as a Prolog or Epilog would, N times,
interleaved (nsctl first in even rounds, shell first in odd ones) so drift in machine load hits
both alike; `python3 -I -S -c pass` (how the launchers start the interpreter) is timed in the
same rounds as the floor. Prints medians, minimums, each command's ratio to the floor and the
nsctl/shell ratio. The Epilog returns once the job's directory is moved aside and its deleter
detached (what Slurm waits for); the deleters finish before the benchmark checks for leftovers.

Inside a nested mount namespace `unshare --mount=FILE` fails at random with EINVAL (see
docs/slurm-lab.md, "A kernel fact"); the shell script retries it on the next CPU (taskset), as
nsctl does, and the number of retries is reported.

Needs root; re-executes itself under `unshare -m --propagation private` so nothing it mounts can
reach the host. Usage: python3 bench/bench_setup.py [--runs 30] [--nsctl PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

SHELL_SETUP = r"""
set -e
B=$1 J=$2 U=$3
mkdir -m 0700 "$B/$J"
mount --bind "$B/$J" "$B/$J"
mount --make-rprivate "$B/$J"
mkdir -m 0700 "$B/$J/.ns" "$B/$J/.$J" "$B/$J/.$J/_tmp"
chown "$U" "$B/$J/.$J"
chown "$U:root" "$B/$J/.$J/_tmp"
: > "$B/$J/.ns/mnt"
n=0 cpus=$(nproc)
until taskset -c $((n % cpus)) unshare --mount="$B/$J/.ns/mnt" --propagation private sh -ec \
    "mount --bind '$B/$J/.$J/_tmp' /tmp; mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm" \
    2>/dev/null; do
  n=$((n + 1))
  [ $n -lt 8 ]
done
echo $n
"""

SHELL_TEARDOWN = r"""
B=$1 J=$2
umount -l "$B/$J/.ns/mnt"
umount -l "$B/$J"
rm -rf --one-file-system "$B/$J"
"""

CONFIG = """defaults:
  base_path: {base}
  auto_base_path: true
"""


def sandbox(argv: list[str]) -> None:
    if os.environ.get("NSCTL_BENCH_SANDBOX") != "1":
        os.environ["NSCTL_BENCH_SANDBOX"] = "1"
        unshare = ["unshare", "-m", "--propagation", "private"]
        os.execvp("unshare", [*unshare, sys.executable, os.path.abspath(__file__), *argv])


def release_mounts(top: str) -> None:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        points = [line.split()[4] for line in handle if line.split()[4].startswith(top + "/")]
    for point in reversed(points):
        subprocess.run(["umount", "-l", point], capture_output=True)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    return elapsed, result.stdout


def nsctl_command(explicit: Optional[str]) -> list[str]:
    """The console script installed next to this interpreter (what a Prolog runs)."""
    if explicit:
        return [explicit]
    script = os.path.join(os.path.dirname(sys.executable), "nsctl")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "nsctl"]


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="rounds [30]")
    parser.add_argument("--nsctl", help="nsctl executable [the console script beside python]")
    parser.add_argument("--user", default="nobody", help="job user [nobody]")
    parser.add_argument("--dir", default="/var/tmp", help="where the base goes (not under /tmp)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    sandbox(argv)

    work = tempfile.mkdtemp(prefix="nsctl-bench-", dir=args.dir)
    os.chmod(work, 0o755)
    base_nsctl, base_shell = os.path.join(work, "base"), os.path.join(work, "shell")
    os.mkdir(base_shell, 0o755)
    config = os.path.join(work, "namespace.yaml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(CONFIG.format(base=base_nsctl))
    env = {
        **os.environ,
        "NSCTL_CONFIG": config,
        "NSCTL_RUN_DIR": os.path.join(work, "run"),
        "SLURMD_NODENAME": "bench",
    }
    nsctl = nsctl_command(args.nsctl)
    user = pwd.getpwnam(args.user)
    ids = {"SLURM_JOB_UID": str(user.pw_uid), "SLURM_JOB_GID": str(user.pw_gid)}
    times: dict[str, list[float]] = {
        k: [] for k in ("floor", "nsctl setup", "nsctl teardown", "shell setup", "shell teardown")
    }
    retries = 0

    def run_nsctl(job: str) -> None:
        # What Slurm runs: the Prolog/Epilog entry points, the job in the environment (slurmd
        # gives both SLURM_JOB_UID/GID and SLURM_JOB_USER).
        job_env = {**env, "SLURM_JOB_ID": job, "SLURM_JOB_USER": args.user, **ids}
        up, _ = timed([f"{nsctl[0]}-prolog"], job_env)
        down, _ = timed([f"{nsctl[0]}-epilog"], job_env)
        times["nsctl setup"].append(up)
        times["nsctl teardown"].append(down)

    def run_shell(job: str) -> None:
        nonlocal retries
        up, out = timed(["/bin/sh", "-c", SHELL_SETUP, "sh", base_shell, job, args.user], env)
        down, _ = timed(["/bin/sh", "-c", SHELL_TEARDOWN, "sh", base_shell, job], env)
        retries += int(out.strip() or 0)
        times["shell setup"].append(up)
        times["shell teardown"].append(down)

    try:
        run_nsctl("1")  # warm-up: fills the config cache, as the first job on a node does
        run_shell("1")
        for key in times:
            times[key].clear()
        retries = 0
        for n in range(args.runs):
            job = str(100 + n)
            times["floor"].append(timed([sys.executable, "-I", "-S", "-c", "pass"], env)[0])
            for step in (run_nsctl, run_shell) if n % 2 == 0 else (run_shell, run_nsctl):
                step(job)
        deadline = time.monotonic() + 60  # the Epilog's detached deleters
        while os.path.isdir(base_nsctl) and os.listdir(base_nsctl) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        leftovers = os.listdir(base_shell) + (
            os.listdir(base_nsctl) if os.path.isdir(base_nsctl) else []
        )
        release_mounts(work)  # after a failed step: let the files under them go too
        shutil.rmtree(work, ignore_errors=True)
    if leftovers:
        raise SystemExit(f"left behind: {leftovers}")

    def ms(values: list[float], how) -> str:
        return f"{how(values) * 1000:.1f} ms"

    print(f"Python {platform.python_version()}, Linux {platform.release()}, {os.cpu_count()} CPUs")
    print(f"load average {os.getloadavg()[0]:.1f}; {args.runs} rounds; nsctl = {' '.join(nsctl)}")
    print(f"shell unshare --mount=FILE retries after EINVAL: {retries} in {args.runs} setups\n")
    floor = statistics.median(times["floor"])
    cycle = {
        f"{who} setup+teardown": [
            u + d for u, d in zip(times[f"{who} setup"], times[f"{who} teardown"])
        ]
        for who in ("nsctl", "shell")
    }
    print(f"| {'command':<24} | {'median':>10} | {'min':>10} | {'x floor':>8} |")
    print(f"|{'-' * 26}|{'-' * 11}:|{'-' * 11}:|{'-' * 9}:|")
    for key, values in {**times, **cycle}.items():
        label = "python3 -I -S -c pass" if key == "floor" else key
        print(
            f"| {label:<24} | {ms(values, statistics.median):>10} | {ms(values, min):>10} | "
            f"{statistics.median(values) / floor:>8.2f} |"
        )
    nsctl, shell = cycle["nsctl setup+teardown"], cycle["shell setup+teardown"]
    ratio = statistics.median(nsctl) / statistics.median(shell)
    ratio_min = min(nsctl) / min(shell)
    print(f"\nnsctl / shell (setup+teardown): {ratio:.2f} by median, {ratio_min:.2f} by minimum")
    return 0


if __name__ == "__main__":
    sys.exit(main())
