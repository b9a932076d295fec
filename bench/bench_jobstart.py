"""Job-start cost users feel: N sequential `srun -Q true` with (a) no isolation, (b) Slurm's own
job_container/tmpfs, (c) nsctl, all in one run on the one-node lab of tests/e2e/slurmlab.py.

End-to-end srun times are quantised by srun's readiness polling (slurm-lab.md: costs under ~85 ms
are invisible, past it srun jumps by ~200 ms), so the per-job time each mechanism adds is also
read from the daemons' logs (SlurmdDebug=debug, 1 ms resolution):

  start  slurmctld "Allocate JobId=J" -> slurmd "[J.extern] Message thread started"
         (Prolog, then the extern step; job_container/tmpfs builds its namespace in that step)
  task   slurmctld "Allocate JobId=J" -> slurmd "[J.0] task 0 (...) started"
  end    slurmd "_rpc_terminate_job ... JobId=J" -> slurmd "completed epilog for jobid J"
         (job_container/tmpfs tears down in the extern step, nsctl in the Epilog; the node takes
         the next job only after this)

Run as root:  python3 bench/bench_jobstart.py [-n 50] [--plot bench/jobstart.png] [--slurm 26.05]
(Each srun is started in the lab through nsenter, which adds the same few ms to every mode.)
Needs matplotlib for the plot (pip install matplotlib; not a dependency of nsctl).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import slurmlab  # noqa: E402

MODES = {"none": "(a) no isolation", "tmpfs": "(b) job_container/tmpfs", "nsctl": "(c) nsctl"}
STAMP = r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] "


def stamp(text: str, pattern: str) -> dict[str, float]:
    """job id -> time (s) of the first log line matching pattern (which captures the job id)."""
    found: dict[str, float] = {}
    for match in re.finditer(STAMP + pattern, text, re.M):
        job = match.group(2)
        if job not in found:
            found[job] = datetime.fromisoformat(match.group(1)).timestamp()
    return found


def log_phases(slurmd: str, slurmctld: str, jobs: list[str]) -> dict[str, list[float]]:
    alloc = stamp(slurmctld, r"sched: Allocate JobId=(\d+) ")
    extern = stamp(slurmd, r"\[(\d+)\.extern\] debug:  Message thread started")
    task = stamp(slurmd, r"\[(\d+)\.0\] task 0 \(\d+\) started")
    term = stamp(slurmd, r"debug:  _rpc_terminate_job: uid = \d+ JobId=(\d+)")
    done = stamp(slurmd, r"debug:  completed epilog for jobid (\d+)")
    phases: dict[str, list[float]] = {"start": [], "task": [], "end": []}
    for job in jobs:
        if job in alloc and job in extern:
            phases["start"].append((extern[job] - alloc[job]) * 1000)
        if job in alloc and job in task:
            phases["task"].append((task[job] - alloc[job]) * 1000)
        if job in term and job in done:
            phases["end"].append((done[job] - term[job]) * 1000)
    return phases


def run_mode(lab: slurmlab.Lab, mode: str, count: int, warmup: int) -> dict:
    lab.configure(mode)
    for _ in range(warmup):
        lab.srun("true")
    mark = lab.log_mark()
    ctld_log = lab.log_dir / "slurmctld.log"
    ctld_mark = ctld_log.stat().st_size
    walls, jobs = [], []
    for _ in range(count):
        begin = time.perf_counter()
        res = lab.srun("sh", "-c", "echo $SLURM_JOB_ID")  # `true` that tells its job id
        walls.append((time.perf_counter() - begin) * 1000)
        if res.returncode != 0:
            raise slurmlab.LabError(f"srun failed in mode {mode}: {res}")
        jobs.append(res.stdout.strip())
    lab.wait_job_gone(jobs[-1])
    time.sleep(0.5)  # let the last Epilog's log lines land
    with open(ctld_log, encoding="utf-8", errors="replace") as handle:
        handle.seek(ctld_mark)
        ctld_text = handle.read()
    return {"wall": walls, **log_phases(lab.logs_since(mark), ctld_text, jobs)}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def plot(results: dict, path: Path, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [MODES[m] for m in results]
    left.boxplot([results[m]["wall"] for m in results], showfliers=True)
    left.set_xticks(range(1, len(labels) + 1), labels)
    for i, mode in enumerate(results, start=1):
        walls = results[mode]["wall"]
        left.scatter([i + (j % 7 - 3) * 0.03 for j in range(len(walls))], walls, s=6, alpha=0.5)
    left.set_ylabel("ms")
    left.set_title(f"srun -Q true, wall time ({count} sequential jobs each)")
    width = 0.35
    xs = range(len(labels))
    starts = [median(results[m]["start"]) for m in results]
    ends = [median(results[m]["end"]) for m in results]
    right.bar([x - width / 2 for x in xs], starts, width, label="allocate -> extern step ready")
    right.bar([x + width / 2 for x in xs], ends, width, label="job end -> epilog complete")
    right.set_xticks(list(xs), labels)
    right.set_ylabel("ms (median, from slurmd/slurmctld logs)")
    right.set_title("Where the time goes, per job")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="jobs per mode [50]")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("jobstart.png"))
    parser.add_argument("--slurm", choices=slurmlab.VERSIONS, default="22.05", help="[22.05]")
    args = parser.parse_args()

    lab = slurmlab.Lab(args.slurm)
    results = {}
    leftovers: list[str] = []
    try:
        lab.prepare()
        namespaces = lab.recorded_namespaces()
        for mode in MODES:
            results[mode] = run_mode(lab, mode, args.n, args.warmup)
        lab.cancel_all()
        leftovers = lab.leftovers()
    finally:
        lab.stop()
    leftovers += lab.host_leftovers(namespaces)
    if leftovers:
        raise SystemExit("the lab leaked: " + "; ".join(leftovers))

    print(f"{args.n} sequential `srun -Q true` per mode, Slurm {args.slurm}, one node, 2 cores")
    print(f"{'mode':28} {'wall median':>12} {'p90':>8} {'start':>8} {'task':>8} {'end':>8}  (ms)")
    for mode, res in results.items():
        walls = sorted(res["wall"])
        p90 = walls[int(0.9 * (len(walls) - 1))]
        print(
            f"{MODES[mode]:28} {median(walls):12.1f} {p90:8.1f} {median(res['start']):8.1f} "
            f"{median(res['task']):8.1f} {median(res['end']):8.1f}"
        )
    wall = {m: median(r["wall"]) for m, r in results.items()}
    print(f"ratio c/b (nsctl / job_container/tmpfs) = {wall['nsctl'] / wall['tmpfs']:.2f}")
    print(f"ratio c/a (nsctl / no isolation)        = {wall['nsctl'] / wall['none']:.2f}")
    for mode in ("tmpfs", "nsctl"):
        added_start = median(results[mode]["start"]) - median(results["none"]["start"])
        added_end = median(results[mode]["end"]) - median(results["none"]["end"])
        print(
            f"per-job time added by {MODES[mode]} (logs, vs no isolation): "
            f"start +{added_start:.0f} ms, end +{added_end:.0f} ms"
        )
    plot(results, args.plot, args.n)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
