#!/usr/bin/env python3
"""Benchmark of the configuration layer on a large namespace.yaml, next to `python3 -c pass`.

Generates a node_confs file (default 1,000 entries covering 100,000 nodes), then times, in one
run and interleaved (so drift in machine load hits every row alike):

  python3 -c pass                     the floor: interpreter start-up
  import nsctl.loader                 the runtime path's imports (what setup/teardown pay)
  nsctl show-config (warm)            cache hit: what every Prolog/Epilog pays per job
  nsctl show-config (cold)            cache emptied first: parse + full validation + resolve
  nsctl validate                      the admin's check
  nsctl validate --nodes ALL          plus the per-node report over every node

and prints medians with their ratio to `python3 -c pass`, then an in-process breakdown of the
cold path. Usage: python3 bench/bench_config.py [--runs 15] [--entries 1000] [--per-entry 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional


def generate(path: str, entries: int, per_entry: int) -> tuple[str, str]:
    """A realistic big file: every entry has its own base_path and two dir_confs."""
    width = len(str(entries * per_entry))
    lines = [
        "defaults:",
        "  base_path: /var/nsctl",
        "  clone_ns_flags: [CLONE_NEWPID]",
        "  clone_ns_epilog: /etc/slurm/ns_epilog",
        "node_confs:",
    ]
    for index in range(entries):
        low, high = index * per_entry + 1, (index + 1) * per_entry
        lines += [
            f'  - nodes: "n[{low:0{width}d}-{high:0{width}d}]"',
            "    options:",
            f"      base_path: /local/{index}",
            f"      clone_ns_script_wait: {index % 30}",
            "      dir_confs:",
            "        - path: /tmp",
            "          tmpfs: true",
            '          options: "noexec,nosuid,size=8g"',
            "        - path: /scratch/%u",
            "          base_path: /nvme/%n",
        ]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    last = f"n{entries * per_entry:0{width}d}"
    every = f"n[{1:0{width}d}-{entries * per_entry:0{width}d}]"
    return last, every


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def breakdown(path: str, node: str) -> list[tuple[str, float]]:
    """Best-of-3 in-process timings of each step of the cold path (imports already done)."""
    import yaml

    from nsctl import config
    from nsctl import validate as checker

    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    data = checker.check_text(text, path).data

    def best(func: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            func()
            times.append(time.perf_counter() - start)
        return min(times)

    return [
        (
            "yaml.load (CSafeLoader, for scale)",
            best(lambda: yaml.load(text, Loader=yaml.CSafeLoader)),
        ),
        (
            "parse (libyaml events to text scalars with positions)",
            best(lambda: checker.parse(text, path)),
        ),
        (
            "check_text (parse, read every key, all rules)",
            best(lambda: checker.check_text(text, path)),
        ),
        (f"resolve {node} (last entry)", best(lambda: config.resolve(data, node, node))),
    ]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command [15]")
    parser.add_argument("--entries", type=int, default=1000, help="node_confs entries [1000]")
    parser.add_argument("--per-entry", type=int, default=100, help="nodes per entry [100]")
    args = parser.parse_args(argv)

    python = sys.executable
    nsctl = shutil.which("nsctl")
    nsctl_cmd = [nsctl] if nsctl else [python, "-m", "nsctl"]
    work = tempfile.mkdtemp(prefix="nsctl-bench-")
    try:
        path = os.path.join(work, "namespace.yaml")
        last, every = generate(path, args.entries, args.per_entry)
        run_dir = os.path.join(work, "run")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "NSCTL_"))}
        env["NSCTL_RUN_DIR"] = run_dir
        show = [*nsctl_cmd, "show-config", "--config", path, "--node", last]

        def empty_cache() -> None:
            shutil.rmtree(os.path.join(run_dir, "cache"), ignore_errors=True)

        def fill_cache() -> None:
            timed(show, env)

        rows: list[tuple[str, list[str], Optional[Callable[[], None]]]] = [
            ("python3 -c pass", [python, "-c", "pass"], None),
            ('python3 -c "import nsctl.loader"', [python, "-c", "import nsctl.loader"], None),
            ("nsctl show-config (warm, cached)", show, fill_cache),
            ("nsctl show-config (cold, cache empty)", show, empty_cache),
            ("nsctl validate", [*nsctl_cmd, "validate", path], None),
            (
                f"nsctl validate --nodes (all {args.entries * args.per_entry:,})",
                [*nsctl_cmd, "validate", path, "--nodes", every],
                None,
            ),
        ]
        samples: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        for _ in range(args.runs):
            for label, command, prepare in rows:
                if prepare:
                    prepare()
                samples[label].append(timed(command, env))

        size = os.path.getsize(path)
        print(
            f"# {args.entries:,} node_confs entries covering {args.entries * args.per_entry:,} "
            f"nodes ({size / 1024:.0f} KiB); {args.runs} runs each, interleaved"
        )
        print(
            f"# Python {platform.python_version()} on {platform.system()} {platform.release()}, "
            f"{os.cpu_count()} CPUs; nsctl = {' '.join(nsctl_cmd)}"
        )
        floor = statistics.median(samples["python3 -c pass"])
        print()
        print("| command | median | min | x `python3 -c pass` |")
        print("|---|---:|---:|---:|")
        for label, _, _ in rows:
            median = statistics.median(samples[label])
            print(
                f"| `{label}` | {median * 1000:.0f} ms | {min(samples[label]) * 1000:.0f} ms "
                f"| {median / floor:.1f} |"
            )
        print()
        print("Cold path, in process (best of 3, imports excluded):")
        print()
        print("| step | time |")
        print("|---|---:|")
        for label, seconds in breakdown(path, last):
            print(f"| {label} | {seconds * 1000:.0f} ms |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
