"""Real Slurm clusters for the e2e tests: one lab per Slurm version, each fully isolated.

A lab runs one Slurm release from a Debian root of its suite (roots.py: 22.05 from bookworm, 24.11
from trixie, 26.05 from sid), entered with pivot_root in namespaces of its own (labns.py): the
controller side (munged, slurmctld, and every client command) in the lab's namespaces, and each
slurmd in a node's namespaces inside them, with its own name, address, /run (munged, /run/nsctl),
/tmp, /dev/shm and local disk. Labs share nothing with the host or each other but their lab
directory (``LAB_PARENT/<name>.<pid>``, bound at the same path inside, so a test names every lab
file as the lab does) and never listen on the host's network.

nsctl is installed in each lab as contrib/slurm/README.md tells an admin: a venv and ``pip
install`` from a copy of the repository (offline, from a wheelhouse of the root's Python), the
SPANK plugin built with its Makefile against the root's spank.h, the scripts with NSCTL=, LOG=
and ON_ERROR= set, and the slurm.conf and plugstack.conf lines.

Isolation modes, switched by rewriting slurm.conf and restarting the daemons: ``none``
(PrologFlags=Contain only), ``tmpfs`` (Slurm's own C plugin: job_container/tmpfs up to 24.11,
namespace/tmpfs on 26.05), ``linux`` (26.05 only: Slurm's namespace/linux, reading the
namespace.yaml beside slurm.conf), ``nsctl`` (contrib/slurm Prolog/Epilog/TaskProlog and the
SPANK plugin), and ``spank`` (the SPANK plugin alone, for tests that hand it index entries).
Any mode can run with ``cgroups=True``: proctrack/cgroup and task/cgroup on the host's cgroup v1
hierarchies (see CGROUP_CONF). Those hierarchies are the host's, shared with every other lab, and
Slurm names its cgroups after the node (``slurm_<NodeName>``), so a lab that uses them must have
node names no other lab uses at the same time; stop() removes its ``slurm_<NodeName>`` trees.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import labns
import roots

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "slurm"
VERSIONS = tuple(roots.SUITES)  # ("22.05", "24.11", "26.05")
LAB_PARENT = roots.LAB_PARENT
NODE = "lab1"  # deliberately not the node's hostname: nsctl must key node_confs on the node name
NODE_HOSTNAME = "labnode"
CTL_HOST = "labctl"
SUBNET = "10.77.0"  # inside each lab's network namespaces only: the bridge and the nodes
GATEWAY = f"{SUBNET}.1"
USER = roots.JOB_USER
RUN_DIR = "/run/nsctl"  # nsctl's runtime dir on each node (a fresh tmpfs /run per node)
WHEELS = "/srv/nsctl-wheels"  # the wheelhouse inside a lab (/srv there is a scratch tmpfs)
MODES = ("none", "tmpfs", "linux", "nsctl", "spank")
CGROUP_ROOT = Path("/sys/fs/cgroup")  # the host's, bound into every lab with /sys
# cgroup.conf with cgroups=True. Slurm autodetects cgroup/v2 on this host's hybrid layout and
# refuses it ("Hybrid mode is not supported"); cgroup/v1, named, runs on the v1 hierarchies.
CGROUP_CONF = "CgroupPlugin=cgroup/v1\nConstrainRAMSpace=yes\nConstrainCores=yes\n"


class LabError(RuntimeError):
    """The lab could not be brought into the requested state (a harness failure, not a test's)."""


def exe_name(pid: int) -> Optional[str]:
    """The program a pid runs, as its Slurm name (Debian 12 installs slurmd as slurmd-wlm)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    name = os.path.basename(exe).split(" ")[0]
    return name[: -len("-wlm")] if name.endswith("-wlm") else name


def mounts_under(prefix: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or under prefix in a mount namespace (field 5 of its mountinfo)."""
    points = []
    with open(mountinfo, encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                points.append(point)
    return points


def remove_cgroups(tops: list[Path], timeout: float = 10) -> list[str]:
    """rmdir each cgroup tree, deepest first (a cgroup stays busy until its last process is
    reaped, hence the retries); returns the cgroups that could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for top in tops:
            for path, _, _ in sorted(os.walk(top), key=lambda w: -len(Path(w[0]).parts)):
                try:
                    os.rmdir(path)
                except OSError as error:
                    left.append(f"{path}: {error.strerror}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def passwd_ids(root: Path, name: str) -> tuple[int, int]:
    """uid and gid of a user of the root (the lab's users are the root's, not the host's)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise LabError(f"no user {name} in {root}/etc/passwd")


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


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
    """One Slurm version: munged + slurmctld, and munged + slurmd on each node, all owned by
    this object and gone after stop()."""

    def __init__(
        self,
        version: str = "22.05",
        nodes: tuple[str, ...] = (NODE,),
        hostnames: Optional[tuple[str, ...]] = None,
        name: Optional[str] = None,
    ):
        if version not in roots.SUITES:
            raise ValueError(f"no lab for Slurm {version} (known: {', '.join(VERSIONS)})")
        self.version = version
        self.suite = roots.SUITES[version]
        self.nodes = tuple(nodes)
        if hostnames is None:
            hostnames = (NODE_HOSTNAME,) if self.nodes == (NODE,) else self.nodes
        self.hostnames = dict(zip(self.nodes, hostnames))
        self.addresses = {n: f"{SUBNET}.{11 + i}" for i, n in enumerate(self.nodes)}
        self.node = self.nodes[0]
        self.hostname = self.hostnames[self.node]
        self.name = name or f"slurm-{version}" + (f"-{len(nodes)}n" if len(nodes) > 1 else "")
        # The lab directory, the same path inside and out; named after this test run's pid, so
        # concurrent runs never share one (and a dead run's is removed by the next).
        self.root = LAB_PARENT / f"{self.name}.{os.getpid()}"
        self.user = USER
        self.uid = self.gid = roots.JOB_UID
        self.etc = self.root / "etc"
        self.log_dir = self.root / "log"
        self.bin = self.root / "bin"
        self.lib = self.root / "lib"
        self.conf = self.etc / "slurm.conf"
        self.local = self.root / "local"  # each node's own disk: LAB/nodes/<node> bound here
        # nsctl's default base_path: in the shared lab dir for one node, on the node's own disk
        # for several (a job's dir is B/J on every node it runs on).
        self.ns_base = (self.root if len(self.nodes) == 1 else self.local) / "ns"
        self.jc_base = self.root / "jc"  # job_container/tmpfs and namespace/tmpfs BasePath
        self.nl_base = self.root / "nl"  # namespace/linux base_path
        self.home = self.root / "home"  # the job user's working directory (shared by its jobs)
        self.spank_index = self.root / "index"  # hand-made index entries for the plugin-only tests
        self.nsctl = str(self.root / "venv" / "bin" / "nsctl")
        self.mode: Optional[str] = None
        self.settings: Optional[tuple] = None
        self.space: Optional[labns.Space] = None  # the lab (controller, clients)
        self.node_spaces: dict[str, labns.Space] = {}
        self.system_root: Optional[Path] = None  # the Debian root in the cache
        self.timings: dict[str, float] = {}  # seconds: root (+ build), namespaces, install
        self._root_in_use = None
        self.used_cgroups = False  # configure(cgroups=True) ran: stop() removes Slurm's cgroups
        self.cgroups_left: list[str] = []  # what stop() could not remove

    # ---- host-side paths of node-local things ---------------------------------------------

    def node_dir(self, node: Optional[str] = None) -> Path:
        """A node's local disk as the host sees it (LAB/local on that node)."""
        return self.root / "nodes" / (node or self.node)

    @property
    def slurmd_log(self) -> Path:
        return self.node_dir() / "slurmd.log"

    @property
    def nsctl_log(self) -> Path:
        """The Prolog's and Epilog's output (LOG= in the scripts: LAB/local/nsctl.log)."""
        return self.node_dir() / "nsctl.log"

    @property
    def logs(self) -> tuple[Path, ...]:
        return tuple(
            self.node_dir(n) / log for n in self.nodes for log in ("slurmd.log", "nsctl.log")
        )

    def node_space(self, node: Optional[str] = None) -> labns.Space:
        space = self.node_spaces.get(node or self.node)
        if space is None:
            raise LabError(f"node {node or self.node} of lab {self.name} is not running")
        return space

    def node_path(self, path: str, node: Optional[str] = None) -> Path:
        """A path on a node (its /tmp, /run, ...) as the host reaches it."""
        return self.node_space(node).path(path)

    def run_dir(self, node: Optional[str] = None) -> Path:
        """nsctl's runtime dir (/run/nsctl) on a node, as the host reaches it."""
        return self.node_path(RUN_DIR, node)

    def ns_link(self, kind: str, node: Optional[str] = None) -> str:
        """The namespace slurmd and its unisolated jobs run in on a node (e.g. 'mnt:[...]')."""
        return self.node_space(node).ns_link(kind)

    def mounts_under(self, prefix: str, node: Optional[str] = None) -> list[str]:
        """Mount points at or under prefix in a node's mount namespace (where jobs mount)."""
        return mounts_under(prefix, f"/proc/{self.node_space(node).init}/mountinfo")

    # ---- bring-up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build (or reuse) the root and wheelhouse, make the lab's namespaces, start munge and
        install nsctl. The Slurm daemons start with the first configure()."""
        if os.geteuid() != 0:
            raise LabError("the e2e lab needs root")
        began = time.monotonic()
        self.system_root, self._root_in_use = roots.ensure(self.suite)
        try:
            wheels = roots.ensure_wheelhouse(self.suite, REPO)
            self.timings["root"] = time.monotonic() - began
            self._make_lab_dir()
            began = time.monotonic()
            self._start_spaces(wheels)
            self._start_munge()
            self.timings["namespaces"] = time.monotonic() - began
            began = time.monotonic()
            self._install_nsctl()
            self.timings["install"] = time.monotonic() - began
            stamp = roots.read_stamp(self.suite) or {}
            record = {"slurm": stamp.get("packages", {}).get("slurmd"), **self.timings}
            (self.log_dir / "timings.json").write_text(json.dumps(record, indent=1) + "\n")
        except BaseException:
            self.stop()
            raise

    def _remove_stale_labs(self) -> None:
        """This lab's directories from test runs that are gone (NAME.PID, PID dead): kept for a
        look after a failure, removed by the next run."""
        for path in LAB_PARENT.iterdir() if LAB_PARENT.is_dir() else []:
            match = re.fullmatch(rf"{re.escape(self.name)}\.(\d+)", path.name)
            if not match or not path.is_dir() or pid_alive(int(match.group(1))):
                continue
            if any(
                mounts_under(str(path), m) for m in ("/proc/self/mountinfo", "/proc/1/mountinfo")
            ):
                raise LabError(f"mounts left under {path}")
            shutil.rmtree(path, ignore_errors=True)

    def _make_lab_dir(self) -> None:
        self._remove_stale_labs()
        LAB_PARENT.mkdir(parents=True, exist_ok=True)
        os.chmod(LAB_PARENT, 0o755)
        if self.root.exists():
            raise LabError(f"{self.root} exists: a lab of this name runs in this process")
        root = self.system_root
        slurm = passwd_ids(root, "slurm")
        munge = passwd_ids(root, "munge")
        for sub in ("etc", "state", "log", "bin", "lib", "local", "home"):
            (self.root / sub).mkdir(parents=True)
        os.chmod(self.root, 0o755)
        os.chown(self.root / "state", *slurm)
        os.chown(self.log_dir, *slurm)
        os.chown(self.home, self.uid, self.gid)
        # munged wants its log's directories owned by root or munge (not slurm, as log/ is).
        (self.root / "munge").mkdir(mode=0o700)
        os.chown(self.root / "munge", *munge)
        for node in self.nodes:
            (self.node_dir(node) / "spool").mkdir(parents=True)
            (self.node_dir(node) / "munge").mkdir(mode=0o700)
            os.chown(self.node_dir(node) / "munge", *munge)
        key = self.etc / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        os.chown(key, *munge)
        hosts = ["127.0.0.1 localhost", f"{GATEWAY} {CTL_HOST}"]
        hosts += [f"{self.addresses[n]} {self.hostnames[n]}" for n in self.nodes]
        (self.etc / "hosts").write_text("\n".join(hosts) + "\n")
        roots.copy_repo(REPO, self.root / "src")

    def _start_spaces(self, wheels: Path) -> None:
        binds = [(str(wheels), WHEELS, True), (str(self.etc / "hosts"), "/etc/hosts", True)]
        self.space = labns.start_lab(
            self.name, self.system_root, self.root, CTL_HOST, binds, self.log_dir / "lab.log",
            scratch=[str(LAB_PARENT), "/srv"],
        )  # fmt: skip
        for node in self.nodes:
            self.node_spaces[node] = labns.start_node(
                self.space, node, self.hostnames[node], self.root, self.local,
                self.node_dir(node), self.log_dir / f"lab-{node}.log",
            )  # fmt: skip
        labns.wire(self.space, [(self.node_spaces[n], self.addresses[n]) for n in self.nodes],
                   GATEWAY)  # fmt: skip
        ids = [s.ns_ids.get("mnt") or 0 for s in (self.space, *self.node_spaces.values())]
        labns.burn_namespace_ids(max(ids))

    def _start_munge(self) -> None:
        key = self.etc / "munge.key"
        for space, logs in [(self.space, self.root / "munge")] + [
            (self.node_spaces[n], self.local / "munge") for n in self.nodes
        ]:
            self.exec(
                ["sh", "-c", "install -d -o munge -g munge -m 0755 /run/munge && exec runuser "
                 f"-u munge -- /usr/sbin/munged --key-file={key} --log-file={logs}/munged.log "
                 f"--seed-file={logs}/munged.seed --pid-file=/run/munge/munged.pid"],
                space=space,
            )  # fmt: skip

    def _install_nsctl(self) -> None:
        """contrib/slurm/README.md, section 1, in the lab: a venv, pip install, the plugin."""
        venv, src = self.root / "venv", self.root / "src"
        env = {**self.env, "HOME": "/tmp", "PIP_NO_CACHE_DIR": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
        self.exec(["python3", "-m", "venv", str(venv)], env=env)
        self.exec([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-index",
                   "--find-links", WHEELS, str(src)], env=env, timeout=600)  # fmt: skip
        spank = src / "contrib/slurm/spank"
        self.exec(["make", "-C", str(spank), "--no-print-directory", "nsctl_spank.so"], env=env)
        self.exec(["make", "-C", str(spank), "--no-print-directory", "install",
                   f"LIBDIR={self.lib}"], env=env)  # fmt: skip
        self.plugin = self.lib / "nsctl_spank.so"

    def install_contrib(self, on_error: str = "fail") -> None:
        """Copy the contrib scripts and set NSCTL=, LOG= and ON_ERROR=, as the README says."""
        for name in ("prolog", "epilog", "taskprolog"):
            text = (CONTRIB / name).read_text()
            text = re.sub(r"(?m)^NSCTL=.*$", f"NSCTL={self.nsctl}", text)
            text = re.sub(r"(?m)^ON_ERROR=.*$", f"ON_ERROR={on_error}", text)
            text = re.sub(r"(?m)^LOG=.*$", f"LOG={self.local}/nsctl.log", text)  # per node
            target = self.bin / name
            target.write_text(text)
            target.chmod(0o755)

    def slurm_conf(self, mode: str, cgroups: bool = False, extra: tuple[str, ...] = ()) -> str:
        lab = self.root
        major = tuple(int(part) for part in self.version.split("."))
        lines = [
            "ClusterName=lab",
            f"SlurmctldHost={CTL_HOST}({GATEWAY})",
            "SlurmUser=slurm",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "MpiDefault=none",
            "MailProg=/bin/true",
            f"ProctrackType=proctrack/{'cgroup' if cgroups else 'linuxproc'}",
            f"TaskPlugin=task/{'cgroup' if cgroups else 'none'}",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            # With cgroups memory is allocated too (else task/cgroup has no --mem to enforce),
            # and a job gets little by default (DefMemPerCPU below), so jobs still run side by side.
            f"SelectTypeParameters=CR_Core{'_Memory' if cgroups else ''}",
            "ReturnToService=2",
            f"StateSaveLocation={lab}/state",
            f"SlurmdSpoolDir={self.local}/spool",
            "SlurmctldPidFile=/run/slurmctld.pid",
            "SlurmdPidFile=/run/slurmd.pid",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.local}/slurmd.log",
            "SlurmdDebug=debug",
            "PrologFlags=Alloc,Contain",
            "KillWait=5",
            "MinJobAge=30",
        ]
        if major < (24, 11):
            lines.append("SwitchType=switch/none")  # gone from 24.11's plugins
        if cgroups:
            lines.append("DefMemPerCPU=100")
        if mode == "tmpfs":
            # Slurm's C plugin; 25.11 renamed the plugin type (job_container.conf stays).
            kind = (
                "NamespaceType=namespace" if major >= (25, 11) else "JobContainerType=job_container"
            )
            lines.append(f"{kind}/tmpfs")
        if mode == "linux":
            lines.append("NamespaceType=namespace/linux")
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
        lines += extra
        for node in self.nodes:
            lines.append(
                f"NodeName={node} NodeHostname={self.hostnames[node]} "
                f"NodeAddr={self.addresses[node]} CPUs=2 RealMemory=2000 State=UNKNOWN"
            )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def configure(
        self,
        mode: str,
        namespace_yaml: Optional[str] = None,
        on_error: str = "fail",
        job_container_conf: Optional[str] = None,
        cgroups: bool = False,
        extra_conf: tuple[str, ...] = (),
    ) -> None:
        """Put the cluster in a mode; restarts the daemons only when something changed.

        ``job_container_conf`` is the text of job_container.conf for job_container/tmpfs and
        namespace/tmpfs (default: AutoBasePath=true and BasePath=jc_base). ``cgroups``:
        proctrack/cgroup and task/cgroup (CGROUP_CONF; what pam_slurm_adopt needs).
        ``extra_conf``: more slurm.conf lines.
        """
        if mode not in MODES:
            raise ValueError(mode)
        if mode == "linux" and self.version != "26.05":
            raise LabError(f"namespace/linux is not in Slurm {self.version}")
        namespace_yaml = namespace_yaml or self.default_namespace_yaml(mode)
        if job_container_conf is None:
            job_container_conf = f"AutoBasePath=true\nBasePath={self.jc_base}\n"
        settings = (mode, namespace_yaml, on_error, job_container_conf, cgroups, tuple(extra_conf))
        if settings == self.settings and self.daemons_alive():
            return
        self.stop_daemons()
        if cgroups and not self.used_cgroups and self.slurm_cgroups():
            raise LabError(f"{self.slurm_cgroups()} exist: another lab has this node name, or a "
                           "crashed run left them")  # fmt: skip
        self.used_cgroups |= cgroups
        self.conf.write_text(self.slurm_conf(mode, cgroups, tuple(extra_conf)))
        # Beside slurm.conf: nsctl finds it through SLURM_CONF, Slurm's namespace/linux there too.
        (self.etc / "namespace.yaml").write_text(namespace_yaml)
        (self.etc / "job_container.conf").write_text(job_container_conf)
        # 24.11 and later load a cgroup plugin even with proctrack/linuxproc and task/none, and
        # the autodetected cgroup/v2 dies on this host's hybrid layout ("Hybrid mode is not
        # supported", as /proc/self/cgroup lists v1 hierarchies whatever is mounted).
        (self.etc / "cgroup.conf").write_text(CGROUP_CONF if cgroups else "CgroupPlugin=disabled\n")
        if self.version == "22.05" and not cgroups:
            (self.etc / "cgroup.conf").unlink()
        # nsctl mode uses the plugin's default index (/run/nsctl/jobs), as the README does;
        # spank mode feeds it hand-made entries through the index_dir= argument.
        # Slurm reads plugstack.conf beside slurm.conf even without PlugStackConfig=: the other
        # modes get none, so the plugin is loaded only where the mode says.
        plugstack = self.etc / "plugstack.conf"
        argument = f" index_dir={self.spank_index}" if mode == "spank" else ""
        if mode in ("spank", "nsctl"):
            plugstack.write_text(f"required {self.plugin}{argument}\n")
        else:
            plugstack.unlink(missing_ok=True)
        self.install_contrib(on_error)
        self.start_daemons()
        self.mode, self.settings = mode, settings

    def default_namespace_yaml(self, mode: str = "nsctl") -> str:
        base = self.nl_base if mode == "linux" else self.ns_base
        return f"defaults:\n  auto_base_path: true\n  base_path: {base}\n"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def start_daemons(self) -> None:
        try:
            self.exec(["slurmctld", "-f", str(self.conf)])
            for node in self.nodes:
                self.exec(["slurmd", "-f", str(self.conf), "-N", node],
                          space=self.node_spaces[node])  # fmt: skip
            self.wait_node_state("idle", daemons=True)
        except BaseException:
            self.stop_daemons()
            raise

    def daemon_pids(self, exe: str, main: bool = False) -> list[int]:
        """The lab's processes running `exe`; with main, not those forked by another one
        (slurmctld 23.02 and later runs its scripts from a forked slurmctld, slurmscriptd)."""
        table = labns.process_table()
        pids = [pid for pid in self.processes() if exe_name(pid) == exe]
        return [pid for pid in pids if not (main and table.get(pid) in pids)]

    def slurmd_pid(self, node: Optional[str] = None) -> Optional[int]:
        """A node's main slurmd (not one of its forks), or None when it is not running."""
        table = labns.process_table()
        pids = [p for p in self.processes(node or self.node) if exe_name(p) == "slurmd"]
        main = [p for p in pids if table.get(p) not in pids]
        return main[0] if main else None

    def stop_slurmd(
        self, node: Optional[str] = None, sig: int = signal.SIGTERM, timeout: float = 20.0
    ) -> None:
        """Send sig to a node's slurmd and wait until it is gone; the jobs' slurmstepds stay.
        The lab no longer runs what configure() last set up, so the next configure() restarts."""
        pid = self.slurmd_pid(node)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while self.slurmd_pid(node) is not None:
            if time.monotonic() > deadline:
                raise LabError(f"slurmd on {node or self.node} still runs {timeout}s after {sig}")
            time.sleep(0.02)
        self.settings = None

    def start_slurmd(self, node: Optional[str] = None) -> Result:
        """Start a node's slurmd. It reads namespace.yaml after it has daemonized, so a config
        it refuses shows as a slurmd that exits soon after (with a fatal line in its log)."""
        node = node or self.node
        return self.exec(["slurmd", "-f", str(self.conf), "-N", node],
                         space=self.node_spaces[node], check=False)  # fmt: skip

    def daemons_alive(self) -> bool:
        ctld, slurmd = (
            self.daemon_pids("slurmctld", main=True),
            self.daemon_pids("slurmd", main=True),
        )
        return len(ctld) == 1 and len(slurmd) == len(self.nodes)

    def stop_daemons(self) -> None:
        if self.space is None or not self.space.alive():
            return
        if self.daemons_alive():
            self.cancel_all()
        self.settings = None
        for exe in ("slurmd", "slurmctld"):
            self._stop_daemon(exe)

    def _stop_daemon(self, exe: str, timeout: float = 20.0) -> None:
        """SIGTERM the lab's main `exe` processes, wait until no `exe` is left (helpers they
        forked go with them); SIGKILL whatever hangs."""
        for pid in self.daemon_pids(exe, main=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.daemon_pids(exe):
                return
            time.sleep(0.05)
        for pid in self.daemon_pids(exe):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the daemons, then end the lab: SIGKILL to its PID 1 ends every process in its
        PID namespaces, and its mounts go with its mount namespaces."""
        try:
            with contextlib.suppress(LabError, subprocess.TimeoutExpired):
                self.stop_daemons()
        finally:
            spaces = [s for s in (self.space, *self.node_spaces.values()) if s is not None]
            if self.space is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.space.init, signal.SIGKILL)
            for space in spaces:
                try:
                    space.popen.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    space.popen.kill()
                    space.popen.wait()
            self.space, self.node_spaces, self.settings = None, {}, None
            if self.used_cgroups:
                self.cgroups_left = self.remove_slurm_cgroups()
            if self._root_in_use:
                self._root_in_use.close()
                self._root_in_use = None

    # ---- running things in the lab --------------------------------------------------------

    def exec(
        self,
        cmd: list[str],
        space: Optional[labns.Space] = None,
        env: Optional[dict[str, str]] = None,
        user: Optional[str] = None,
        cwd: Optional[str] = None,
        check: bool = True,
        timeout: float = 120,
    ) -> Result:
        """cmd inside the lab (or a node), as root or `user`, with exactly env (default: PATH
        and SLURM_CONF)."""
        space = space or self.space
        if space is None:
            raise LabError(f"lab {self.name} is not running")
        argv = space.argv(cmd, env=self.env if env is None else env, user=user, cwd=cwd)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)  # fmt: skip
        if check and res.returncode != 0:
            raise LabError(f"{cmd} in {space.name} exited {res.returncode}:\n"
                           f"{res.stdout}{res.stderr}")  # fmt: skip
        return Result(res.returncode, res.stdout, res.stderr)

    def on_node(self, cmd: list[str], node: Optional[str] = None, **kwargs) -> Result:
        """cmd on a node, as root (a tool an admin would run there)."""
        return self.exec(cmd, space=self.node_space(node), **kwargs)

    def popen_on_node(self, cmd: list[str], node: Optional[str] = None) -> subprocess.Popen:
        """A long-running command on a node; its process there is the Popen's child."""
        argv = self.node_space(node).argv(cmd, env=self.env)
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=labns.die_with_parent,
        )  # fmt: skip

    def admin(self, *cmd: str, check: bool = True, timeout: float = 60) -> Result:
        """A Slurm client command as root, on the controller's side of the lab."""
        return self.exec(list(cmd), check=check, timeout=timeout)

    def as_user(
        self, *cmd: str, extra_env: Optional[dict[str, str]] = None, timeout: float = 120
    ) -> Result:
        """A command as the job user with a clean submit environment (what a login shell has)."""
        env = {**self.env, "HOME": str(self.home), "USER": self.user, "LOGNAME": self.user}
        env.update(extra_env or {})
        return self.exec(list(cmd), env=env, user=self.user, cwd=str(self.home), check=False,
                         timeout=timeout)  # fmt: skip

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
        """sbatch as the user, output into a fresh directory of the shared home."""
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

    def requeueable_job(self) -> tuple[BatchJob, Path]:
        """A batch job that may be requeued; each run N prints what its /tmp holds ("run N
        sees: ..."), leaves a file there and waits for SYNC/go-N. Returns once run 0 waits."""
        sync = self.new_dir("requeue")
        job = self.submit(
            'run=${SLURM_RESTART_COUNT:-0}; echo "run $run sees: $(ls -A /tmp | tr "\\n" " ")"\n'
            "touch /tmp/left-by-run-$run\n"
            f": > {sync}/ready-$run\n"
            f"while [ ! -e {sync}/go-$run ]; do sleep 0.05; done\n",
            "--requeue",
            "--open-mode=append",
        )
        self.wait_file(sync / "ready-0", job)
        return job, sync

    def release_now(self, job_id: str) -> None:
        """Release a held requeued job without Slurm's 120 s wait before it is eligible again."""
        self.admin("scontrol", "release", job_id)
        self.admin("scontrol", "update", f"jobid={job_id}", "StartTime=now")

    def usr1_to_a_step(self) -> str:
        """A batch job whose step traps USR1 (then exits 5), sent `scancel --signal=USR1` once
        the step runs; the job's output when it is gone (the step's "caught USR1" and the batch
        shell's "step rc=N")."""
        sync = self.new_dir("signal")
        job = self.submit(
            f'srun -Q sh -c \'trap "echo caught USR1; exit 5" USR1; : > {sync}/step; '
            "while :; do sleep 0.05; done'\n"
            'echo "step rc=$?"\n'
        )
        self.wait_file(sync / "step", job)
        self.admin("scancel", "--signal=USR1", job.job_id)
        self.wait_job_gone(job.job_id)
        return job.read()

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

    def wait_node_state(self, state: str, timeout: float = 60, daemons: bool = False) -> None:
        """Wait until every node is in `state` (sinfo's short name); with daemons, fail as soon
        as slurmctld or a slurmd is gone (one that refuses its configuration exits after it
        daemonised)."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        gone_since: Optional[float] = None  # a daemon missing (for a moment as it forks)
        while time.monotonic() < deadline:
            if daemons and not self.daemons_alive():
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > 1:
                    raise LabError(f"a daemon exited while the nodes came up: {seen!r}")
            else:
                gone_since = None
            res = self.admin("sinfo", "-h", "-N", "-o", "%t", check=False)
            seen = res.stdout.split()
            if seen == [state] * len(self.nodes):
                return
            time.sleep(0.1)
        raise LabError(f"node states are {seen!r}, waited {timeout}s for {state!r}")

    def resume_node(self) -> None:
        self.admin("scontrol", "update", f"nodename={','.join(self.nodes)}", "state=resume")
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
            if not out.strip() and not self.daemon_pids("slurmstepd"):
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

    # ---- what is in the lab ---------------------------------------------------------------

    def processes(self, node: Optional[str] = None) -> set[int]:
        """Host pids of the lab's processes (or one node's): its PID 1 and everything below."""
        # A node's PID 1 is not below the lab's: nsenter (a host process) started it.
        if node:
            spaces = [self.node_spaces[node]] if node in self.node_spaces else []
        else:
            spaces = [s for s in (self.space, *self.node_spaces.values()) if s is not None]
        return labns.descendants([s.init for s in spaces])

    def node_pid(self, host_pid: int, node: Optional[str] = None) -> Optional[int]:
        """A host pid as a node names it (in the node's PID namespace), or None."""
        level = len(proc_status(self.node_space(node).init).get("NSpid", "").split()) - 1
        pids = proc_status(host_pid).get("NSpid", "").split()
        return int(pids[level]) if 0 < level < len(pids) else None

    def user_processes(self, node: Optional[str] = None) -> list[int]:
        """Live processes of the job user in the lab (or on one node)."""
        found = []
        for pid in self.processes(node):
            status = proc_status(pid)
            if status and status["Uid"].split()[1] == str(self.uid) and status["State"][0] != "Z":
                found.append(pid)
        return sorted(found)

    def slurm_cgroups(self) -> list[Path]:
        """Slurm's cgroup of each node of the lab (``slurm_<NodeName>``, as Debian's Slurm,
        built with multiple-slurmd support, names it) in every host hierarchy that has one."""
        hierarchies = sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir())
        return [
            h / f"slurm_{n}" for h in hierarchies for n in self.nodes if (h / f"slurm_{n}").is_dir()
        ]

    def cgroup_dirs(self) -> list[str]:
        """Every cgroup below the lab's Slurm cgroups, as hierarchy/slurm_<node>/uid_U/..."""
        found = []
        for top in self.slurm_cgroups():
            for path, dirs, _ in os.walk(top):
                found += [str((Path(path) / d).relative_to(CGROUP_ROOT)) for d in dirs]
        return sorted(found)

    def job_cgroups(self, job_id: Optional[str] = None) -> list[str]:
        """The cgroups of a job (of every job when job_id is None) below the lab's Slurm cgroups,
        but for Slurm's own leak: now and then (1 job in 60 here, with and without nsctl) an
        extern step's slurmstepd gets EACCES when it moves itself to the root freezer cgroup
        ("[J.extern] error: Unable to move pid P to root cgroup"), and then cannot remove its
        freezer job_J/step_extern; stop() removes those with the rest."""
        logs = [log for log in self.logs if log.name == "slurmd.log" and log.exists()]
        text = "".join(log.read_text(errors="replace") for log in logs)
        leaked = re.findall(r"\[(\d+)\.extern\] error: Unable to move pid \d+ to root cgroup", text)
        found = []
        for path in self.cgroup_dirs():
            match = re.search(r"/job_(\d+)(?=/|$)", path)
            if not match or job_id not in (None, match.group(1)):
                continue
            job = match.group(1)
            ends = (f"/job_{job}", f"/job_{job}/step_extern")
            if path.startswith("freezer/") and job in leaked and path.endswith(ends):
                continue
            found.append(path)
        return found

    def remove_slurm_cgroups(self) -> list[str]:
        """Remove the lab's Slurm cgroups once the lab is gone; returns what stayed."""
        return remove_cgroups(self.slurm_cgroups())

    def index_entries(self, node: Optional[str] = None) -> list[str]:
        """nsctl's runtime index entries on a node (every node when node is None)."""
        found = []
        for name in (node,) if node else self.nodes:
            if name not in self.node_spaces:
                continue
            jobs = self.run_dir(name) / "jobs"
            found += sorted(os.listdir(jobs)) if jobs.is_dir() else []
        return found

    def holders(self) -> list[int]:
        """nsctl holder processes in the lab (host pids)."""
        return sorted(pid for pid in self.processes() if labns.cmdline(pid).startswith(b"nsctl:"))

    def leftovers(self) -> list[str]:
        """What the lab's jobs left in it (run while it is up); empty when clean."""
        if self.space is None or not self.space.alive():
            return []
        problems = [f"slurmstepd {pid} still running" for pid in self.daemon_pids("slurmstepd")]
        problems += [f"holder process {pid} left" for pid in self.holders()]
        problems += [f"job user process {pid} left" for pid in self.user_processes()]
        expected = {str(self.root), str(self.local)}
        for node in self.nodes:
            mounts = self.mounts_under(str(self.root), node)
            problems += [f"mount {m} left on {node}" for m in mounts if m not in expected]
            problems += [
                f"runtime index entry {e} left on {node}" for e in self.index_entries(node)
            ]
        # Slurm's own cgroups (slurm_<node>, and the uid_U it keeps for a user) may stay while
        # slurmd runs; a job's may not.
        problems += [f"cgroup {d} left" for d in self.job_cgroups()]
        return problems

    def host_leftovers(self, namespaces: dict[str, set[int]]) -> list[str]:
        """What a stopped lab left on the host: processes in its namespaces, mounts under its
        directory or its root, nsctl index entries naming it. `namespaces` are the ids that
        recorded_namespaces() returned while it ran."""
        problems = []
        for pid in labns.process_table():
            for kind in ("pid", "mnt"):
                if labns.ns_id(f"/proc/{pid}/ns/{kind}") in namespaces.get(kind, ()):
                    problems.append(
                        f"process {pid} ({exe_name(pid)}) left in a lab {kind} namespace"
                    )
                    break
        for mountinfo in ("/proc/self/mountinfo", "/proc/1/mountinfo"):
            for prefix in (str(self.root), str(self.system_root)):
                problems += [
                    f"mount {m} left ({mountinfo})" for m in mounts_under(prefix, mountinfo)
                ]
        problems += [f"cgroup {c} left" for c in self.cgroups_left]
        jobs = Path(RUN_DIR) / "jobs"
        for name in sorted(os.listdir(jobs)) if jobs.is_dir() else []:
            with contextlib.suppress(OSError):
                if f"={self.root}/" in (jobs / name).read_text():
                    problems.append(f"host runtime index entry {jobs / name} names the lab")
        return problems

    def recorded_namespaces(self) -> dict[str, set[int]]:
        """The ids of the lab's and nodes' pid and mnt namespaces (for host_leftovers)."""
        spaces = [s for s in (self.space, *self.node_spaces.values()) if s is not None]
        return {
            kind: {s.ns_ids[kind] for s in spaces if s.ns_ids.get(kind)} for kind in ("pid", "mnt")
        }
