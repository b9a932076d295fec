"""``nsctl gc``: collect what crashes and reboots left, and never what a live job uses.

The counterpart of Slurm's restore at slurmd start (which deletes every numeric ``B/J`` whose
job has no slurmstepd): nsctl gc removes the nsctl job directories of this node (``B/J`` and
``D/J``, found in the config's base paths and in the ones index entries name) that belong to no
running job, runs ``clone_ns_epilog`` for them as Slurm does, removes stale index entries, and
finishes deletions a crash or a reboot interrupted. It keeps:

- a directory without nsctl's mark (Slurm's own plugin may share the base path);
- a live job (set up, its namespaces bound, its holder alive), and one whose setup or teardown
  holds its lock now;
- a job Slurm says runs on this node (when Slurm answers);
- a job whose directories are still mounted in some process's mount namespace (a task, or a
  container a task made, keeps using them after the ``.ns`` files are gone), and a half-built
  one with any process but its holder inside.

Each job is judged again while its lock is held, right before anything is removed, so a setup
that starts meanwhile is never undone.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from . import engine, inventory, plan, procfs
from .config import NodeConfig
from .layout import index_path
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Callable, Optional

    from .log import Log

SLURM_TIMEOUT = 10.0  # seconds squeue may take before Slurm counts as unreachable
RUNNING_STATES = "CF,R,CG,S,ST"  # configuring, running, completing, suspended, stopped


class Decision(Record):
    record: inventory.JobRecord
    collect: bool
    reason: str


def slurm_jobs_here(node: str, env: Mapping[str, str]) -> Optional[set[str]]:
    """The ids of the jobs Slurm says run on this node, or None when Slurm cannot say."""
    squeue = shutil.which("squeue", path=env.get("PATH") or "/usr/bin:/bin:/usr/sbin:/sbin")
    if squeue is None:
        return None
    try:
        result = subprocess.run(
            [
                squeue,
                "--noheader",
                f"--nodelist={node}",
                "--format=%A",
                f"--states={RUNNING_STATES}",
            ],
            capture_output=True,
            text=True,
            timeout=SLURM_TIMEOUT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return {line.strip() for line in result.stdout.splitlines() if line.strip().isdigit()}


def decide(record: inventory.JobRecord, running: Optional[set[str]]) -> Decision:
    def keep(reason: str) -> Decision:
        return Decision(record, False, reason)

    if record.made_by == "slurm":
        return keep("made by Slurm's own namespace plugin")
    if record.busy:
        return keep("its setup or teardown is running now")
    if record.state == "live":
        return keep("live")
    if running is not None and record.job_id in running:
        return keep("Slurm runs it on this node")
    mnt_ns = None
    if record.job_dir and "mnt" in record.namespaces:
        mnt_ns = procfs.ns_id(os.path.join(record.job_dir, ".ns", "mnt"))
        inside = [p for p in procfs.in_mount_ns(mnt_ns) if p != record.holder_pid] if mnt_ns else []
        if inside:
            return keep(f"pid {inside[0]} is still inside its mount namespace")
    # Its own mount namespace goes with it; any other that has its private directories mounted
    # is in use (copies of B/J's self-bind, in every namespace made since setup, are not).
    paths = _backing_dirs(record)
    users = procfs.mounted_elsewhere(paths, (mnt_ns,) if mnt_ns else ()) if paths else []
    if users:
        pid, point = users[0]
        return keep(f"still mounted on {point} in the mount namespace of pid {pid}")
    why = {
        "holder dead": "its holder died",
        "half-built": "its setup never finished",
        "orphan": "nothing of it is live",
        "deleting": "an interrupted deletion",
    }[record.state]
    return Decision(record, True, why)


def _backing_dirs(record: inventory.JobRecord) -> list[str]:
    """Where the job's private directories live: B/J/.J, B/J/_* (a dir base equal to B), D/J."""
    paths = list(record.dir_roots)
    if record.job_dir:
        paths.append(os.path.join(record.job_dir, f".{record.job_id}"))
        try:
            names = os.listdir(record.job_dir)
        except OSError:
            names = []
        paths += [os.path.join(record.job_dir, n) for n in names if n.startswith("_")]
    return paths


def collect(
    config: Optional[NodeConfig],
    log: Log,
    dry_run: bool = False,
    query_slurm: bool = True,
    echo: Callable[[str], None] = print,
    env: Optional[Mapping[str, str]] = None,
) -> list[str]:
    """Run gc on this node; returns what could not be removed."""
    env = os.environ if env is None else env
    node = config.node if config is not None else ""
    running = slurm_jobs_here(node, env) if query_slurm and node else None
    if query_slurm and running is None:
        log.info("Slurm did not answer: judging from this node alone")
    leftovers: list[str] = []
    for record in inventory.inventory(config):
        decision = decide(record, running)
        line = f"job {record.job_id} ({record.state}): "
        if not decision.collect:
            echo(line + f"keep: {decision.reason}")
            continue
        if dry_run:
            echo(line + f"would collect: {decision.reason}")
            continue
        with engine.job_lock(record.job_id, teardown=True):
            # Judged again under the lock: a setup that ran meanwhile made it live.
            now = inventory.inventory(config, record.job_id)
            decision = decide(now[0], running) if now else Decision(record, False, "gone")
            if not decision.collect:
                echo(line + f"keep: {decision.reason}")
                continue
            echo(line + f"collect: {decision.reason}")
            leftovers += _collect_one(config, now[0], log, env)
    return leftovers


def _collect_one(
    config: Optional[NodeConfig], record: inventory.JobRecord, log, env: Mapping[str, str]
) -> list[str]:
    the_plan = plan.plan_teardown(
        config,
        record.job_id,
        index_path(record.job_id),
        env,
        record.entry,
        wait=True,
        found=(record.job_dir,) if record.job_dir else (),
        found_roots=record.dir_roots,
    )
    leftovers = engine.teardown_locked(the_plan, log, run_epilog=True)
    dirs = record.entry.dirs if record.entry else tuple(d.path for d in record.dirs)
    leftovers += engine.delete_moved(list(record.deleting), dirs, [], log, record.job_id)
    return leftovers
