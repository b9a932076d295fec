"""A real one-node Slurm 22.05 cluster on this machine, wired to nsctl the way contrib/slurm says.

Used by the e2e tests and by bench/bench_jobstart.py. Everything lives under LAB_DIR (never
under /tmp: once jobs get a private /tmp, a TaskProlog or slurm.conf there would vanish from the
job's view). Daemons are started and stopped by pid; `Lab.stop()` leaves nothing running.

Isolation modes, switched by rewriting slurm.conf and restarting the daemons: ``none``
(PrologFlags=Contain only), ``tmpfs`` (Slurm's own C job_container/tmpfs, the reference),
``nsctl`` (contrib/slurm Prolog/Epilog/TaskProlog and the SPANK plugin), and ``spank`` (the SPANK
plugin alone, for tests that hand it index entries).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "slurm"
LAB_DIR = Path("/var/lib/nsctl-lab")
NODE = "lab1"  # deliberately not the hostname: nsctl must key node_confs on the Slurm node name
USER = "nsctltest"
RUN_DIR = Path("/run/nsctl")
PACKAGES = ("slurmd", "slurmctld", "slurm-client", "munge", "libslurm-dev")
MUNGE_PID = Path("/run/munge/munged.pid")
SLURM_BINARIES = ("slurmd", "slurmctld", "slurmstepd", "munged")


class LabError(RuntimeError):
    """The lab could not be brought into the requested state (a harness failure, not a test's)."""


SANDBOX_CPU = 0  # tests/conftest.py creates the sandbox mount namespace on this CPU


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 120)
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise LabError(f"{cmd} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


REPO = Path(__file__).resolve().parents[2]


def install_nsctl(venv: Path) -> str:
    """Install nsctl as the rollout guide says (pip, not editable) into a dedicated venv, and
    return its console script (the Prolog needs an absolute path: it gets no PATH)."""
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(REPO)], timeout=600)
    return str(venv / "bin" / "nsctl")


def ensure_packages() -> None:
    """Install Debian's Slurm and munge when any piece is missing (they fail the run, not skip)."""
    missing = [b for b in ("slurmd", "slurmctld", "srun", "munged") if not shutil.which(b)]
    if not missing and Path("/usr/include/slurm/spank.h").is_file():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env, timeout=600)
    run(["apt-get", "install", "-y", "-qq", *PACKAGES], env=env, timeout=600)


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/sh", name])
        return pwd.getpwnam(name)


def build_plugin(libdir: Path) -> Path:
    """Build and install the SPANK plugin with its Makefile, as the README tells an admin."""
    spank = CONTRIB / "spank"
    run(["make", "-C", str(spank), "--no-print-directory", "-B", "nsctl_spank.so"])
    run(["make", "-C", str(spank), "--no-print-directory", "install", f"LIBDIR={libdir}"])
    return libdir / "nsctl_spank.so"


def exe_name(pid: int) -> Optional[str]:
    """The program a pid runs, as its Slurm name (Debian installs slurmd as slurmd-wlm)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    name = os.path.basename(exe).split(" ")[0]
    return name[: -len("-wlm")] if name.endswith("-wlm") else name


def pid_alive(pid: int, name: str) -> bool:
    """True when pid is a live process running the program `name`."""
    return exe_name(pid) == name


def read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pid(pid: int, name: str, timeout: float = 20.0) -> None:
    """SIGTERM a verified daemon pid and wait for it to go away; SIGKILL if it hangs."""
    if pid <= 1 or not pid_alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, name):
            return
        time.sleep(0.05)
    if pid_alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def processes_named(names: tuple[str, ...]) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        exe = exe_name(int(entry))
        if exe in names:
            found.append((int(entry), exe))
    return found


def mounts_under(prefix: str) -> list[str]:
    """Mount points under prefix in this mount namespace (field 5 of mountinfo)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                points.append(point)
    return points


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"rc={self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


@dataclass
class BatchJob:
    job_id: str
    output: Path
    sync: Path

    def read(self) -> str:
        return self.output.read_text() if self.output.exists() else ""


class Lab:
    """One node, one partition, munge + slurmctld + slurmd, all owned by this object."""

    def __init__(self, root: Path = LAB_DIR, node: str = NODE, user: str = USER):
        self.root = root
        self.node = node
        self.user = user
        self.etc = root / "etc"
        self.log_dir = root / "log"
        self.bin = root / "bin"
        self.lib = root / "lib"
        self.conf = self.etc / "slurm.conf"
        self.slurmd_log = self.log_dir / "slurmd.log"
        self.nsctl_log = self.log_dir / "nsctl.log"  # the Prolog's and Epilog's output
        self.ns_base = root / "ns"  # nsctl's base_path
        self.jc_base = root / "jc"  # job_container/tmpfs BasePath
        self.home = root / "home"  # the job user's working directory (shared by its jobs)
        self.spank_index = root / "index"  # hand-made index entries for the plugin-only tests
        self.hostname = os.uname().nodename.split(".")[0]  # slurmctld checks it is this host
        self.mode: Optional[str] = None
        self.settings: Optional[tuple] = None
        self.started_munge = False
        self.munge_pid: Optional[int] = None
        self.nsctl = str(root / "venv" / "bin" / "nsctl")  # installed by prepare()

    # ---- bring-up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the e2e lab needs root")
        ensure_packages()
        account = ensure_user(self.user)
        self.uid, self.gid = account.pw_uid, account.pw_gid
        self._stop_stale()
        if mounts_under(str(self.root)):
            raise LabError(f"mounts left under {self.root}: {mounts_under(str(self.root))}")
        shutil.rmtree(self.root, ignore_errors=True)
        for sub in ("etc", "state", "spool", "log", "bin", "lib"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        shutil.chown(self.root / "state", "slurm", "slurm")
        shutil.chown(self.log_dir, "slurm", "slurm")
        self.home.mkdir(mode=0o755)
        os.chown(self.home, self.uid, self.gid)
        self.plugin = build_plugin(self.lib)
        self.nsctl = install_nsctl(self.root / "venv")
        self.start_munge()

    def _stop_stale(self) -> None:
        """Daemons left by an interrupted earlier run of this lab (verified by pid file + exe)."""
        for name, exe in (("slurmd.pid", "slurmd"), ("slurmctld.pid", "slurmctld")):
            pid = read_pid(self.root / name)
            if pid:
                stop_pid(pid, exe)

    def start_munge(self) -> None:
        pid = read_pid(MUNGE_PID)
        if pid and pid_alive(pid, "munged"):
            self.munge_pid = pid  # someone else's munged: use it, leave it running
            return
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
        self.munge_pid = read_pid(MUNGE_PID)
        self.started_munge = True

    def install_contrib(self, on_error: str = "fail") -> None:
        """Copy the contrib scripts and set NSCTL=, LOG= and ON_ERROR=, as the README says."""
        for name in ("prolog", "epilog", "taskprolog"):
            text = (CONTRIB / name).read_text()
            text = re.sub(r"(?m)^NSCTL=.*$", f"NSCTL={self.nsctl}", text)
            text = re.sub(r"(?m)^ON_ERROR=.*$", f"ON_ERROR={on_error}", text)
            text = re.sub(r"(?m)^LOG=.*$", f"LOG={self.nsctl_log}", text)
            target = self.bin / name
            target.write_text(text)
            target.chmod(0o755)

    def slurm_conf(self, mode: str) -> str:
        lab = self.root
        lines = [
            "ClusterName=lab",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            "SlurmUser=slurm",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            f"StateSaveLocation={lab}/state",
            f"SlurmdSpoolDir={lab}/spool",
            f"SlurmctldPidFile={lab}/slurmctld.pid",
            f"SlurmdPidFile={lab}/slurmd.pid",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.slurmd_log}",
            "SlurmdDebug=debug",
            "PrologFlags=Alloc,Contain",
            "KillWait=5",
            "MinJobAge=30",
        ]
        if mode == "tmpfs":
            lines.append("JobContainerType=job_container/tmpfs")
        if mode == "spank":
            # The plugin alone, fed with hand-made index entries (tests/e2e/test_spank.py).
            lines.append(f"PlugStackConfig={self.etc}/plugstack.conf")
        if mode == "nsctl":
            # The lines contrib/slurm/slurm.conf.example tells an admin to add.
            lines += [
                f"Prolog={self.bin}/prolog",
                f"Epilog={self.bin}/epilog",
                f"TaskProlog={self.bin}/taskprolog",
                f"PlugStackConfig={self.etc}/plugstack.conf",
            ]
        lines += [
            f"NodeName={self.node} NodeHostname={self.hostname} "
            "NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def configure(
        self,
        mode: str,
        namespace_yaml: Optional[str] = None,
        on_error: str = "fail",
        job_container_conf: Optional[str] = None,
    ) -> None:
        """Put the cluster in a mode; restarts the daemons only when something changed.

        ``job_container_conf`` is the text of job_container.conf for job_container/tmpfs
        (default: AutoBasePath=true and BasePath=jc_base).
        """
        if mode not in ("none", "tmpfs", "spank", "nsctl"):
            raise ValueError(mode)
        namespace_yaml = namespace_yaml or self.default_namespace_yaml()
        if job_container_conf is None:
            job_container_conf = f"AutoBasePath=true\nBasePath={self.jc_base}\n"
        settings = (mode, namespace_yaml, on_error, job_container_conf)
        if settings == self.settings and self.daemons_alive():
            return
        self.stop_daemons()
        self.conf.write_text(self.slurm_conf(mode))
        (self.etc / "namespace.yaml").write_text(namespace_yaml)
        (self.etc / "job_container.conf").write_text(job_container_conf)
        # nsctl mode uses the plugin's default index (/run/nsctl/jobs), as the README does;
        # spank mode feeds it hand-made entries through the index_dir= argument.
        argument = f" index_dir={self.spank_index}" if mode == "spank" else ""
        (self.etc / "plugstack.conf").write_text(f"required {self.plugin}{argument}\n")
        self.install_contrib(on_error)
        self.start_daemons()
        self.mode, self.settings = mode, settings

    def default_namespace_yaml(self) -> str:
        return f"defaults:\n  auto_base_path: true\n  base_path: {self.ns_base}\n"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def start_daemons(self) -> None:
        try:
            run(["slurmctld", "-f", str(self.conf)], env=self.env)
            # slurmd runs inside the test sandbox's mount namespace. There, binding a new mnt
            # namespace file fails with EINVAL at random unless that namespace is created on
            # the CPU the sandbox was made on (slurm-lab.md, the kernel fact): Slurm's own
            # job_container/tmpfs has no retry, so slurmd and its steps stay on that CPU.
            run(
                ["slurmd", "-f", str(self.conf), "-N", self.node],
                env=self.env,
                preexec_fn=lambda: os.sched_setaffinity(0, {SANDBOX_CPU}),
            )
            self.wait_node_state("idle")
        except BaseException:
            self.stop_daemons()
            raise

    def daemons_alive(self) -> bool:
        return all(
            (pid := read_pid(self.root / f"{exe}.pid")) is not None and pid_alive(pid, exe)
            for exe in ("slurmd", "slurmctld")
        )

    def stop_daemons(self) -> None:
        if self.daemons_alive():
            self.cancel_all()
        self.settings = None
        for exe in ("slurmd", "slurmctld"):
            pid = read_pid(self.root / f"{exe}.pid")
            if pid:
                stop_pid(pid, exe)

    def stop(self) -> None:
        self.stop_daemons()
        if self.started_munge and self.munge_pid:
            stop_pid(self.munge_pid, "munged")

    # ---- clients ----------------------------------------------------------------------------

    def admin(self, *cmd: str, check: bool = True, timeout: float = 60) -> Result:
        """A Slurm client command as root."""
        res = run(list(cmd), check=check, env=self.env, timeout=timeout)
        return Result(res.returncode, res.stdout, res.stderr)

    def as_user(
        self, *cmd: str, extra_env: Optional[dict[str, str]] = None, timeout: float = 120
    ) -> Result:
        """A command as the job user with a clean submit environment (what a login shell has)."""
        env = {**self.env, "HOME": str(self.home), "USER": self.user, "LOGNAME": self.user}
        env.update(extra_env or {})
        argv = ["runuser", "-u", self.user, "--", "env", "-i"]
        argv += [f"{k}={v}" for k, v in env.items()] + list(cmd)
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=str(self.home)
        )
        return Result(res.returncode, res.stdout, res.stderr)

    def srun(self, *cmd: str, **kwargs) -> Result:
        return self.as_user("srun", "-Q", *cmd, **kwargs)

    def sbatch(self, script: str, *options: str, **kwargs) -> str:
        """Submit a batch script as the user; returns the job id."""
        path = self.home / f"job-{time.monotonic_ns()}.sh"
        path.write_text("#!/bin/sh\n" + script)
        os.chown(path, self.uid, self.gid)
        res = self.as_user("sbatch", "--parsable", *options, str(path), **kwargs)
        if res.returncode != 0:
            raise LabError(f"sbatch failed: {res}")
        return res.stdout.strip().split(";")[0]

    def new_dir(self, prefix: str) -> Path:
        """A fresh directory in the user's home that jobs and the test can both write to."""
        path = self.home / f"{prefix}-{time.monotonic_ns()}"
        path.mkdir()
        os.chown(path, self.uid, self.gid)
        return path

    def submit(self, script: str, *options: str, **kwargs) -> BatchJob:
        """sbatch as the user, output into a fresh directory (opened on the host side)."""
        sync = self.new_dir("job")
        output = sync / "out"
        job_id = self.sbatch(script, "-o", str(output), *options, **kwargs)
        return BatchJob(job_id, output, sync)

    def wait_file(self, path: Path, job: Optional[BatchJob] = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return
            if job and self.job_field(job.job_id, "JobState") in ("FAILED", "COMPLETED"):
                raise LabError(f"job {job.job_id} ended before {path} appeared:\n{job.read()}")
            time.sleep(0.05)
        raise LabError(f"{path} did not appear in {timeout}s" + (f":\n{job.read()}" if job else ""))

    @contextlib.contextmanager
    def running_job(self, script: str, *options: str) -> Iterator[BatchJob]:
        """A batch job that runs `script`, then stays alive until the with-block ends."""
        body = f"{script}\n: > $SYNC/ready\nwhile [ ! -e $SYNC/go ]; do sleep 0.05; done\n"
        sync = self.new_dir("job")
        output = sync / "out"
        body = body.replace("$SYNC", str(sync))
        job = BatchJob(self.sbatch(body, "-o", str(output), *options), output, sync)
        try:
            self.wait_file(sync / "ready", job)
            yield job
        finally:
            (sync / "go").touch()
            self.wait_job_gone(job.job_id)

    def allocate(self, *options: str) -> str:
        """An allocation without a shell (salloc --no-shell) as the user; returns the job id."""
        res = self.as_user("salloc", "--no-shell", *options)
        match = re.search(r"Granted job allocation (\d+)", res.stderr)
        if res.returncode != 0 or not match:
            raise LabError(f"salloc failed: {res}")
        return match.group(1)

    def step(self, job_id: str, *cmd: str, **kwargs) -> Result:
        """An srun step inside an existing allocation."""
        return self.as_user("srun", "-Q", f"--jobid={job_id}", *cmd, **kwargs)

    def node_state(self) -> str:
        return self.admin("sinfo", "-h", "-N", "-o", "%t").stdout.strip()

    def node_reason(self) -> str:
        return self.admin("sinfo", "-h", "-N", "-o", "%E").stdout.strip()

    def wait_node_state(self, state: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.admin("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()
            if seen == state:
                return
            time.sleep(0.1)
        raise LabError(f"node state is {seen!r}, waited {timeout}s for {state!r}")

    def resume_node(self) -> None:
        self.admin("scontrol", "update", f"nodename={self.node}", "state=resume")
        self.wait_node_state("idle")

    def job_field(self, job_id: str, field: str) -> str:
        res = self.admin("scontrol", "-o", "show", "job", job_id, check=False)
        match = re.search(rf"(?:^| ){field}=(\S*)", res.stdout)
        return match.group(1) if match else ""

    def wait_job_gone(self, job_id: str, timeout: float = 120) -> None:
        """Wait until the job has finished and its Epilog has run (no COMPLETING left)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.admin("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout
            if not out.strip():
                return
            time.sleep(0.1)
        raise LabError(f"job {job_id} still in the queue after {timeout}s")

    def wait_job_state(self, job_id: str, states: tuple[str, ...], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state in states:
                return state
            time.sleep(0.1)
        raise LabError(f"job {job_id} is {state!r}, waited {timeout}s for {states}")

    def cancel_all(self) -> None:
        self.admin("scancel", "--full", "-u", self.user, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.admin("squeue", "-h", "-o", "%i", check=False).stdout
            if not out.strip() and not processes_named(("slurmstepd",)):
                return
            time.sleep(0.1)
        raise LabError("jobs or slurmstepd processes still running after scancel")

    def log_mark(self) -> dict[Path, int]:
        """Where slurmd's and nsctl's logs end now; pass it to logs_since()."""
        return {log: log.stat().st_size if log.exists() else 0 for log in self.logs}

    def logs_since(self, mark: dict[Path, int]) -> str:
        text = ""
        for log in self.logs:
            if log.exists():
                with open(log, encoding="utf-8", errors="replace") as handle:
                    handle.seek(mark.get(log, 0))
                    text += handle.read()
        return text

    @property
    def logs(self) -> tuple[Path, Path]:
        return (self.slurmd_log, self.nsctl_log)

    def index_entries(self) -> list[str]:
        """Runtime index entries of this lab's jobs (other nsctl users may share /run/nsctl)."""
        jobs = RUN_DIR / "jobs"
        found = []
        for name in sorted(os.listdir(jobs)) if jobs.is_dir() else []:
            try:
                text = (jobs / name).read_text()
            except OSError:
                continue
            if f"={self.root}/" in text:
                found.append(name)
        return found

    def holders(self) -> list[int]:
        """nsctl holder processes started for this lab's jobs (their environment names the lab)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"nsctl:") and str(self.root).encode() in environ:
                found.append(int(entry))
        return found

    def leftovers(self) -> list[str]:
        """Everything the lab could have leaked onto the host; empty when clean."""
        problems = []
        for pid, exe in processes_named(SLURM_BINARIES):
            if not (exe == "munged" and not self.started_munge and pid == self.munge_pid):
                problems.append(f"process {pid} ({exe}) still running")
        problems += [f"mount {m} left" for m in mounts_under(str(self.root))]
        problems += [f"runtime index entry {e} left" for e in self.index_entries()]
        problems += [f"holder process {pid} left" for pid in self.holders()]
        return problems
