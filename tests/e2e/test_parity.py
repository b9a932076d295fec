"""Issue tests 1-4, run against nsctl and against Slurm's own C plugin (job_container/tmpfs).

Each test asserts the expected behaviour in both modes and records what it saw; the last test
compares the two records, so nsctl and the C plugin are shown to give the same results.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from slurmlab import Lab

MODES = ("nsctl", "tmpfs")
CHECKS = ("private_tmp", "steps_share", "jobs_apart", "cleanup")


@pytest.fixture(scope="module", params=MODES)
def cluster(request: pytest.FixtureRequest, lab: Lab) -> Lab:
    lab.configure(request.param)
    return lab


def job_dirs(lab: Lab, job_id: str) -> list[Path]:
    """Where the job's files live on the host in the current mode."""
    if lab.mode == "nsctl":
        return [lab.ns_base / job_id]
    return [lab.jc_base / lab.node / job_id]  # the C plugin appends the node name (Debian's
    # Slurm is built with multiple-slurmd support)


def record(observations: dict, lab: Lab, check: str, value: object) -> None:
    observations.setdefault(lab.mode, {})[check] = value


def assert_clean_stderr(stderr: str) -> None:
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert not errors, stderr


def test_private_tmp_is_empty_owned_by_user_0700(cluster: Lab, observations: dict) -> None:
    node_tmp = cluster.node_path("/tmp")  # the node's own /tmp (what a job would share)
    host_tmp = os.stat(node_tmp)
    res = cluster.srun(
        "sh",
        "-c",
        'ls -al /tmp && touch "/tmp/nsctl-e2e-$SLURM_JOB_ID" && echo "job=$SLURM_JOB_ID"',
    )
    assert res.returncode == 0, res
    assert_clean_stderr(res.stderr)
    lines = res.stdout.splitlines()
    job_id = lines[-1].removeprefix("job=")
    entries = [line.split() for line in lines[:-1] if not line.startswith("total")]
    names = sorted(fields[-1] for fields in entries)
    assert names == [".", ".."], res
    dot = next(fields for fields in entries if fields[-1] == ".")
    mode, owner, group = dot[0], dot[2], dot[3]
    assert (mode, owner) == ("drwx------", cluster.user), res
    # The job wrote into its own /tmp, not the node's, and the node's /tmp is as it was.
    assert not (node_tmp / f"nsctl-e2e-{job_id}").exists()
    after = os.stat(node_tmp)
    assert (after.st_mode, after.st_uid, after.st_ino) == (
        host_tmp.st_mode,
        host_tmp.st_uid,
        host_tmp.st_ino,
    )
    record(observations, cluster, "private_tmp", (mode, owner, group, names))


def test_steps_and_batch_script_share_one_tmp(cluster: Lab, observations: dict) -> None:
    job = cluster.submit(
        "srun -Q sh -c 'echo written-by-step-1 > /tmp/shared'\n"
        'echo "step 2: $(srun -Q cat /tmp/shared)"\n'
        'echo "batch: $(cat /tmp/shared)"\n'
        'echo "ns: $(readlink /proc/self/ns/mnt) $(srun -Q readlink /proc/self/ns/mnt)"\n'
    )
    cluster.wait_job_gone(job.job_id)
    out = job.read()
    assert "step 2: written-by-step-1" in out, out
    assert "batch: written-by-step-1" in out, out
    ns_line = next(line for line in out.splitlines() if line.startswith("ns: "))
    batch_ns, step_ns = ns_line.split()[1:]
    assert batch_ns == step_ns != cluster.ns_link("mnt"), out
    assert cluster.job_field(job.job_id, "ExitCode") == "0:0", out
    record(observations, cluster, "steps_share", [line for line in out.splitlines()[:2]])


def test_concurrent_jobs_do_not_see_each_other(cluster: Lab, observations: dict) -> None:
    meet = cluster.new_dir("meet")
    wait_for = "i=0; while [ ! -e {path} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
    script = (
        "touch /tmp/{me} /dev/shm/{me}\n"
        f": > {meet}/{{me}}\n"
        + wait_for.format(path=f"{meet}/{{other}}")
        + f'[ -e {meet}/{{other}} ] && echo "met {{other}}"\n'
        'echo "tmp: $(ls -A /tmp | tr "\\n" " ")"\n'
        'echo "shm: $(ls -A /dev/shm | tr "\\n" " ")"\n'
        # Stay until the other job has listed too, so both really ran side by side.
        f": > {meet}/{{me}}.listed\n" + wait_for.format(path=f"{meet}/{{other}}.listed")
    )
    first = cluster.submit(script.format(me="first", other="second"))
    second = cluster.submit(script.format(me="second", other="first"))
    cluster.wait_job_gone(first.job_id)
    cluster.wait_job_gone(second.job_id)
    views = {}
    for job, me, other in ((first, "first", "second"), (second, "second", "first")):
        out = job.read()
        assert f"met {other}" in out, out
        assert f"tmp: {me} \n" in out, out
        assert f"shm: {me} \n" in out, out
        views[me] = out
    record(observations, cluster, "jobs_apart", views)


def test_nothing_left_after_the_job(cluster: Lab, observations: dict) -> None:
    with cluster.running_job("touch /tmp/file /dev/shm/file") as job:
        dirs = job_dirs(cluster, job.job_id)
        # While the job runs its directories and mounts exist: the checks below can fail.
        assert all(path.is_dir() for path in dirs), dirs
        assert all(cluster.mounts_under(str(path)) for path in dirs), dirs
        if cluster.mode == "nsctl":
            assert (cluster.run_dir() / "jobs" / job.job_id).is_file()
    # running_job waited for the job and its Epilog to finish.
    left = [str(p) for p in dirs if os.path.lexists(p)]
    left += [m for p in dirs for m in cluster.mounts_under(str(p))]
    if cluster.mode == "nsctl":
        left += [str(p) for p in [cluster.run_dir() / "jobs" / job.job_id] if p.exists()]
    assert not left, left
    record(observations, cluster, "cleanup", left)


def test_nsctl_and_the_c_plugin_agree(observations: dict) -> None:
    """Runs last in this module (pytest keeps file order for tests without the param)."""
    missing = [(mode, check) for mode in MODES for check in CHECKS if check not in
               observations.get(mode, {})]  # fmt: skip
    assert not missing, f"checks that did not record a result: {missing}"
    for check in CHECKS:
        assert observations["nsctl"][check] == observations["tmpfs"][check], check
