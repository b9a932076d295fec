"""The namespaces an e2e lab lives in, and how commands get into them.

A lab is a small tree of namespaces made with util-linux, so that labs never meet each other or
the host:

- the **lab** (the controller's side): new mount, PID, network, UTS and IPC namespaces. Its mount
  namespace has pivot_root'ed into a Debian root (read-only), with its own proc, the host's /sys
  and /dev, fresh tmpfs on /run, /tmp and /dev/shm, and the lab directory bound at its own
  path, so the host and the lab name every lab file alike. pivot_root, not chroot: setns() into a
  mount namespace resets the caller's root to that namespace's root mount, which under chroot
  would be the host's / (slurmd joins job namespaces and then execs slurmstepd).
- one **node** per slurmd, made inside the lab's namespaces: again new mount, PID, network, UTS
  and IPC namespaces, its own proc, /run, /tmp and /dev/shm, and its own "local disk": the host
  directory ``LAB/nodes/<name>`` bound on ``LAB/local``.

PID 1 of each is ``init.py`` (a reaper). The lab's unshare gets SIGKILL when the test process
dies (PR_SET_PDEATHSIG) and its PID 1 when unshare dies (``--kill-child``); the kernel then kills
every process of the lab's PID namespace and the nested ones: nothing outlives a lab, and its
mounts go with its mount namespaces. Commands enter with ``nsenter`` (all namespaces, the
target's root and cwd) and so run the root's programs, inside the lab's PID namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shlex
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# <linux/nsfs.h> (checked in the 26.05 root's linux-libc-dev 7.2): #define NS_GET_ID _IOR(NSIO, 13,
# __u64), NSIO 0xb7. _IOR(type, nr, size) = 2 << 30 | size << 16 | type << 8 | nr. (_IO(0xb7, 0xd)
# is not it: the kernel answers ENOTTY.)
NS_GET_ID = (2 << 30) | (8 << 16) | (0xB7 << 8) | 13
CLONE_NEWUTS = 0x04000000
PR_SET_PDEATHSIG = 1

INIT = """\
# PID 1 of an e2e lab or node namespace: reaps the orphans (daemons, holders) adopted by it.
import os
import signal

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
while True:
    signal.sigwait({signal.SIGCHLD})
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
"""

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(RuntimeError):
    """A lab's namespaces could not be made or entered."""


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the test process (its parent) dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def ns_id(path: str) -> Optional[int]:
    """The kernel's 64-bit id of a namespace file (never reused, unlike the inode number)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, NS_GET_ID, b"\0" * 8))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def process_table() -> dict[int, int]:
    """pid -> parent pid for every process the test process can see."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                table[int(name)] = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(roots: Iterable[int], table: Optional[dict[int, int]] = None) -> set[int]:
    """The roots and every process below them."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class Space:
    """A running set of namespaces: its PID 1 (``init``, a host pid) and the process that made
    it (``popen``)."""

    name: str
    popen: subprocess.Popen
    init: int
    log: Path
    ns_ids: dict[str, Optional[int]] = field(default_factory=dict)

    def nsenter(self) -> list[str]:
        """Every namespace of the space, its root and its cwd (/)."""
        return ["nsenter", "-t", str(self.init), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"]

    def argv(
        self,
        cmd: list[str],
        env: Optional[dict[str, str]] = None,
        user: Optional[str] = None,
        cwd: Optional[str] = None,
    ) -> list[str]:
        """The host command that runs cmd in this space, with exactly env (as user, in cwd)."""
        inner = ["env", "-i"] + (["-C", cwd] if cwd else [])
        inner += [f"{k}={v}" for k, v in (env or {}).items()] + list(cmd)
        if user:
            inner = ["runuser", "-u", user, "--", *inner]
        return self.nsenter() + inner

    def path(self, inside: str) -> Path:
        """A path of this space, reachable from the host (through its init's root)."""
        return Path(f"/proc/{self.init}/root") / inside.lstrip("/")

    def mountinfo(self) -> list[str]:
        """Mount points of this space's mount namespace, as its processes name them."""
        with open(f"/proc/{self.init}/mountinfo", encoding="utf-8") as handle:
            return [line.split()[4].replace("\\040", " ") for line in handle]

    def ns_link(self, kind: str) -> str:
        return os.readlink(f"/proc/{self.init}/ns/{kind}")

    def alive(self) -> bool:
        return self.popen.poll() is None and self.init in process_table()


def _wait_init(name: str, popen: subprocess.Popen, log: Path, depth: int, marker: bytes) -> int:
    """The host pid of the space's PID 1, once it runs init.py (its setup is done)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [popen.pid]
        for _ in range(depth):
            pids = [c for p in pids for c in children_of(p)]
        for pid in pids:
            if marker in cmdline(pid):
                return pid
        if popen.poll() is not None:
            raise NamespaceError(f"{name}: setup failed (rc {popen.returncode}):\n{tail(log)}")
        time.sleep(0.01)
    popen.kill()
    raise NamespaceError(f"{name}: setup did not finish in 60s:\n{tail(log)}")


def tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def mount_script(
    root: Path, binds: list[tuple[str, str, bool]], readonly: bool, scratch: Iterable[str] = ()
) -> list[str]:
    """Shell lines that build the lab's view of the root and pivot_root into it (host tools).

    binds are (host path, path inside, read-only); their mount points are made on `scratch`
    tmpfs mounts (existing directories of the root) where possible, so that running a lab
    leaves nothing in the cached root."""
    r = shlex.quote(str(root))
    lines = [
        f"mount --bind {r} {r}",  # / must be a mount point (pivot_root; namespace/linux)
        f"mount -t proc proc {r}/proc",
        # The host's cgroup layout as it is (v1 + a hybrid v2): 22.05 autodetects cgroup/v1
        # there and dies on cgroup2 alone; 24.11 and later run on it with CgroupPlugin=disabled.
        f"mount --rbind /sys {r}/sys",
        f"mount --rbind /dev {r}/dev",
        f"mount -t tmpfs -o mode=1777 tmpfs {r}/dev/shm",
        f"mount -t tmpfs -o mode=0755 tmpfs {r}/run",
        f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp",
    ]
    lines += [f"mount -t tmpfs -o mode=0755 tmpfs {r}{shlex.quote(d)}" for d in scratch]
    for source, target, read_only in binds:
        inside = shlex.quote(str(root) + target)
        make = f"mkdir -p {inside}" if os.path.isdir(source) else f"[ -e {inside} ] || : > {inside}"
        lines += [make, f"mount --bind {shlex.quote(source)} {inside}"]
        if read_only:
            lines.append(f"mount -o remount,bind,ro {inside}")
    if readonly:
        lines.append(f"mount -o remount,bind,ro {r}")
    lines += [f"cd {r}", "pivot_root . .oldroot", "umount -l /.oldroot", "cd /"]
    return lines


def start_lab(
    name: str,
    root: Path,
    lab_dir: Path,
    hostname: str,
    binds: list[tuple[str, str, bool]],
    log: Path,
    scratch: Iterable[str] = (),
) -> Space:
    """The lab's namespaces, pivot_root'ed into root, PID 1 = init.py; see the module doc."""
    init_py = lab_dir / "init.py"
    init_py.write_text(INIT)
    lines = ["set -eu", f"echo {shlex.quote(hostname)} > /proc/sys/kernel/hostname"]
    binds = [(str(lab_dir), str(lab_dir), False), *binds]
    lines += mount_script(root, binds, readonly=True, scratch=scratch)
    lines.append(f"exec /usr/bin/python3 {shlex.quote(str(init_py))} lab {shlex.quote(name)}")
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            "--net", "--uts", "--ipc", "/bin/sh", "-c", "\n".join(lines)]  # fmt: skip
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            preexec_fn=die_with_parent, env=clean_env(),
        )  # fmt: skip
    init = _wait_init(name, popen, log, 1, b"init.py\0lab\0")
    return Space(name, popen, init, log, {k: ns_id(f"/proc/{init}/ns/{k}") for k in ("pid", "mnt")})


def start_node(
    lab: Space, name: str, hostname: str, lab_dir: Path, local: Path, local_source: Path, log: Path
) -> Space:
    """A node's namespaces inside the lab's, with its own /proc, /run, /tmp, /dev/shm and local
    disk (local_source bound on local)."""
    init_py = lab_dir / "init.py"
    q = shlex.quote
    lines = [
        "set -eu",
        f"echo {q(hostname)} > /proc/sys/kernel/hostname",
        "mount -t proc proc /proc",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        "mount -t tmpfs -o mode=1777 tmpfs /dev/shm",
        f"mount --bind {q(str(local_source))} {q(str(local))}",
        f"exec /usr/bin/python3 {q(str(init_py))} node {q(name)}",
    ]
    argv = lab.nsenter() + ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                            "--kill-child", "--net", "--uts", "--ipc", "/bin/sh", "-c",
                            "\n".join(lines)]  # fmt: skip
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            preexec_fn=die_with_parent, env=clean_env(),
        )  # fmt: skip
    # nsenter -> its child in the lab (unshare) -> the node's PID 1
    init = _wait_init(name, popen, log, 2, f"init.py\0node\0{name}\0".encode())
    return Space(name, popen, init, log, {k: ns_id(f"/proc/{init}/ns/{k}") for k in ("pid", "mnt")})


def ip_batch(space: Space, commands: list[str]) -> None:
    """Run `ip` commands (the host's iproute2) in the space's network namespace only."""
    result = subprocess.run(
        ["nsenter", "-t", str(space.init), "-n", "--", "ip", "-batch", "-"],
        input="\n".join(commands) + "\n", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        raise NamespaceError(f"ip in {space.name}: {result.stderr}")


def wire(lab: Space, nodes: list[tuple[Space, str]], gateway: str, prefix: int = 24) -> None:
    """A bridge in the lab's network namespace with the lab at `gateway`, and a veth pair from it
    to each node (eth0 there, at the node's address). Loopback up everywhere."""
    commands = ["link set lo up", "link add br0 type bridge",
                f"addr add {gateway}/{prefix} dev br0", "link set br0 up"]  # fmt: skip
    for index, (node, _) in enumerate(nodes):
        veth = f"veth{index}"
        commands += [f"link add {veth} type veth peer name eth0 netns {node.init}",
                     f"link set {veth} master br0", f"link set {veth} up"]  # fmt: skip
    ip_batch(lab, commands)
    for node, address in nodes:
        ip_batch(node, ["link set lo up", f"addr add {address}/{prefix} dev eth0",
                        "link set eth0 up"])  # fmt: skip


BURN = """\
import ctypes, fcntl, os, struct, sys
target, request, cpu = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
os.sched_setaffinity(0, {cpu})
for _ in range(1 << 17):
    if libc.unshare(0x04000000) != 0:
        sys.exit("unshare(CLONE_NEWUTS) failed: " + os.strerror(ctypes.get_errno()))
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    try:
        got = struct.unpack("Q", fcntl.ioctl(fd, request, b"\\0" * 8))[0]
    finally:
        os.close(fd)
    if got > target:
        sys.exit(0)
sys.exit("namespace ids never passed %d on cpu %d" % (target, cpu))
"""


def burn_namespace_ids(target: int) -> None:
    """Make every CPU's next namespace id larger than `target`.

    The kernel refuses to bind a mount-namespace file when the binding process's own mount
    namespace is not older (lower id) than the bound one, and it hands ids out in per-CPU
    batches: a namespace made on one CPU can get a lower id than an older one made on another
    (slurm-lab.md). slurmd runs in a node's mount namespace, and Slurm's own plugins
    (job_container/tmpfs, namespace/linux) do not retry that bind; throwaway UTS namespaces,
    made on each CPU in turn until its ids are past the nodes' ids, make every later bind work.
    """
    for cpu in sorted(os.sched_getaffinity(0)):
        result = subprocess.run(
            [sys.executable, "-c", BURN, str(target), str(NS_GET_ID), str(cpu)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if result.returncode != 0:
            raise NamespaceError(f"burning namespace ids on cpu {cpu}: {result.stderr}")


def clean_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run_in_root(
    root: Path, binds: list[tuple[str, str, bool]], cmd: list[str], env: dict[str, str],
    scratch: Iterable[str] = (), timeout: float = 900,
) -> subprocess.CompletedProcess:  # fmt: skip
    """cmd inside the root (pivot_root'ed, writable, the host's network), in namespaces that
    end with it: for build steps that need the network, like fetching wheels."""
    lines = ["set -eu", *mount_script(root, binds, readonly=False, scratch=scratch)]
    lines.append("exec env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
                 + " " + " ".join(shlex.quote(c) for c in cmd))  # fmt: skip
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            "--uts", "--ipc", "/bin/sh", "-c", "\n".join(lines)]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, preexec_fn=die_with_parent,
        env=clean_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
