"""Pure planning: a resolved node config and a job become a tuple of small, concrete operations.

Nothing here touches the system. ``setup --dry-run`` prints exactly the plan the engine would run;
the engine executes it in order. Teardown is planned from the config and the job id alone, so it
works on a job whose setup never finished.
"""

from __future__ import annotations

import os

from .config import DEV_SHM, INIT_SCRIPT_WAIT, USER_NS_SCRIPT_WAIT, NodeConfig, expand_job_path
from .errors import InputError
from .jobs import Job
from .layout import MARKER, NS_JOIN_ORDER, IndexEntry, JobPaths
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional, Union

ROOT = 0
KEEP = -1  # leave the group unchanged


# --- host-side operations (run by nsctl itself, in the host's namespaces) --------------------


class EnsureBase(Record):
    """B (or a per-dir base) must exist as a real directory; created 0755 when ``create``."""

    path: str
    create: bool

    def describe(self) -> str:
        how = "create (mode 0755) if missing" if self.create else "must exist"
        return f"base directory {self.path}: {how}"


class MakeDir(Record):
    path: str
    mode: int
    uid: int = ROOT
    gid: int = KEEP

    def describe(self) -> str:
        owner = f"uid {self.uid}" + ("" if self.gid == KEEP else f", gid {self.gid}")
        return f"mkdir {self.path} (mode {self.mode:04o}, {owner})"


class BindSelfPrivate(Record):
    path: str

    def describe(self) -> str:
        return f"bind-mount {self.path} onto itself and make it rprivate"


class MakeNsFile(Record):
    kind: str
    path: str

    def describe(self) -> str:
        return f"create namespace file {self.path} ({self.kind})"


class MakeMarker(Record):
    """The empty file that says nsctl made this job directory (nsctl gc acts on no other)."""

    path: str

    def describe(self) -> str:
        return f"create {self.path} (nsctl's mark)"


class CheckTarget(Record):
    """A mount target must already exist as a directory, never a symlink; nsctl never creates it."""

    path: str

    def describe(self) -> str:
        return f"check mount target {self.path} is an existing directory"


class RunScript(Record):
    name: str  # config key: init_script, user_ns_script, clone_ns_script, clone_ns_epilog
    path: str
    env: tuple[tuple[str, str], ...]
    timeout: int

    def describe(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env)
        return f"run {self.name} {self.path} (limit {self.timeout} s) with env: {env}"


# --- operations run inside the new namespaces, by the namespace's first process --------------


class SetPropagation(Record):
    shared: bool

    def describe(self) -> str:
        return "make / rshared then rslave" if self.shared else "make / rprivate"


class MountProc(Record):
    def describe(self) -> str:
        return "mount a fresh procfs on /proc (nosuid,nodev,noexec)"


class BindMount(Record):
    source: str
    target: str
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        remount = f", then remount {','.join(self.flags)}" if self.flags else ""
        return f"bind-mount {self.source} on {self.target}{remount}"


class TmpfsMount(Record):
    target: str
    flags: tuple[str, ...]  # nosuid,nodev always, but for namespace/tmpfs's /dev/shm
    data: tuple[str, ...] = ()
    replace: bool = False  # unmount what is mounted on target first (EINVAL: nothing is)

    def describe(self) -> str:
        options = ",".join(self.flags + self.data) or "no flags, as namespace/tmpfs"
        mount = f"mount a fresh tmpfs on {self.target} ({options})"
        return f"unmount {self.target}, then {mount}" if self.replace else mount


class HideJobDir(Record):
    """namespace/tmpfs: the job's mount of B/J is lazily unmounted inside the job, so a job
    does not see the base path's mounts (the bind mounts made from it stay)."""

    path: str

    def describe(self) -> str:
        return f"unmount {self.path} (lazily) inside the job, as namespace/tmpfs does"


if TYPE_CHECKING:
    ChildOp = Union[SetPropagation, MountProc, BindMount, TmpfsMount, HideJobDir]


class CreateNamespaces(Record):
    """Unshare, persist the namespaces on the .ns files, map the user ns, run the child ops."""

    job_id: str
    kinds: tuple[str, ...]  # of "pid", "user", "mnt", in bind (= join) order
    ns_files: tuple[tuple[str, str], ...]  # (kind, path)
    child: tuple[ChildOp, ...]
    user_ns_script: Optional[RunScript] = None

    @property
    def holder(self) -> bool:
        return "pid" in self.kinds

    def describe(self) -> str:
        kinds = ",".join(self.kinds)
        lines = [f"unshare namespaces {kinds}; bind /proc/<pid>/ns/{{{kinds}}} onto .ns files"]
        if "user" in self.kinds:
            if self.user_ns_script:
                lines.append("  " + self.user_ns_script.describe() + " (+ SLURM_NS_PID)")
            else:
                lines.append("  write uid_map and gid_map: 0 0 4294967295")
        lines += [f"  in the namespace: {op.describe()}" for op in self.child]
        if self.holder:
            lines.append(f"  keep PID 1 alive as the holder 'nsctl: [{self.job_id}:namespace]'")
        return "\n".join(lines)


class WriteIndex(Record):
    """The job's runtime index entry; the engine fills in the holder and the directory ids."""

    path: str
    entry: IndexEntry

    def describe(self) -> str:
        return f"write runtime index {self.path}"


if TYPE_CHECKING:
    Op = Union[
        EnsureBase,
        MakeDir,
        BindSelfPrivate,
        MakeNsFile,
        MakeMarker,
        CheckTarget,
        RunScript,
        CreateNamespaces,
        WriteIndex,
    ]


class Plan(Record):
    job: Job
    paths: JobPaths
    ops: tuple[Op, ...]
    targets: tuple[str, ...]  # expanded private directories inside the job, in order
    dir_job_roots: tuple[str, ...]  # D/J for per-dir bases

    def describe(self) -> str:
        return "\n".join(f"{n:2d}. {op.describe()}" for n, op in enumerate(self.ops, 1))


def script_env(job: Job, env: Mapping[str, str], node: str) -> dict[str, str]:
    """Exactly the variables Slurm gives init/user_ns/clone_ns scripts (section 2.6)."""
    result = {
        "SLURM_JOB_ID": job.job_id,
        "SLURM_CONF": env.get("SLURM_CONF", ""),
        "SLURMD_NODENAME": node,
        "SLURM_JOB_UID": str(job.uid),
        "SLURM_JOB_GID": str(job.gid),
        "SLURM_JOB_USER": job.user,
    }
    optional = (
        "SLURM_HET_JOB_ID",
        "SLURM_JOB_SLUID",
        "SLURM_NODE_ALIASES",
        "SLURM_JOB_WORK_DIR",
        "SLURM_JOB_MEM",
        "SLURM_JOB_CPUS",
        "SLURM_JOB_NUM_NODES",
        "SLURM_JOB_GRES",
    )
    result.update({key: env[key] for key in optional if env.get(key)})
    return result


def epilog_env(job_id: str, ns_dir: str, env: Mapping[str, str], node: str) -> dict[str, str]:
    """clone_ns_epilog gets only these four (SLURM_NS is the .ns directory, not a file: E13)."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_CONF": env.get("SLURM_CONF", ""),
        "SLURMD_NODENAME": node,
        "SLURM_NS": ns_dir,
    }


def expanded_targets(config: NodeConfig, job: Job) -> tuple[str, ...]:
    try:
        return tuple(
            expand_job_path(d.path, job.job_id, job.user, job.sluid) for d in config.dir_confs
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None


def plan_setup(config: NodeConfig, job: Job, index_file: str, env: Mapping[str, str]) -> Plan:
    """Every step of ``nsctl setup`` for one job, in order, with every value concrete."""
    assert config.enabled and config.base_path
    paths = JobPaths(config.base_path, job.job_id)
    targets = expanded_targets(config, job)
    kinds = tuple(
        kind
        for kind in NS_JOIN_ORDER
        if kind == "mnt" or (kind == "pid" and config.pid_ns) or (kind == "user" and config.user_ns)
    )
    step_env = script_env(job, env, config.node)
    src_env = {**step_env, "SLURM_JOB_MOUNTPOINT_SRC": paths.src}

    # A per-dir base equal to B puts the backing dir in B/J itself, beside .ns and .J.
    dir_bases = tuple(
        dict.fromkeys(
            d.base_path for d in config.dir_confs if d.base_path and d.base_path != config.base_path
        )
    )
    ops: list[Op] = [EnsureBase(config.base_path, config.auto_base_path)]
    ops += [EnsureBase(base, config.auto_base_path) for base in dir_bases]
    ops += [CheckTarget(target) for target in targets]
    ops += [MakeDir(paths.job_dir, 0o700), MakeMarker(paths.marker)]
    ops += [BindSelfPrivate(paths.job_dir)]
    ops += [MakeDir(paths.ns_dir, 0o700)]
    ops += [MakeNsFile(kind, paths.ns_file(kind)) for kind in kinds]
    ops += [MakeDir(paths.src, 0o700, job.uid)]
    for base in dir_bases:
        root = paths.dir_job_root(base)
        ops += [MakeDir(root, 0o700), MakeMarker(os.path.join(root, MARKER))]

    child: list[ChildOp] = [SetPropagation(config.shared)]
    if config.pid_ns:
        child.append(MountProc())
    last: list[ChildOp] = []
    for dir_conf, target in zip(config.dir_confs, targets):
        if dir_conf.tmpfs and config.tmpfs_plugin and target == DEV_SHM:
            # namespace/tmpfs: the node's /dev/shm unmounted (unless shared) and a tmpfs with
            # no flags at all mounted there, after the job directory is hidden.
            last.append(TmpfsMount(target, (), dir_conf.data, replace=not config.shared))
        elif dir_conf.tmpfs:
            flags = tuple(dict.fromkeys(dir_conf.flags + ("nosuid", "nodev")))
            child.append(TmpfsMount(target, flags, dir_conf.data))
        else:
            backing = paths.backing(target, dir_conf.base_path)
            ops.append(MakeDir(backing, 0o700, job.uid, ROOT))
            child.append(BindMount(backing, target, dir_conf.flags))
    if config.tmpfs_plugin:
        child.append(HideJobDir(paths.job_dir))
    child += last

    if config.init_script:
        ops.append(
            RunScript("init_script", config.init_script, tuple(src_env.items()), INIT_SCRIPT_WAIT)
        )
    user_script = None
    if config.user_ns and config.user_ns_script:
        user_script = RunScript(
            "user_ns_script", config.user_ns_script, tuple(step_env.items()), USER_NS_SCRIPT_WAIT
        )
    ops.append(
        CreateNamespaces(
            job.job_id,
            kinds,
            tuple((kind, paths.ns_file(kind)) for kind in kinds),
            tuple(child),
            user_script,
        )
    )
    if config.clone_ns_script:
        clone_env = {**src_env, "SLURM_NS": paths.ns_file("mnt")}
        ops.append(
            RunScript(
                "clone_ns_script",
                config.clone_ns_script,
                tuple(clone_env.items()),
                config.clone_ns_script_wait,
            )
        )
    entry = IndexEntry(
        job_id=job.job_id,
        uid=job.uid,
        gid=job.gid,
        user=job.user,
        job_dir=paths.job_dir,
        namespaces=kinds,
        dirs=targets,
        dir_bases=dir_bases,
        tmpfs_dirs=tuple(t for d, t in zip(config.dir_confs, targets) if d.tmpfs),
    )
    ops.append(WriteIndex(index_file, entry))
    return Plan(job, paths, tuple(ops), targets, tuple(paths.dir_job_root(b) for b in dir_bases))


# --- teardown: one record per step, run in order by the engine ----------------------------
#
# Every step on a job directory acts on the directory OpenJobDir opened and verified: the one
# setup made (the device and inode the index recorded), reached from / without a symlink. A job
# directory that is missing is skipped; one that is not what setup made is left alone.


class OpenJobDir(Record):
    path: str  # B/J
    expected_id: str  # "DEV:INO" from the index; "" when only the config names it

    def describe(self) -> str:
        check = f", the directory setup made ({self.expected_id})" if self.expected_id else ""
        return f"open {self.path} without following symlinks{check}; skip it if missing"


class KillHolder(Record):
    job_dir: str
    pid: int = 0  # from the index: believed only with its start time
    start: str = ""

    def describe(self) -> str:
        return f"kill the verified holder of {self.job_dir}/.ns/pid, if any, and wait for it"


class KillJobProcesses(Record):
    job_dir: str
    now: bool = True  # False: the detached deleter does it, before it deletes anything

    def describe(self) -> str:
        when = "" if self.now else " (done by the background deleter, before it deletes)"
        return (
            f"without a PID namespace: kill every process whose mount namespace is "
            f"{self.job_dir}/.ns/mnt, and wait until none is left{when}"
        )


class UnmountNsFiles(Record):
    job_dir: str

    def describe(self) -> str:
        return f"unmount {self.job_dir}/.ns/{{pid,user,mnt}} (lazily)"


class MeasureTmpfs(Record):
    """How much each tmpfs private dir holds, read inside the job's mount namespace while it
    still exists (for the usage report)."""

    job_dir: str
    targets: tuple[str, ...]

    def describe(self) -> str:
        return f"measure {', '.join(self.targets)} inside the job's mount namespace"


class RemoveJobDir(Record):
    job_dir: str

    def describe(self) -> str:
        return (
            f"unmount {self.job_dir} (lazily) and move it aside, within its file system, to a "
            "name no job id can take"
        )


class RemoveDirRoot(Record):
    path: str  # D/J
    expected_id: str

    def describe(self) -> str:
        return f"open {self.path} like the job directory, and move it aside"


class RemoveIndex(Record):
    path: str

    def describe(self) -> str:
        return f"remove runtime index {self.path} and its temporary files, if nothing was left"


class DeleteMovedAside(Record):
    """Delete the trees moved aside: now, or in a detached process at idle priority."""

    job_id: str
    wait: bool
    dirs: tuple[str, ...]  # the job's private directories, to name them in the usage report

    def describe(self) -> str:
        how = "now" if self.wait else "in a detached process at idle CPU and I/O priority"
        return (
            f"delete what was moved aside {how} (no symlinks followed, no mounts crossed), "
            "and log how much each private directory held"
        )


if TYPE_CHECKING:
    TeardownOp = Union[
        RunScript,
        OpenJobDir,
        KillHolder,
        KillJobProcesses,
        MeasureTmpfs,
        UnmountNsFiles,
        RemoveJobDir,
        RemoveDirRoot,
        RemoveIndex,
        DeleteMovedAside,
    ]


class TeardownPlan(Record):
    """Where a job's files may be: from the config, and from the index entry when there is one
    (so a job set up under an older config is still found)."""

    job_id: str
    ops: tuple[TeardownOp, ...]

    @property
    def job_dirs(self) -> tuple[str, ...]:
        return tuple(op.path for op in self.ops if isinstance(op, OpenJobDir))

    @property
    def dir_job_roots(self) -> tuple[str, ...]:
        return tuple(op.path for op in self.ops if isinstance(op, RemoveDirRoot))

    @property
    def epilog(self) -> Optional[RunScript]:
        return next((op for op in self.ops if isinstance(op, RunScript)), None)

    def describe(self) -> str:
        return "\n".join(f"{n:2d}. {op.describe()}" for n, op in enumerate(self.ops, 1))


def plan_teardown(
    config: Optional[NodeConfig],
    job_id: str,
    index_file: str,
    env: Mapping[str, str],
    entry: Optional[IndexEntry] = None,
    wait: bool = True,
    found: tuple[str, ...] = (),
    found_roots: tuple[str, ...] = (),
) -> TeardownPlan:
    """``wait``: delete the job's files before returning, rather than in the background.
    ``found``/``found_roots``: nsctl-marked B/J and D/J that nsctl gc found on disk."""
    job_dirs: dict[str, str] = {}  # B/J -> expected id
    roots: dict[str, str] = {}
    if entry is not None:
        job_dirs[entry.job_dir] = entry.job_dir_id
        roots.update(zip(entry.dir_roots, entry.dir_root_ids))
    job_dirs.update((path, "") for path in found if path not in job_dirs)
    roots.update((path, "") for path in found_roots if path not in roots)
    epilog = None
    if config is not None and config.enabled and config.base_path:
        paths = JobPaths(config.base_path, job_id)
        job_dirs.setdefault(paths.job_dir, "")
        for d in config.dir_confs:
            if d.base_path and d.base_path != config.base_path:
                roots.setdefault(paths.dir_job_root(d.base_path), "")
        if config.clone_ns_epilog:
            # The job's own .ns directory, even if base_path changed since it was set up;
            # namespace/tmpfs gives its scripts the namespace file itself (its .ns is a file).
            ns_dir = next(iter(job_dirs)) + "/.ns" if job_dirs else paths.ns_dir
            if config.tmpfs_plugin:
                ns_dir = os.path.join(ns_dir, "mnt")
            epilog = RunScript(
                "clone_ns_epilog",
                config.clone_ns_epilog,
                tuple(epilog_env(job_id, ns_dir, env, config.node).items()),
                config.clone_ns_epilog_wait,
            )
    ops: list[TeardownOp] = [epilog] if epilog else []
    for job_dir, expected in job_dirs.items():
        ours = entry is not None and entry.job_dir == job_dir
        holder = (entry.holder_pid, entry.holder_start) if ours else ()
        ops += [OpenJobDir(job_dir, expected), KillHolder(job_dir, *holder)]
        ops.append(KillJobProcesses(job_dir, wait))
        if ours and entry.tmpfs_dirs:
            ops.append(MeasureTmpfs(job_dir, entry.tmpfs_dirs))
        ops += [UnmountNsFiles(job_dir), RemoveJobDir(job_dir)]
    ops += [RemoveDirRoot(root, expected) for root, expected in roots.items()]
    ops.append(RemoveIndex(index_file))
    ops.append(DeleteMovedAside(job_id, wait, entry.dirs if entry else ()))
    return TeardownPlan(job_id, tuple(ops))
