"""Job-start cost users feel: sequential `srun -Q true` with no isolation, with Slurm's own C
plugin, and with nsctl, in alternating blocks on the one-node lab of tests/e2e/slurmlab.py.

Slurm's own plugin is job_container/tmpfs on 22.05 and 24.11 and namespace/linux on 26.05 (the
plugin nsctl re-implements). Each version runs its three modes in blocks of --block jobs,
rotating which mode goes first, so drifts in machine load hit every mode alike; every figure is
reported as a ratio to no isolation from the same run.

End-to-end srun times are quantised by srun's readiness polling (slurm-lab.md: costs under ~85 ms
are invisible, past it srun jumps by ~200 ms), so the per-job time each mechanism adds is also
read from the daemons' logs (SlurmdDebug=debug, 1 ms resolution):

  start  slurmctld "Allocate JobId=J" -> slurmd "[J.extern] ... Message thread started"
         (the Prolog, then the extern step; Slurm's plugins build their namespace in that step)
  task   slurmctld "Allocate JobId=J" -> slurmd "[J.0] task 0 (...) started"
  end    slurmd "_rpc_terminate_job ... JobId=J" -> slurmd "completed epilog for jobid J"
         (Slurm's plugins tear down in the extern step, nsctl in the Epilog; the node takes the
         next job only after this)

Two more modes split nsctl's cost: "Prolog/Epilog /bin/true" (what slurmd's running of any
Prolog and Epilog costs) and "Prolog/Epilog python -I -S" (scripts that only start nsctl's
interpreter the way its launchers do: the floor of any Python Prolog).

Run as root:  python3 bench/bench_jobstart.py [--slurm 22.05 24.11 26.05] [-n 60] [--block 10]
(Each srun is started in the lab through nsenter, which adds the same few ms to every mode.)
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

STAMP = r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] "
PHASES = ("start", "task", "end")


def builtin_mode(version: str) -> str:
    return "linux" if version == "26.05" else "tmpfs"


def label(mode: str) -> str:
    return {
        "none": "no isolation",
        "true": "Prolog/Epilog /bin/true",
        "python": "Prolog/Epilog python -I -S",
        "tmpfs": "job_container/tmpfs",
        "linux": "namespace/linux",
        "nsctl": "nsctl",
    }[mode]


def configure(lab: slurmlab.Lab, mode: str) -> None:
    """Two modes beside the three compared split nsctl's cost: ``true`` (a Prolog and an Epilog
    that do nothing: what slurmd's running of a script costs) and ``python`` (scripts that start
    nsctl's interpreter as its launchers do and exit: the interpreter's floor inside slurmd)."""
    if mode not in ("true", "python"):
        lab.configure(mode)
        return
    script = "/bin/true"
    if mode == "python":
        python = Path(lab.nsctl).with_name("python")
        path = lab.bin / "python-pass"
        path.write_text(f"#!{python} -IS\n")
        path.chmod(0o755)
        script = str(path)
    lab.configure("none", extra_conf=(f"Prolog={script}", f"Epilog={script}"))


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
    marks = {
        "start": stamp(slurmd, r"\[(\d+)\.extern\] (?:debug:  )?Message thread started"),
        "task": stamp(slurmd, r"\[(\d+)\.0\] task 0 \(\d+\) started"),
    }
    # 22.05, 24.11: "uid = N JobId=J", "for jobid J"; 26.05: "starting for JobId=J", "for JobId=J"
    term = stamp(slurmd, r"debug:  _rpc_terminate_job: (?:uid = \d+|starting for) JobId=(\d+)")
    done = stamp(slurmd, r"debug:  completed epilog for (?:jobid |JobId=)(\d+)")
    phases: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for job in jobs:
        for phase, seen in marks.items():
            if job in alloc and job in seen:
                phases[phase].append((seen[job] - alloc[job]) * 1000)
        if job in term and job in done:
            phases["end"].append((done[job] - term[job]) * 1000)
    return phases


def run_block(lab: slurmlab.Lab, mode: str, count: int, warmup: int) -> dict[str, list[float]]:
    configure(lab, mode)
    for _ in range(warmup):
        lab.srun("true")
    lab.cancel_all()
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


def run_version(version: str, count: int, block: int, warmup: int) -> dict[str, dict]:
    modes = ["none", "true", "python", builtin_mode(version), "nsctl"]
    results = {mode: {"wall": [], **{phase: [] for phase in PHASES}} for mode in modes}
    lab = slurmlab.Lab(version)
    leftovers: list[str] = []
    try:
        lab.prepare()
        namespaces = lab.recorded_namespaces()
        for number in range((count + block - 1) // block):
            order = modes[number % len(modes) :] + modes[: number % len(modes)]
            for mode in order:
                for key, values in run_block(lab, mode, block, warmup).items():
                    results[mode][key] += values
        lab.cancel_all()
        leftovers = lab.leftovers()
    finally:
        lab.stop()
    leftovers += lab.host_leftovers(namespaces)
    if leftovers:
        raise SystemExit("the lab leaked: " + "; ".join(leftovers))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(version: str, results: dict[str, dict]) -> list[str]:
    jobs = len(results["none"]["wall"])
    lines = [
        f"Slurm {version}: {jobs} sequential `srun -Q true` per mode, one node, 2 cores",
        "",
        "| mode | wall median | p90 | x no isolation | start | task | end |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = median(results["none"]["wall"])
    for mode, res in results.items():
        walls = sorted(res["wall"])
        p90 = walls[int(0.9 * (len(walls) - 1))]
        phases = " | ".join(f"{median(res[phase]):.0f} ms" for phase in PHASES)
        lines.append(
            f"| {label(mode)} | {median(walls):.1f} ms | {p90:.1f} ms | "
            f"{median(walls) / base:.2f} | {phases} |"
        )
    builtin = builtin_mode(version)
    nsctl, own = median(results["nsctl"]["wall"]), median(results[builtin]["wall"])
    lines += [
        "",
        f"nsctl / no isolation = {nsctl / base:.2f}; {label(builtin)} / no isolation = "
        f"{own / base:.2f}; nsctl / {label(builtin)} = {nsctl / own:.2f}",
    ]
    for mode in (builtin, "nsctl"):
        added = {
            phase: median(results[mode][phase]) - median(results["none"][phase]) for phase in PHASES
        }
        lines.append(
            f"per job, added by {label(mode)} (logs, vs no isolation): start "
            f"{added['start']:+.0f} ms, task {added['task']:+.0f} ms, end {added['end']:+.0f} ms"
        )
    wall = {mode: median(results[mode]["wall"]) for mode in results}
    shares = [
        ("slurmd running a Prolog and an Epilog", "true", "none"),
        ("an interpreter starting in each", "python", "true"),
        ("nsctl (its wrapper scripts, setup, TaskProlog, SPANK, teardown)", "nsctl", "python"),
    ]
    lines.append(
        "where nsctl's added wall time goes, as fractions of no isolation: "
        + "; ".join(f"{what} {(wall[a] - wall[b]) / base:+.2f}" for what, a, b in shares)
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    versions = list(slurmlab.VERSIONS)
    parser.add_argument("--slurm", nargs="+", choices=versions, default=versions, help="[all]")
    parser.add_argument("-n", type=int, default=60, help="jobs per mode and version [60]")
    parser.add_argument("--block", type=int, default=10, help="jobs per block [10]")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured jobs per block [2]")
    args = parser.parse_args()

    all_results = {}
    for version in args.slurm:
        all_results[version] = run_version(version, args.n, args.block, args.warmup)
        print("\n".join(report(version, all_results[version])) + "\n", flush=True)


if __name__ == "__main__":
    main()
