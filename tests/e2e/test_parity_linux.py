"""Parity with Slurm's own namespace/linux (26.05): the same jobs under both, the results compared.

Every test runs one scenario twice on the 26.05 lab, under ``NamespaceType=namespace/linux``
(mode ``linux``) and under nsctl (mode ``nsctl``), from the same namespace.yaml, records what
the jobs saw in a normalised form (observe.py: no job ids, pids, namespace ids or lab paths),
and asserts that the two records are equal. Where nsctl differs from Slurm on purpose, the
normalisation says so by naming an entry of DELIBERATE, and
test_every_deliberate_difference_is_in_the_man_pages checks that the man pages list each one.
Any other difference fails the comparison: it is a bug in nsctl (or a difference to document).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pprint
import re
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import labns
import pytest
from observe import (
    Normaliser,
    env_lines,
    holder_name,
    man_text,
    mount_view,
    new_mounts,
    parse_mountinfo,
    section,
    slurm_messages,
)
from slurmlab import REPO, BatchJob, Lab, LabError

pytestmark = pytest.mark.parametrize("lab", ["26.05"], indirect=True, ids=["slurm-26.05"])

MODES = ("linux", "nsctl")


@dataclass(frozen=True)
class Difference:
    """A deliberate difference between nsctl and Slurm's plugin, and where the man pages list it
    (the phrase must appear in that page, in that .SH section when one is given)."""

    what: str
    page: str
    section: Optional[str]
    phrase: str


DIFFERENCES = "DIFFERENCES FROM SLURM"
DELIBERATE = {
    "job_dir": Difference(
        "Debian builds Slurm with multiple-slurmd support, so Slurm's job dir is "
        "B/<NodeName>/J and a per-dir base's D/<NodeName>/J; nsctl's are B/J and D/J",
        "namespace.yaml.5", DIFFERENCES, "multiple-slurmd",
    ),
    "holder_name": Difference(
        "the holder is 'nsctl: [J:namespace]', Slurm's 'slurmstepd: [J:namespace]'",
        "namespace.yaml.5", DIFFERENCES, "names it nsctl: [J:namespace]",
    ),
    "holder_only_with_pid": Difference(
        "nsctl has a holder only with CLONE_NEWPID; Slurm has one in every job",
        "namespace.yaml.5", DIFFERENCES, "nsctl starts one only with CLONE_NEWPID",
    ),
    "proc_flags": Difference(
        "nsctl mounts the job's /proc nosuid,nodev,noexec; Slurm with no flags",
        "namespace.yaml.5", DIFFERENCES, "nsctl mounts it nosuid , nodev and noexec",
    ),
    "step_stepd": Difference(
        "Slurm 26.05 runs the step's whole slurmstepd inside the job's namespaces, so 'ps -e' "
        "in a PID namespace lists 'slurmstepd: [J.0]' (or [J.batch]) as the tasks' parent; "
        "nsctl's SPANK plugin puts only the tasks there (their parent is outside: ppid 0)",
        "namespace.yaml.5", DIFFERENCES, "the step's slurmstepd",
    ),
    "tmpdir": Difference(
        "nsctl's TaskProlog sets TMPDIR=/tmp whenever /tmp is private; Slurm keeps (and "
        "creates) the submitter's TMPDIR and falls back to /tmp only when it cannot",
        "namespace.yaml.5", DIFFERENCES, "TMPDIR",
    ),
    "script_cwd": Difference(
        "nsctl runs the scripts in /; Slurm in slurmd's working directory (its log directory)",
        "namespace.yaml.5", DIFFERENCES, "working directory",
    ),
    "epilog_before_holder": Difference(
        "nsctl runs clone_ns_epilog while the holder still lives (the job's PID namespace can "
        "still be entered); Slurm kills the holder first",
        "namespace.yaml.5", DIFFERENCES, "clone_ns_epilog runs before the holder is killed",
    ),
    "stale_job_dir": Difference(
        "a job dir left by an earlier run of the same job id is cleaned by nsctl; Slurm fails "
        "the job (launch failed, requeued and held)",
        "namespace.yaml.5", DIFFERENCES, "A stale job directory is cleaned",
    ),
    "backing_dirs": Difference(
        "nsctl makes the backing dirs (B/J/.J/_tmp) on the host before init_script; Slurm "
        "inside the new namespaces, after it (init_script sees B/J/.J empty)",
        "namespace.yaml.5", DIFFERENCES, "nsctl creates them on the host, before the namespaces",
    ),
    "script_session": Difference(
        "nsctl runs each script in a new session (setsid); Slurm in a new process group of "
        "slurmstepd's session",
        "namespace.yaml.5", DIFFERENCES, "new session",
    ),
    "background_delete": Difference(
        "the Epilog moves a job's trees aside (B/.nsctl-deleting.J.INO) and a detached process "
        "at idle priority deletes them after it returns; Slurm deletes them before the job "
        "completes",
        "namespace.yaml.5", DIFFERENCES, "deleted in the background",
    ),
    "mark": Difference(
        "nsctl's job dirs (B/J and D/J) hold its mark, an empty file .nsctl",
        "nsctl.8", "ON-DISK LAYOUT", "nsctl's mark",
    ),
}  # fmt: skip


def deliberate(name: str) -> str:
    """Name a deliberate difference where a normalisation applies it (a typo fails here)."""
    assert name in DELIBERATE, name
    return name


# ---- running one scenario in both modes ------------------------------------------------------


def parity_dir(lab: Lab) -> Path:
    path = lab.root / "parity"
    path.mkdir(exist_ok=True)
    return path


def bases(lab: Lab) -> dict[str, str]:
    """The base paths every scenario's namespace.yaml uses: B global, D per directory."""
    return {"B": f"{parity_dir(lab)}/base", "D": f"{parity_dir(lab)}/dbase"}


def config(lab: Lab, extra: str = "") -> str:
    """namespace.yaml for both modes: `extra` is more of `defaults` (B, D and LAB are
    replaced by the bases and the lab directory)."""
    text = "defaults:\n  auto_base_path: true\n  base_path: {B}\n" + extra
    return text.format(LAB=lab.root, **bases(lab))


def normaliser(lab: Lab, job_id: str) -> Normaliser:
    return Normaliser(lab.mode or "", lab.node, job_id, bases(lab), str(lab.root))


def run_both(lab: Lab, yaml: str, observe: Callable[[Lab], object]) -> dict[str, object]:
    """observe(lab) under namespace/linux, then under nsctl, from the same namespace.yaml."""
    seen = {}
    for mode in MODES:
        lab.configure(mode, yaml)
        seen[mode] = observe(lab)
    return seen


def assert_same(seen: dict[str, object]) -> None:
    """The two records are equal; else the diff, line by line (- Slurm's, + nsctl's)."""
    if seen["nsctl"] != seen["linux"]:
        linux, nsctl = (pprint.pformat(seen[m], width=100).splitlines() for m in MODES)
        diff = "\n".join(difflib.unified_diff(linux, nsctl, "linux", "nsctl", lineterm=""))
        pytest.fail(f"nsctl differs from namespace/linux:\n{diff}", pytrace=False)


def job_id_of(out: str) -> str:
    match = re.search(r"(?m)^job=(\d+)$", out)
    assert match, out
    return match.group(1)


def node_mounts(lab: Lab) -> list:
    """The node's mount table now (where slurmd runs): the baseline for a job's new mounts."""
    return parse_mountinfo(Path(f"/proc/{lab.node_space().init}/mountinfo").read_text())


def srun_lines(res) -> list[str]:
    """srun's stderr without timestamps and job ids."""
    return slurm_messages(res.stderr).splitlines()


def ns_relation(values: dict[str, str], node: str) -> dict[str, str]:
    """Namespace links as relations: which are the node's, which are equal to each other."""
    names: dict[str, str] = {node: "node"}
    for key in sorted(values):
        names.setdefault(values[key], f"job{len([n for n in names.values() if n != 'node'])}")
    return {key: names[value] for key, value in values.items()}


# ---- srun ls -al /tmp, findmnt of every private dir -----------------------------------------

LS_PROBE = (
    "echo job=$SLURM_JOB_ID\n"
    "echo '== ls'; ls -al /tmp\n"
    "echo '== stat'; stat -c '%n %a %U %G' /tmp /dev/shm\n"
    "echo '== findmnt'; for d in /tmp /dev/shm /; do "
    "findmnt -n -o TARGET,SOURCE,FSTYPE,OPTIONS,PROPAGATION --mountpoint $d | tail -n 1; done\n"
    "echo '== mountinfo'; cat /proc/self/mountinfo\n"
)


def observe_ls(lab: Lab) -> dict[str, object]:
    before = node_mounts(lab)
    res = lab.srun("sh", "-c", LS_PROBE)
    assert res.returncode == 0 and not res.stderr, res
    norm = normaliser(lab, job_id_of(res.stdout))
    ls = []
    for line in section(res.stdout, "ls").splitlines():
        fields = line.split()
        if fields[0] != "total":  # mode, links, owner, group, size, name: not the date
            ls.append(fields[:5] + fields[-1:])
    findmnt = [norm(" ".join(line.split())) for line in section(res.stdout, "findmnt").splitlines()]
    mounts = new_mounts(parse_mountinfo(section(res.stdout, "mountinfo")), before)
    return {
        "ls": ls,
        "stat": section(res.stdout, "stat").splitlines(),
        "findmnt": findmnt,
        "new mounts": mount_view(mounts, norm),
    }


def test_srun_ls_al_tmp_and_findmnt_of_each_private_dir(lab: Lab) -> None:
    seen = run_both(lab, config(lab), observe_ls)
    assert_same(seen)
    # What both show (namespace.yaml(5), E1): an empty /tmp, 0700, the user's, group root.
    assert [f[0] for f in seen["linux"]["ls"]] == ["drwx------", "drwxr-xr-x"], seen
    assert seen["linux"]["stat"][0] == f"/tmp 700 {lab.user} root", seen


# ---- the holder without a PID namespace ------------------------------------------------------


def observe_holders(lab: Lab) -> dict[str, object]:
    holder = re.compile(rb"(slurmstepd|nsctl): \[\d+:namespace\]")
    with lab.running_job("true"):
        during = [labns.cmdline(p) for p in lab.processes() if holder.match(labns.cmdline(p))]
    return {"holders during the job": [holder_name(c.decode().rstrip("\0")) for c in during]}


def test_holder_only_with_a_pid_namespace(lab: Lab) -> None:
    """Deliberate (holder_only_with_pid): Slurm keeps a holder in every job, nsctl only with
    CLONE_NEWPID; with it, both have one."""
    seen = run_both(lab, config(lab), observe_holders)
    assert seen["linux"] == {"holders during the job": ["<holder>"]}, seen
    assert seen["nsctl"] == {"holders during the job": []}, seen
    deliberate("holder_only_with_pid")
    seen = run_both(lab, config(lab, "  clone_ns_flags: [CLONE_NEWPID]\n"), observe_holders)
    assert_same(seen)
    assert seen["linux"] == {"holders during the job": ["<holder>"]}, seen


# ---- a PID namespace: ps -e ------------------------------------------------------------------

PS_PROBE = (
    'echo job=$SLURM_JOB_ID; echo "== me"; echo $$\n'
    "echo '== ps'; ps -e -o pid=,ppid=,args=\n"
    "echo '== mountinfo'; cat /proc/self/mountinfo\n"
)


def ps_view(text: str, norm: Normaliser) -> list[tuple[str, str, str]]:
    """ps -e lines as (pid, ppid, args): pids renamed in order (1 stays 1), the holder named
    <holder>, and Slurm's step slurmstepds (deliberate: step_stepd) left out, a task whose
    parent was one of them having its parent outside the namespace (0), as under nsctl."""
    rows = [line.split(None, 2) for line in text.splitlines() if line.strip()]
    stepd = re.compile(r"slurmstepd: \[\d+\.(\d+|batch)\]$")
    hidden = {pid for pid, _, args in rows if stepd.match(args)}
    if hidden:
        deliberate("step_stepd")
    rows = [(pid, "0" if ppid in hidden else ppid, args) for pid, ppid, args in rows
            if pid not in hidden]  # fmt: skip
    names = {"0": "0", "1": "1"}
    for pid, _, _ in rows:
        names.setdefault(pid, f"p{len(names) - 1}")
    deliberate("holder_name")
    return [(names[pid], names.get(ppid, "?"), holder_name(norm(args))) for pid, ppid, args in rows]


def proc_mount(view: list, mode: str) -> list:
    """nsctl's /proc is nosuid,nodev,noexec (deliberate: proc_flags); Slurm's has no flags."""
    fixed = []
    for target, fstype, root, flags, data, prop in view:
        if fstype == "proc" and mode == "nsctl":
            deliberate("proc_flags")
            assert flags == ("nosuid", "nodev", "noexec"), flags
            flags = ()
        fixed.append((target, fstype, root, flags, data, prop))
    return fixed


def observe_ps(lab: Lab) -> dict[str, object]:
    before = node_mounts(lab)
    res = lab.srun("sh", "-c", PS_PROBE)
    assert res.returncode == 0 and not res.stderr, res
    norm = normaliser(lab, job_id_of(res.stdout))
    me = int(section(res.stdout, "me"))
    mounts = mount_view(new_mounts(parse_mountinfo(section(res.stdout, "mountinfo")), before), norm)
    # The same from a batch script and an srun step inside it.
    job = lab.submit(
        "echo job=$SLURM_JOB_ID; echo '== batch'; ps -e -o pid=,ppid=,args=\n"
        "echo '== step'; srun -Q ps -e -o pid=,ppid=,args=\n"
    )
    lab.wait_job_gone(job.job_id)
    out, batch_norm = job.read(), normaliser(lab, job.job_id)
    return {
        "task pid is small": me < 100,
        "srun": ps_view(section(res.stdout, "ps"), norm),
        "batch": ps_view(section(out, "batch"), batch_norm),
        "step in batch": ps_view(section(out, "step"), batch_norm),
        "new mounts": proc_mount(mounts, lab.mode),
    }


def test_pid_namespace_ps_shows_the_holder_and_the_job_only(lab: Lab) -> None:
    seen = run_both(lab, config(lab, "  clone_ns_flags: [CLONE_NEWPID]\n"), observe_ps)
    assert_same(seen)
    assert seen["linux"]["srun"][0] == ("1", "0", "<holder>"), seen


# ---- a user namespace: /proc/self/uid_map ----------------------------------------------------

USER_PROBE = (
    "echo job=$SLURM_JOB_ID\n"
    "echo '== maps'; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups\n"
    "echo '== id'; id\n"
    "echo '== files'; echo data > /tmp/f; stat -c '%n %U %G %a' /tmp /tmp/f /dev/shm\n"
    "echo '== ns'; readlink /proc/self/ns/user /proc/self/ns/pid /proc/self/ns/mnt\n"
)


def observe_user(lab: Lab) -> dict[str, object]:
    res = lab.srun("sh", "-c", USER_PROBE)
    assert res.returncode == 0 and not res.stderr, res
    links = section(res.stdout, "ns").split()
    return {
        "maps": [line.split() for line in section(res.stdout, "maps").splitlines()],
        "id": section(res.stdout, "id"),
        "files": section(res.stdout, "files").splitlines(),
        "ns": [ns_relation({"x": link}, lab.ns_link(link.split(":")[0]))["x"] for link in links],
    }


def test_user_namespace_uid_map(lab: Lab) -> None:
    seen = run_both(lab, config(lab, "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]\n"),
                    observe_user)  # fmt: skip
    assert_same(seen)
    assert seen["linux"]["maps"][:2] == [["0", "0", "4294967295"]] * 2, seen
    assert seen["linux"]["ns"] == ["job0", "job0", "job0"], seen


# ---- exit codes and signals ------------------------------------------------------------------


def observe_exits(lab: Lab) -> dict[str, object]:
    found: dict[str, object] = {}
    for name, script in (
        ("exit 3", "exit 3"), ("segv", "kill -SEGV $$"), ("term", "kill -TERM $$"),
        ("kill", "kill -KILL $$"), ("abort", "kill -ABRT $$"), ("ok", "true"),
    ):  # fmt: skip
        res = lab.srun("sh", "-c", script)
        found[f"srun {name}"] = (res.returncode, srun_lines(res))
    res = lab.srun("-n2", "sh", "-c", "exit $((SLURM_PROCID + 4))")
    found["srun -n2"] = (res.returncode, sorted(srun_lines(res)))
    # Batch scripts: the exit code and the signal Slurm records.
    for name, script in (("batch exit 7", "exit 7"), ("batch term", "kill -TERM $$")):
        job = lab.submit(script + "\n")
        lab.wait_job_gone(job.job_id)
        found[name] = lab.job_field(job.job_id, "ExitCode")
    # A signal from scancel reaches the task, whose own exit code the step then has.
    # The task's "caught" and the batch shell's report of srun's death by USR1 reach the output
    # file from two processes, in either order.
    found["scancel --signal=USR1"] = sorted(slurm_messages(lab.usr1_to_a_step()).splitlines())
    return found


def test_exit_codes_and_signals(lab: Lab) -> None:
    seen = run_both(lab, config(lab, "  clone_ns_flags: [CLONE_NEWPID]\n"), observe_exits)
    assert_same(seen)
    assert seen["linux"]["srun segv"][0] == 139 and seen["linux"]["batch exit 7"] == "7:0", seen


# ---- two steps of one job, and two concurrent jobs -------------------------------------------


def observe_steps(lab: Lab) -> dict[str, object]:
    job = lab.submit(
        "srun -Q -n1 sh -c 'echo from-step-1 > /tmp/shared; touch /dev/shm/s1; "
        "readlink /proc/self/ns/mnt > /tmp/ns1'\n"
        'echo "step 2: $(srun -Q -n1 cat /tmp/shared) $(srun -Q -n1 ls /dev/shm)"\n'
        'echo "batch: $(cat /tmp/shared) $(ls /dev/shm)"\n'
        'echo "ns batch=$(readlink /proc/self/ns/mnt)"\n'
        'echo "ns step1=$(cat /tmp/ns1)"\n'
        'echo "ns step3=$(srun -Q -n1 readlink /proc/self/ns/mnt)"\n'
        "srun -Q -n2 sh -c 'echo task-$SLURM_PROCID > /tmp/t$SLURM_PROCID'\n"
        'echo "tasks: $(ls /tmp | tr "\\n" " ")"\n',
        "-n2",
    )
    lab.wait_job_gone(job.job_id)
    out = job.read()
    links = dict(re.findall(r"(?m)^ns (\w+)=(\S+)$", out))
    return {
        "lines": [line for line in out.splitlines() if not line.startswith("ns ")],
        "ns": ns_relation(links, lab.ns_link("mnt")),
        "exit": lab.job_field(job.job_id, "ExitCode"),
    }


def test_two_steps_of_one_job_share_its_dirs(lab: Lab) -> None:
    seen = run_both(lab, config(lab), observe_steps)
    assert_same(seen)
    assert seen["linux"]["ns"] == {"batch": "job0", "step1": "job0", "step3": "job0"}, seen


def observe_two_jobs(lab: Lab) -> dict[str, object]:
    meet = lab.new_dir("meet")
    wait_for = "i=0; while [ ! -e {path} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
    script = (
        "touch /tmp/{me} /dev/shm/{me}\n"
        f": > {meet}/{{me}}\n" + wait_for.format(path=f"{meet}/{{other}}")
        + f'[ -e {meet}/{{other}} ] && echo "met {{other}}"\n'
        'echo "tmp: $(ls -A /tmp | tr "\\n" " ")"\n'
        'echo "shm: $(ls -A /dev/shm | tr "\\n" " ")"\n'
        "echo \"ns: $(readlink /proc/self/ns/mnt)\"\n"
        f": > {meet}/{{me}}.listed\n" + wait_for.format(path=f"{meet}/{{other}}.listed")
    )  # fmt: skip
    first = lab.submit(script.format(me="first", other="second"))
    second = lab.submit(script.format(me="second", other="first"))
    lab.wait_job_gone(first.job_id)
    lab.wait_job_gone(second.job_id)
    views, links = {}, {}
    for job, me in ((first, "first"), (second, "second")):
        lines = job.read().splitlines()
        links[me] = next(line for line in lines if line.startswith("ns: "))[4:]
        views[me] = [line for line in lines if not line.startswith("ns: ")]
    return {"views": views, "ns": ns_relation(links, lab.ns_link("mnt"))}


def test_two_concurrent_jobs_see_only_their_own_dirs(lab: Lab) -> None:
    seen = run_both(lab, config(lab), observe_two_jobs)
    assert_same(seen)
    assert seen["linux"]["views"]["first"] == ["met second", "tmp: first ", "shm: first "], seen
    assert seen["linux"]["ns"] == {"first": "job0", "second": "job1"}, seen


# ---- dir_confs: tmpfs with size/noexec, a per-dir base_path, %u and %j paths -----------------

DIR_CONFS = (
    "  clone_ns_flags: [CLONE_NEWPID]\n"
    "  dir_confs:\n"
    "    - path: /tmp\n"
    "      tmpfs: true\n"
    "      options: noexec,size=16m\n"
    "    - path: /dev/shm\n"
    "      options: nosuid,nodev,noexec,size=8m,mode=0750\n"
    "    - path: {LAB}/parity/scratch/%u\n"
    "      base_path: {D}\n"
    "      options: nosuid,noexec\n"
    "    - path: {LAB}/parity/jobs/%j\n"
)


def wait_deleted(top: Path, timeout: float = 120) -> None:
    """nsctl's detached deleters (idle priority: slow while the machine is busy) have removed
    every tree the Epilogs moved aside in base `top`."""
    deliberate("background_delete")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not top.is_dir() or not any(".nsctl-deleting." in n.name for n in top.iterdir()):
            return
        time.sleep(0.1)


def tree(lab: Lab, name: str, norm: Normaliser) -> list[tuple[str, str, int, int]]:
    """Everything in base `name` (B or D) of the current mode, as the host sees it (the job's
    mounts are not there), no link followed: (normalised path, mode, uid, gid), sorted.
    Slurm's base is B/<NodeName> (deliberate: job_dir); in nsctl mode, B/<NodeName> is what
    the linux runs left there, not nsctl's."""
    base = Path(bases(lab)[name])
    top = base / lab.node if lab.mode == "linux" else base
    if lab.mode == "linux":
        deliberate("job_dir")
    else:
        wait_deleted(top)
    found = []
    for path, dirs, files in os.walk(top) if top.exists() else ():
        if lab.mode == "nsctl" and Path(path) == base and lab.node in dirs:
            dirs.remove(lab.node)
        for entry in [path] + [os.path.join(path, n) for n in dirs + files]:
            st = os.lstat(entry)
            mode = stat.filemode(st.st_mode)
            if Path(entry).parent.name == ".ns":
                mode = "(see test_namespace_files_have_slurms_mode)"
            found.append((norm(entry), mode, st.st_uid, st.st_gid))
    return sorted(set(found))


def drop_marks(entries: list, mode: str) -> list:
    """nsctl's job dirs hold its mark .nsctl (deliberate: mark)."""
    if mode != "nsctl":
        return entries
    marks = [e for e in entries if e[0].endswith("/<J>/.nsctl")]
    if marks:
        deliberate("mark")
    return [e for e in entries if e not in marks]


@contextlib.contextmanager
def held_job(lab: Lab, script: str) -> Iterator[BatchJob]:
    """A batch job submitted held, so that directories named by its job id (%j) can be made
    before it starts; it runs `script`, then stays until the with-block ends."""
    sync = lab.new_dir("job")
    body = f"{script}\n: > {sync}/ready\nwhile [ ! -e {sync}/go ]; do sleep 0.05; done\n"
    job = BatchJob(lab.sbatch(body, "-o", str(sync / "out"), "--hold"), sync / "out", sync)
    try:
        yield job
    finally:
        (sync / "go").touch()
        lab.admin("scontrol", "release", job.job_id, check=False)
        lab.wait_job_gone(job.job_id)


def observe_dir_confs(lab: Lab) -> dict[str, object]:
    here = parity_dir(lab)
    (here / "scratch" / lab.user).mkdir(parents=True, exist_ok=True)
    before = node_mounts(lab)
    probe = (
        "echo job=$SLURM_JOB_ID\n"
        "echo '== mountinfo'; cat /proc/self/mountinfo\n"
        f"echo '== stat'; for d in /tmp /dev/shm {here}/scratch/$USER {here}/jobs/$SLURM_JOB_ID; "
        "do stat -c '%n %a %U %G' $d; touch $d/file; done\n"
        "echo '== exec'; cp /bin/true /tmp/x && { /tmp/x && echo /tmp exec || echo /tmp noexec; }\n"
    )
    with held_job(lab, probe) as job:
        (here / "jobs" / job.job_id).mkdir(parents=True)
        lab.admin("scontrol", "release", job.job_id)
        lab.wait_file(job.sync / "ready", job)
        norm = normaliser(lab, job.job_id)
        during = {name: drop_marks(tree(lab, name, norm), lab.mode) for name in bases(lab)}
    out = job.read()
    mounts = new_mounts(parse_mountinfo(section(out, "mountinfo")), before)
    return {
        "new mounts": proc_mount(mount_view(mounts, norm), lab.mode),
        "stat": [norm(line) for line in section(out, "stat").splitlines()],
        "exec": norm(section(out, "exec")),
        "on disk during the job": during,
        "on disk after the job": {name: tree(lab, name, norm) for name in bases(lab)},
        "exit": lab.job_field(job.job_id, "ExitCode"),
    }


def test_dir_confs_tmpfs_options_per_dir_base_and_escapes(lab: Lab) -> None:
    seen = run_both(lab, config(lab, DIR_CONFS), observe_dir_confs)
    assert_same(seen)
    targets = [m[0] for m in seen["linux"]["new mounts"] if m[1] != "proc"]
    assert targets[1:] == ["/tmp", "/dev/shm", "<LAB>/parity/scratch/nsctltest",
                           "<LAB>/parity/jobs/<J>"], seen  # fmt: skip


# ---- the .ns files ---------------------------------------------------------------------------


def observe_ns_files(lab: Lab) -> dict[str, object]:
    with lab.running_job("true") as job:
        job_dir = Path(bases(lab)["B"]) / (f"{lab.node}/" if lab.mode == "linux" else "")
        job_dir = job_dir / job.job_id
        # As the host sees them: the files under the namespace bind mounts.
        return {
            str(path.relative_to(job_dir)).replace(job.job_id, "<J>"): stat.filemode(
                os.lstat(path).st_mode
            )
            for path in [job_dir, job_dir / f".{job.job_id}", job_dir / ".ns"]
            + sorted((job_dir / ".ns").iterdir())
        }


def test_namespace_files_have_slurms_mode(lab: Lab) -> None:
    """B/J/.ns/{pid,user,mnt}: Slurm creates them 0700 (O_CREAT, S_IRWXU), nsctl 0600."""
    seen = run_both(lab, config(lab, "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]\n"),
                    observe_ns_files)  # fmt: skip
    assert_same(seen)


# ---- each script's environment ---------------------------------------------------------------

SCRIPT = """#!/bin/sh
# {name}: what it runs with, for test_parity_linux.py. No PATH: absolute paths only.
fds="$(/usr/bin/readlink /proc/$$/fd/0) $(/usr/bin/readlink /proc/$$/fd/1) \\
$(/usr/bin/readlink /proc/$$/fd/2)"
{{
echo '== env'; /usr/bin/env | /usr/bin/sort
echo '== pwd'; /bin/pwd
echo '== id'; /usr/bin/id
echo '== umask'; umask
echo '== stdio'; echo "$fds"
echo '== other fds'; /bin/ls /proc/$$/fd | /usr/bin/sort -n | /usr/bin/tr '\\n' ' '; echo
echo '== leaders'; /usr/bin/ps -o pid=,pgid=,sid= -p $$ | {{ read p g s
  echo "group $([ $p = $g ] && echo yes || echo no)"
  echo "session $([ $p = $s ] && echo yes || echo no)"; }}
echo '== ns'; /usr/bin/readlink /proc/self/ns/mnt /proc/self/ns/pid /proc/self/ns/user
{extra}
}} > {out}/.{name}.$SLURM_JOB_ID 2>&1
/bin/mv {out}/.{name}.$SLURM_JOB_ID {out}/{name}.$SLURM_JOB_ID
{after}
"""
SCRIPT_EXTRA = {
    "init_script": ("echo '== src'; /bin/ls -A $SLURM_JOB_MOUNTPOINT_SRC", ""),
    "user_ns_script": (
        "echo '== target'; /usr/bin/awk '/^NSpid/ {print NF - 1, $NF}' /proc/$SLURM_NS_PID/status\n"
        "echo '== map before'; /bin/cat /proc/$SLURM_NS_PID/uid_map",
        "echo '0 0 4294967295' > /proc/$SLURM_NS_PID/uid_map\n"
        "echo '0 0 4294967295' > /proc/$SLURM_NS_PID/gid_map",
    ),
    "clone_ns_script": (
        "echo '== job tmp'; /usr/bin/nsenter --mount=$SLURM_NS /bin/ls -A /tmp",
        "",
    ),
    "clone_ns_epilog": (
        "echo '== job tmp'; /usr/bin/nsenter --mount=$SLURM_NS/mnt /bin/ls -A /tmp\n"
        "echo '== pid ns'; /usr/bin/nsenter --pid=$SLURM_NS/pid --mount=$SLURM_NS/mnt /bin/true "
        "2>/dev/null && echo enterable || echo dead",
        "",
    ),
}
VOLATILE = (  # values that differ from job to job
    "SLURM_TASK_PID", "SLURM_SRUN_COMM_PORT", "SLURM_STEP_LAUNCHER_PORT", "SLURM_JOB_START_TIME",
    "SLURM_JOB_END_TIME", "SLURM_JOB_SLUID", "SLURM_NS_PID",
)  # fmt: skip


def install_scripts(lab: Lab) -> tuple[str, Path]:
    """The four scripts, each dumping what it runs with into LAB/parity/scripts/NAME.J."""
    out = parity_dir(lab) / "scripts"
    out.mkdir(exist_ok=True)
    lines = ""
    for name, (extra, after) in SCRIPT_EXTRA.items():
        path = lab.bin / f"parity-{name}"
        path.write_text(SCRIPT.format(name=name, out=out, extra=extra, after=after))
        path.chmod(0o755)
        lines += f"  {name}: {path}\n"
    return lines, out


def split_stdio(text: str) -> tuple[str, str, str]:
    """The three targets of a script's fds 0-2 (a target may hold a space: "(deleted)")."""
    targets = re.findall(r"/dev/null|pipe:\[\d+\]|socket:\[\d+\]|/\S+(?: \(deleted\))?",
                         section(text, "stdio"))  # fmt: skip
    assert len(targets) == 3, section(text, "stdio")
    return targets[0], targets[1], targets[2]


def script_view(lab: Lab, text: str, norm: Normaliser) -> dict[str, object]:
    env = env_lines(section(text, "env"))
    for key in VOLATILE:
        if key in env:
            env[key] = f"<{key}>"
    view = {key: norm(value) for key, value in env.items()}
    pwd = norm(section(text, "pwd").strip())
    # Slurm runs them in slurmd's working directory (its log dir, LAB/local here), nsctl in /.
    cwd = {"linux": "<LAB>/local", "nsctl": "/"}[lab.mode]
    if pwd == cwd and view.get("PWD") == cwd:
        deliberate("script_cwd")
        pwd = view["PWD"] = "<cwd>"
    found = {"env": view, "pwd": pwd}
    leaders = section(text, "leaders").split()
    if leaders == ["group", "yes", "session", {"linux": "no", "nsctl": "yes"}[lab.mode]]:
        deliberate("script_session")
        leaders[-1] = "<new session in nsctl, not in Slurm>"
    found["leaders"] = leaders
    # Not compared: the descriptors beyond 0-2 (Slurm's scripts inherit some of slurmstepd's).
    for name in ("id", "umask", "src", "target", "map before", "job tmp", "pid ns"):
        value = section(text, name)
        if value is not None:
            found[name] = norm(value).split()
    # stdin is /dev/null; stdout and stderr are one file that the runner captures: a pipe in
    # Slurm, a pipe or an unlinked temporary file in nsctl.
    stdin, out, err = split_stdio(text)
    captured = bool(re.fullmatch(r"pipe:\[\d+\]|/tmp/#\d+ \(deleted\)", out))
    found["stdio"] = [stdin, "captured" if captured else out, "= stdout" if err == out else err]
    links = section(text, "ns").split()
    found["ns"] = [ns_relation({"x": link}, lab.ns_link(link.split(":")[0]))["x"] for link in links]
    return found


def observe_scripts(lab: Lab) -> dict[str, object]:
    out = parity_dir(lab) / "scripts"
    res = lab.srun("sh", "-c", "echo job=$SLURM_JOB_ID; touch /tmp/from-the-job")
    assert res.returncode == 0, res
    job_id = job_id_of(res.stdout)
    norm = normaliser(lab, job_id)
    deadline = time.monotonic() + 30
    while not (out / f"clone_ns_epilog.{job_id}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {name: script_view(lab, (out / f"{name}.{job_id}").read_text(), norm)
            for name in SCRIPT_EXTRA}  # fmt: skip


def scripts_differences(seen: dict[str, dict]) -> None:
    """The deliberate differences of the scripts, asserted and then taken out of the records."""
    # nsctl makes the backing dirs on the host before init_script, Slurm inside the namespaces
    # after it (deliberate: backing_dirs): init_script sees B/J/.J empty under Slurm.
    assert seen["linux"]["init_script"].pop("src") == []
    assert seen["nsctl"]["init_script"].pop("src") == ["_tmp"]
    deliberate("backing_dirs")
    # clone_ns_epilog: under Slurm the holder is dead, nsctl's still lives (epilog_before_holder).
    assert seen["linux"]["clone_ns_epilog"].pop("pid ns") == ["dead"]
    assert seen["nsctl"]["clone_ns_epilog"].pop("pid ns") == ["enterable"]
    deliberate("epilog_before_holder")


def test_scripts_environments(lab: Lab) -> None:
    lines, _ = install_scripts(lab)
    yaml = config(lab, "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]\n" + lines)
    seen = run_both(lab, yaml, observe_scripts)
    scripts_differences(seen)
    assert_same(seen)
    assert seen["linux"]["clone_ns_epilog"]["job tmp"] == ["from-the-job"], seen


def test_task_environment_and_tmpdir(lab: Lab) -> None:
    """The task's environment is the same, TMPDIR aside (deliberate: tmpdir)."""
    elsewhere = str(lab.home / "submit-host-tmp")

    def observe(lab: Lab) -> dict[str, object]:
        found = {}
        for name, extra in (("no TMPDIR", {}), ("TMPDIR elsewhere", {"TMPDIR": elsewhere})):
            res = lab.srun("sh", "-c", "echo job=$SLURM_JOB_ID; env | sort", extra_env=extra)
            assert res.returncode == 0, res
            norm = normaliser(lab, job_id_of(res.stdout))
            env = env_lines(res.stdout)
            found[name] = {k: norm(v) if k not in VOLATILE else f"<{k}>" for k, v in env.items()}
        return found

    seen = run_both(lab, config(lab), observe)
    # Slurm keeps (and creates) the submitter's TMPDIR; nsctl's TaskProlog makes it /tmp.
    assert seen["linux"]["TMPDIR elsewhere"].pop("TMPDIR") == "<LAB>/home/submit-host-tmp"
    assert seen["nsctl"]["TMPDIR elsewhere"].pop("TMPDIR") == "/tmp"
    deliberate("tmpdir")
    assert_same(seen)
    assert seen["linux"]["no TMPDIR"]["TMPDIR"] == "/tmp"


# ---- what is left after the job --------------------------------------------------------------


def lab_leftovers(lab: Lab, job_ids: list[str]) -> dict[str, object]:
    """What the jobs left on the node: mounts, processes (holders of both kinds, the user's),
    nsctl's index entries."""
    mounts = [
        m for m in lab.mounts_under(str(lab.root)) if m not in (str(lab.root), str(lab.local))
    ]
    holder = re.compile(rb"(slurmstepd|nsctl): \[\d+:namespace\]")
    holders = [p for p in lab.processes() if holder.match(labns.cmdline(p))]
    return {
        "mounts": mounts,
        "holders": holders,
        "user processes": lab.user_processes(),
        "index entries": [e for e in lab.index_entries() if e in job_ids],
    }


def observe_leftovers(lab: Lab) -> dict[str, object]:
    sync = lab.new_dir("left")
    # One job ends by itself, one is cancelled while a step and a process that ignores SIGTERM
    # run (in /tmp, with files in every dir).
    done = lab.submit(f"touch /tmp/a /dev/shm/a {lab.root}/parity/scratch/nsctltest/a\n")
    lab.wait_job_gone(done.job_id)
    cancelled = lab.submit(
        "touch /tmp/b /dev/shm/b\n"
        'srun -Q sh -c \'cd /tmp; trap "" TERM; mkdir -p d/e; touch d/e/f; '
        f": > {sync}/step; exec sleep 600'\n"
    )
    lab.wait_file(sync / "step", cancelled)
    lab.admin("scancel", cancelled.job_id)
    lab.wait_job_gone(cancelled.job_id)
    found = lab_leftovers(lab, [done.job_id, cancelled.job_id])
    found.update({f"tree {name}": tree(lab, name, normaliser(lab, "")) for name in bases(lab)})
    found["states"] = [lab.job_field(j.job_id, "JobState") for j in (done, cancelled)]
    return found


def test_nothing_is_left_after_the_job(lab: Lab) -> None:
    (parity_dir(lab) / "scratch" / lab.user).mkdir(parents=True, exist_ok=True)
    extra = (
        "  clone_ns_flags: [CLONE_NEWPID]\n"
        "  dir_confs:\n    - path: /tmp\n    - path: /dev/shm\n"
        "    - path: {LAB}/parity/scratch/%u\n      base_path: {D}\n"
    )
    seen = run_both(lab, config(lab, extra), observe_leftovers)
    assert_same(seen)
    assert seen["linux"]["states"] == ["COMPLETED", "CANCELLED"], seen
    assert seen["linux"]["tree B"] == [("<B>", "drwxr-xr-x", 0, 0)], seen


# ---- requeue ---------------------------------------------------------------------------------


def requeue_run(lab: Lab, stale: bool) -> dict[str, object]:
    """A job requeued once; with stale, what a crashed teardown would leave of its first run
    (its job dir, with a file in its /tmp) is put back before the second run starts."""
    job, sync = lab.requeueable_job()
    base = Path(bases(lab)["B"]) / (lab.node if lab.mode == "linux" else "")
    job_dir = base / job.job_id
    lab.admin("scontrol", "requeuehold", job.job_id)
    lab.wait_job_state(job.job_id, ("PENDING",))
    deadline = time.monotonic() + 60
    while job_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    found: dict[str, object] = {"job dir gone between the runs": not job_dir.exists()}
    if stale:
        left = job_dir / f".{job.job_id}" / "_tmp"
        left.mkdir(parents=True)
        (left / "stale-file").touch()
    lab.release_now(job.job_id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (sync / "ready-1").exists() or "held" in lab.job_field(job.job_id, "Reason"):
            break
        time.sleep(0.1)
    found["second run"] = (sync / "ready-1").exists()
    found["reason"] = lab.job_field(job.job_id, "Reason")
    (sync / "go-1").touch()
    if not found["second run"]:
        lab.admin("scancel", job.job_id)
    lab.wait_job_gone(job.job_id)
    # Slurm's failed start deletes the stale dir too (its extern step's cleanup, _delete_ns).
    found["stale dir left"] = os.path.lexists(job_dir)
    shutil.rmtree(job_dir, ignore_errors=True)
    found["output"] = slurm_messages(job.read()).splitlines()
    found["restarts"] = lab.job_field(job.job_id, "Restarts")
    found["left"] = lab_leftovers(lab, [job.job_id])
    found["job dir"] = os.path.lexists(job_dir)
    found["node"] = lab.node_state()
    return found


def test_requeue_starts_the_second_run_afresh(lab: Lab) -> None:
    seen = run_both(lab, config(lab), lambda lab: requeue_run(lab, stale=False))
    assert_same(seen)
    runs = [line for line in seen["linux"]["output"] if line.startswith("run ")]
    assert runs == ["run 0 sees: ", "run 1 sees: "], seen


def test_requeue_onto_a_stale_job_dir(lab: Lab) -> None:
    """Deliberate (stale_job_dir): Slurm fails a job whose B/J exists (launch failed,
    requeued and held), nsctl cleans the leftover and runs it."""
    seen = run_both(lab, config(lab), lambda lab: requeue_run(lab, stale=True))
    assert seen["linux"]["second run"] is False, seen
    assert seen["linux"]["reason"] == "launch_failed_requeued_held", seen
    assert seen["nsctl"]["second run"] is True, seen
    runs = [line for line in seen["nsctl"]["output"] if line.startswith("run ")]
    assert runs == ["run 0 sees: ", "run 1 sees: "], seen
    deliberate("stale_job_dir")
    for mode in MODES:
        for key in ("second run", "reason", "output", "restarts"):
            seen[mode].pop(key)
    assert_same(seen)  # and nothing is left in either mode


# ---- kill -9 of slurmd during a job ----------------------------------------------------------


def kill_and_restart_slurmd(lab: Lab) -> None:
    lab.stop_slurmd(sig=signal.SIGKILL)
    lab.start_slurmd()
    deadline = time.monotonic() + 30
    while lab.node_state() not in ("alloc", "mix"):
        if time.monotonic() > deadline:
            raise LabError(f"slurmd did not come back: {lab.node_state()}")
        time.sleep(0.1)


def observe_slurmd_killed(lab: Lab) -> dict[str, object]:
    sync = lab.new_dir("kill9")
    found: dict[str, object] = {}
    base = Path(bases(lab)["B"]) / (lab.node if lab.mode == "linux" else "")
    # A: a step runs across slurmd's death and restart, and the job ends normally.
    job = lab.submit(
        "echo before > /tmp/f\n"
        "srun -Q sh -c 'echo from-step >> /tmp/f; "
        f": > {sync}/step; while [ ! -e {sync}/go ]; do sleep 0.05; done; "
        'echo "step after: $(cat /tmp/f | tr "\\n" " ")"; echo after >> /tmp/f\'\n'
        'echo "batch after: $(cat /tmp/f | tr "\\n" " ") rc=$?"\n'
    )
    lab.wait_file(sync / "step", job)
    kill_and_restart_slurmd(lab)
    found["job dir kept by the restart"] = (base / job.job_id).is_dir()
    (sync / "go").touch()
    lab.wait_job_gone(job.job_id)
    found["A output"] = job.read().splitlines()
    found["A exit"] = lab.job_field(job.job_id, "ExitCode")
    found["A left"] = lab_leftovers(lab, [job.job_id])
    found["A job dir"] = os.path.lexists(base / job.job_id)
    # B: a new step after the restart. slurmd has forgotten that the job's Prolog ran and waits
    # 20 s for it, then fails the step and requeues the job, and drains the node ("Prolog
    # error"): Slurm 26.05 does this in every mode (none included), not the plugins.
    with lab.running_job("echo before > /tmp/f") as held:
        kill_and_restart_slurmd(lab)
        res = lab.step(held.job_id, "cat", "/tmp/f", timeout=90)
        found["B step"] = (res.returncode, srun_lines(res))
        lab.wait_job_state(held.job_id, ("PENDING",))
        found["B reason"] = lab.job_field(held.job_id, "Reason")
        found["B node"] = lab.node_reason()
        lab.admin("scancel", held.job_id)
    lab.resume_node()
    found["B left"] = lab_leftovers(lab, [held.job_id])
    found["B job dir"] = os.path.lexists(base / held.job_id)
    norm = normaliser(lab, job.job_id)
    return {key: slurm_messages(norm(str(value))) for key, value in found.items()}


def test_kill_9_of_slurmd_during_a_job(lab: Lab) -> None:
    seen = run_both(lab, config(lab, "  clone_ns_flags: [CLONE_NEWPID]\n"), observe_slurmd_killed)
    assert_same(seen)
    assert seen["linux"]["A exit"] == "0:0", seen


# ---- the man pages list every deliberate difference -----------------------------------------


def test_every_deliberate_difference_is_in_the_man_pages(lab: Lab) -> None:
    missing = []
    for name, diff in DELIBERATE.items():
        text = man_text(str(REPO / "man" / diff.page), diff.section).lower()
        if diff.phrase.lower() not in text:
            where = f"{diff.page}" + (f", {diff.section}" if diff.section else "")
            missing.append(f"{name}: {where} should say {diff.phrase!r}: {diff.what}")
    assert not missing, "deliberate differences the man pages do not list:\n" + "\n".join(missing)
