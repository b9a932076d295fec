"""Issue 9, item 4: tasks belong where Slurm puts them, under proctrack/cgroup and task/cgroup.

The SPANK plugin makes slurmstepd fork each task straight into the job's namespaces (no extra
fork), so the task is the process Slurm moves into the step's cgroups, limits, freezes, signals
and kills. Each test runs in every configuration of CONFIGS on the host's cgroup v1 hierarchies
(``Lab.configure(cgroups=True)``: cgroup/v1, ConstrainRAMSpace, ConstrainCores) and records what it
saw, with job ids written as J; the last test checks that every nsctl configuration saw exactly
what the job saw without nsctl. The output-file and TaskEpilog tests show how much of the step's
slurmstepd is inside the job's namespaces (Slurm's namespace/linux has all of it inside): the
stepd joins the job's mount namespace in slurm_spank_init and, with CLONE_NEWPID, leaves it once
the tasks are forked. The sbcast, TaskEpilog and contain_spank tests assert what nsctl(8) lists
under LIMITATIONS. (With the plugin's former extra fork, the task-cgroup and scancel tests fail:
the real task stayed in the stepd's cgroups, and jobs left cgroups behind.)
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from labns import cmdline
from slurmlab import Lab, LabError, proc_status

# Name -> clone_ns_flags (None: no nsctl at all, the reference every other one must match).
CONFIGS: dict[str, Optional[list[str]]] = {
    "none": None,
    "nsctl": [],
    "nsctl-pid": ["CLONE_NEWPID"],
    "nsctl-user": ["CLONE_NEWUSER"],
    "nsctl-pid-user": ["CLONE_NEWPID", "CLONE_NEWUSER"],
}
NSCTL = [name for name, flags in CONFIGS.items() if flags is not None]
WITHOUT_PID = [name for name in NSCTL if "CLONE_NEWPID" not in CONFIGS[name]]
WITH_PID = [name for name in NSCTL if "CLONE_NEWPID" in CONFIGS[name]]
COMPARED = ("task_cgroups", "oom", "scancel", "left_behind", "suspend")
ALLOCATE_256MB = "exec python3 -c \"b = b'x' * (256 << 20); print('survived')\""


@pytest.fixture(scope="session")
def seen(cgroup_lab: Lab) -> dict[str, dict[str, object]]:
    """config -> check -> what it showed, for this Slurm version."""
    return {}


@pytest.fixture(scope="module", params=list(CONFIGS))
def config(request: pytest.FixtureRequest) -> str:
    """The configuration; module-scoped so that pytest runs each one's tests together."""
    return request.param


def configure(lab: Lab, config: str, extra_conf: tuple[str, ...] = ()) -> None:
    flags = CONFIGS[config]
    if flags is None:
        lab.configure("none", cgroups=True, extra_conf=extra_conf)
        return
    yaml = lab.default_namespace_yaml() + (
        f"  clone_ns_flags: [{', '.join(flags)}]\n" if flags else ""
    )
    lab.configure("nsctl", yaml, cgroups=True, extra_conf=extra_conf)


@pytest.fixture
def cg(cgroup_lab: Lab, config: str) -> Lab:
    configure(cgroup_lab, config)
    return cgroup_lab


def normal(lab: Lab, text: str, job_id: str) -> str:
    """What a run showed, with the node name written as N, the job id as J (job_J,
    StepId=J.0) and no time stamps (26.05's stepd messages have them), so that runs compare."""
    text = re.sub(r"\[\d{4}-\d\d-\d\dT[\d:.]+\] ", "", text.replace(lab.node, "N"))
    return re.sub(rf"(job_|StepId=){job_id}(?![0-9])", r"\1J", text)


def cgroups(text: str) -> dict[str, str]:
    """hierarchy -> path from /proc/PID/cgroup lines ("4:memory:/slurm_n/...")."""
    found = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1] in ("memory", "cpuset", "freezer"):
            found[parts[1]] = parts[2]
    return found


def job_cgroup(lab: Lab, job_id: str) -> str:
    return f"/slurm_{lab.node}/uid_{lab.uid}/job_{job_id}"


def wait_until_clean(lab: Lab, job_id: str, timeout: float = 15) -> list[str]:
    """Once the job is gone from the queue: what is left of it (user processes, holders, its
    cgroups, nsctl's index entry), after giving the kernel a moment to reap."""
    lab.wait_job_gone(job_id)
    deadline = time.monotonic() + timeout
    while True:
        left = [
            f"user process {pid}: {proc_status(pid).get('Name')}" for pid in lab.user_processes()
        ]
        left += [f"holder {pid}" for pid in lab.holders()]
        left += [f"cgroup {d}" for d in lab.job_cgroups(job_id)]
        left += [f"index entry {e}" for e in lab.index_entries()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ---- (a) the task is in its step's task cgroup ------------------------------------------------


def test_tasks_are_in_the_step_task_cgroups(cg: Lab, config: str, seen: dict) -> None:
    script = (
        'echo "job $SLURM_JOB_ID"; cat /proc/self/cgroup\n'
        "readlink /proc/self/ns/pid /proc/self/ns/user\n"
        "m=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)\n"
        "c=$(sed -n 's/^[0-9]*:cpuset://p' /proc/self/cgroup)\n"
        'echo "mem_limit $(cat /sys/fs/cgroup/memory${m%/task_*}/memory.limit_in_bytes)"\n'
        'echo "cpus $(cat /sys/fs/cgroup/cpuset$c/cpuset.cpus)'
        " $(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)\"\n"
    )
    res = cg.srun("-n2", "-l", "sh", "-c", script)
    assert res.returncode == 0 and res.stderr == "", res
    tasks: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        label, _, text = line.partition(": ")
        tasks.setdefault(label.strip(), []).append(text)
    assert sorted(tasks) == ["0", "1"], res
    job_id = tasks["0"][0].removeprefix("job ")
    view = {}
    for task, lines in sorted(tasks.items()):
        text = "\n".join(lines)
        paths = cgroups(text)
        step = f"{job_cgroup(cg, job_id)}/step_0"
        assert paths["memory"] == f"{step}/task_{task}", res
        assert paths["freezer"] == step, res
        assert paths["cpuset"] in (step, f"{step}/task_{task}"), res  # task_N from 24.11 here
        ns = [line for line in lines if line.startswith(("pid:", "user:"))]
        flags = CONFIGS[config] or []
        assert (ns[0] != cg.ns_link("pid")) == ("CLONE_NEWPID" in flags), res
        assert (ns[1] != cg.ns_link("user")) == ("CLONE_NEWUSER" in flags), res
        limits = [line for line in lines if line.startswith(("mem_limit", "cpus"))]
        assert limits[0] == f"mem_limit {2 * 100 << 20}", res  # DefMemPerCPU=100, two CPUs
        cpus = limits[1].split()
        assert cpus[1] == cpus[2], res  # the task runs on its cpuset's CPUs
        view[task] = (normal(cg, str(paths), job_id), limits)
    seen.setdefault(config, {})["task_cgroups"] = view


def test_the_holder_stays_in_the_cgroups_the_prolog_ran_in(cgroup_lab: Lab) -> None:
    """contrib/slurm/README.md: Slurm's kill of the step or job cgroup never reaches the
    holder; nsctl's teardown kills it."""
    configure(cgroup_lab, "nsctl-pid")
    with cgroup_lab.running_job("sleep 600 &") as job:
        (holder,) = cgroup_lab.holders()
        (slurmd,) = cgroup_lab.daemon_pids("slurmd", main=True)
        held = cgroups(Path(f"/proc/{holder}/cgroup").read_text())
        assert held == cgroups(Path(f"/proc/{slurmd}/cgroup").read_text())
        assert not any(f"/job_{job.job_id}" in path for path in held.values()), held
    assert wait_until_clean(cgroup_lab, job.job_id) == []


# ---- (b) the memory limit kills the task the same way -----------------------------------------


def test_memory_limit_kills_the_task_the_same_way(cg: Lab, config: str, seen: dict) -> None:
    mark = cg.log_mark()
    res = cg.srun("--mem=64M", "sh", "-c", f'echo "job $SLURM_JOB_ID"; {ALLOCATE_256MB}')
    job_id = res.stdout.splitlines()[0].removeprefix("job ")
    assert "survived" not in res.stdout and res.returncode != 0, res
    assert "task 0: Out Of Memory" in res.stderr, res
    state = cg.wait_job_state(job_id, ("OUT_OF_MEMORY", "FAILED", "COMPLETED", "CANCELLED"))
    assert state == "OUT_OF_MEMORY", state
    logs = cg.logs_since(mark)
    exited = re.findall(rf"\[{job_id}\.0\] task 0 \(\d+\) (exited.*)", logs)
    assert exited == ["exited. Killed by signal 9."], logs
    stderr = sorted(normal(cg, line, job_id) for line in res.stderr.splitlines())
    seen.setdefault(config, {})["oom"] = (
        res.returncode, stderr, state, cg.job_field(job_id, "ExitCode"), exited
    )  # fmt: skip


# ---- (c) scancel, and a background child the batch script left ------------------------------


def test_scancel_leaves_no_process_and_no_cgroup(cg: Lab, config: str, seen: dict) -> None:
    with cg.running_job('sleep 600 &\necho "child $!"') as job:
        deadline = time.monotonic() + 10  # the child may not have exec'd sleep yet
        while True:
            found = [p for p in cg.user_processes() if cmdline(p) == b"sleep\x00600\x00"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        (child,) = found
        paths = cgroups(Path(f"/proc/{child}/cgroup").read_text())
        step = f"{job_cgroup(cg, job.job_id)}/step_batch"
        assert paths["memory"] in (step, f"{step}/task_0") and paths["freezer"] == step, paths
        cg.admin("scancel", job.job_id)
        assert wait_until_clean(cg, job.job_id) == []
    state = cg.job_field(job.job_id, "JobState")
    seen.setdefault(config, {})["scancel"] = (normal(cg, str(paths), job.job_id), state)


def test_a_background_child_of_a_finished_batch_script_is_killed(
    cg: Lab, config: str, seen: dict
) -> None:
    # setsid: its own session and process group, so only the cgroup still holds it.
    job = cg.submit("setsid sleep 600 </dev/null >/dev/null 2>&1 &\necho started")
    assert wait_until_clean(cg, job.job_id) == []
    assert job.read() == "started\n", job.read()
    seen.setdefault(config, {})["left_behind"] = cg.job_field(job.job_id, "ExitCode")


def test_suspend_freezes_the_task(cg: Lab, config: str, seen: dict) -> None:
    sync = cg.new_dir("suspend")
    count = sync / "count"
    job = cg.submit(
        f"srun -Q sh -c 'i=0; while :; do i=$((i+1)); echo $i > {count}.new; "
        f"mv {count}.new {count}; sleep 0.05; done'"
    )
    try:
        cg.wait_file(count, job)
        cg.admin("scontrol", "suspend", job.job_id)
        time.sleep(0.5)  # the last write before the freeze lands
        before = count.read_text()
        time.sleep(1)
        frozen = count.read_text() == before
        states = sorted({proc_status(p).get("State", "?")[0] for p in cg.user_processes()})
        cg.admin("scontrol", "resume", job.job_id)
        time.sleep(1)
        resumed = count.read_text() != before
    finally:
        cg.admin("scancel", job.job_id)
    assert wait_until_clean(cg, job.job_id) == []
    assert frozen and resumed, (frozen, resumed)
    seen.setdefault(config, {})["suspend"] = (frozen, states, resumed)


# ---- (d) the step's output files are opened inside the job's mount namespace ---------------


@pytest.mark.parametrize("config", NSCTL, indirect=True)
def test_srun_output_file_lands_in_the_jobs_private_tmp(cg: Lab) -> None:
    script = (
        "srun -Q -o /tmp/out.%j sh -c 'echo from step $SLURM_STEP_ID'\n"
        'echo "later step: $(srun -Q cat /tmp/out.$SLURM_JOB_ID)"\n'
    )
    with cg.running_job(script) as job:
        backing = cg.ns_base / job.job_id / f".{job.job_id}" / "_tmp" / f"out.{job.job_id}"
        assert backing.read_text() == "from step 0\n"
        assert not cg.node_path(f"/tmp/out.{job.job_id}").exists()
    assert "later step: from step 0\n" in job.read(), job.read()


@pytest.mark.parametrize("config", NSCTL, indirect=True)
def test_sbatch_output_file_lands_in_the_jobs_private_tmp(cg: Lab) -> None:
    """As under Slurm's namespace/linux: the batch step's stepd opens it inside, so it is one
    of the job's files and goes with them."""
    sync = cg.new_dir("batch-output")
    job_id = cg.sbatch(
        f"echo batch output\ncat /tmp/batch.$SLURM_JOB_ID > {sync}/seen\n", "-o", "/tmp/batch.%j"
    )
    assert wait_until_clean(cg, job_id) == []
    assert (sync / "seen").read_text() == "batch output\n"
    assert not cg.node_path(f"/tmp/batch.{job_id}").exists()


# ---- (e) the TaskEpilog -----------------------------------------------------------------------


@pytest.fixture
def task_epilog(cgroup_lab: Lab, config: str) -> Iterator[Lab]:
    script = cgroup_lab.bin / "taskepilog-e2e"
    script.write_text(
        "#!/bin/sh\n"
        "readlink /proc/self/ns/mnt /proc/self/ns/pid "
        "> /tmp/task-epilog.$SLURM_JOB_ID.${SLURM_STEP_ID:-batch}\n"
    )
    script.chmod(0o755)
    configure(cgroup_lab, config, extra_conf=(f"TaskEpilog={script}",))
    yield cgroup_lab
    for path in cgroup_lab.node_path("/tmp").glob("task-epilog.*"):  # with CLONE_NEWPID
        path.unlink()


def wait_any(paths: list[Path], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise LabError(f"none of {paths} appeared in {timeout}s")
        time.sleep(0.05)


@pytest.mark.parametrize("config", WITHOUT_PID, indirect=True)
def test_task_epilog_runs_inside_the_jobs_mount_namespace(task_epilog: Lab) -> None:
    lab = task_epilog
    with lab.running_job('srun -Q true\necho "mnt $(readlink /proc/self/ns/mnt)"') as job:
        name = f"task-epilog.{job.job_id}.0"
        inside = lab.ns_base / job.job_id / f".{job.job_id}" / "_tmp" / name
        wait_any([inside, lab.node_path(f"/tmp/{name}")])
        job_mnt = job.read().split("mnt ", 1)[1].split()[0]
        assert inside.read_text().split() == [job_mnt, lab.ns_link("pid")]
        assert job_mnt != lab.ns_link("mnt")
        assert not lab.node_path(f"/tmp/{name}").exists()


@pytest.mark.parametrize("config", WITH_PID, indirect=True)
def test_task_epilog_runs_outside_with_a_pid_namespace(task_epilog: Lab) -> None:
    """The documented limitation (nsctl(8), LIMITATIONS): with CLONE_NEWPID the stepd returns
    to the node's mount namespace once the tasks are forked (the job's /proc would not show it
    its own pids), so the TaskEpilog runs there, on the node's /tmp."""
    lab = task_epilog
    with lab.running_job("srun -Q true") as job:
        name = f"task-epilog.{job.job_id}.0"
        inside = lab.ns_base / job.job_id / f".{job.job_id}" / "_tmp" / name
        outside = lab.node_path(f"/tmp/{name}")
        wait_any([inside, outside])
        assert outside.read_text().split() == [lab.ns_link("mnt"), lab.ns_link("pid")]
        assert not inside.exists()


# ---- what SPANK cannot give: sbcast --------------------------------------------------------


@pytest.mark.parametrize("config", ["nsctl"], indirect=True)
def test_sbcast_writes_on_the_node_outside_the_job(cg: Lab) -> None:
    """The documented limitation (nsctl(8), LIMITATIONS): slurmd writes an sbcast file itself,
    outside the job's namespaces; a destination outside the private directories works."""
    source = cg.new_dir("sbcast") / "payload"
    source.write_text("payload\n")
    job = cg.submit(
        f"sbcast {source} /tmp/bcast.$SLURM_JOB_ID && srun -Q ls -A /tmp\n"
        f"sbcast {source} {source}.$SLURM_JOB_ID && srun -Q cat {source}.$SLURM_JOB_ID\n"
    )
    try:
        assert wait_until_clean(cg, job.job_id) == []
        assert job.read() == "payload\n", job.read()  # /tmp was empty in the job
        assert cg.node_path(f"/tmp/bcast.{job.job_id}").read_text() == "payload\n"
    finally:
        cg.node_path(f"/tmp/bcast.{job.job_id}").unlink(missing_ok=True)


@pytest.mark.parametrize(  # SlurmdParameters=contain_spank is new in Slurm 24.05
    "cgroup_lab", ["24.11", "26.05"], indirect=True, ids=["slurm-24.11", "slurm-26.05"]
)
def test_contain_spank_fails_the_tasks_of_a_job_with_a_pid_namespace(cgroup_lab: Lab) -> None:
    """The documented limitation (nsctl(8), LIMITATIONS): contain_spank runs
    slurm_spank_user_init in a clone of slurmstepd, where the PID namespace set for children
    cannot reach the tasks; the plugin fails them and says why. The mount namespace is joined
    in slurm_spank_init, which is never cloned: without CLONE_NEWPID jobs run as usual."""
    lab = cgroup_lab
    contain = ("SlurmdParameters=contain_spank",)
    configure(lab, "nsctl-pid", extra_conf=contain)
    res = lab.srun("echo", "the task ran")
    assert "the task ran" not in res.stdout and res.returncode != 0, res
    assert "SlurmdParameters=contain_spank runs slurm_spank_user_init outside" in res.stderr, res
    configure(lab, "nsctl", extra_conf=contain)
    res = lab.srun("stat", "-c", "%a:%U", "/tmp")
    assert (res.returncode, res.stdout) == (0, f"700:{lab.user}\n"), res


def test_nsctl_changes_nothing_slurm_does_with_cgroups(seen: dict) -> None:
    """Runs last in this module (pytest keeps file order for tests without the config param):
    every nsctl configuration showed what the same check showed without nsctl."""
    missing = [(c, check) for c in CONFIGS for check in COMPARED if check not in seen.get(c, {})]
    assert not missing, f"checks that did not record a result: {missing}"
    for name in NSCTL:
        for check in COMPARED:
            assert seen[name][check] == seen["none"][check], (name, check)
