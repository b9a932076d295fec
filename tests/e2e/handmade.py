"""A job namespace made by hand with util-linux, plus an index entry in nsctl's format.

It lets the SPANK plugin be tested on its own, with index entries nsctl would never write. The
layout follows nsctl/layout.py: ``<root>/<J>`` bind-mounted onto itself and private, the
namespace files in ``<root>/<J>/.ns``. Inside the mount namespace /tmp is a fresh tmpfs holding
the file ``handmade``, so a task can tell that it joined. Everything is made on the lab's node
(its mount and PID namespaces, its util-linux), where slurmd and the plugin see it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from labns import children_of
from slurmlab import Lab, LabError

MARKER = "handmade"


class HandmadeNamespace:
    def __init__(
        self, lab: Lab, root: Path, index_dir: Path, job_id: str, uid: int, pid_ns: bool = False
    ):
        self.lab = lab
        self.job_dir = root / job_id
        self.ns_dir = self.job_dir / ".ns"
        self.index = index_dir / job_id
        self.job_id = job_id
        self.uid = uid
        self.kinds = ("pid", "mnt") if pid_ns else ("mnt",)
        self.holder: Optional[subprocess.Popen] = None

    def create(self) -> HandmadeNamespace:
        self.job_dir.mkdir(mode=0o700, parents=True)
        self.lab.on_node(["mount", "--bind", str(self.job_dir), str(self.job_dir)])
        self.lab.on_node(["mount", "--make-private", str(self.job_dir)])
        self.ns_dir.mkdir(mode=0o700)
        for kind in self.kinds:
            (self.ns_dir / kind).touch(mode=0o600)
        # Inside a non-initial mount namespace (the lab's node) the kernel may refuse to bind a
        # mount-namespace file (EINVAL; see slurm-lab.md; the lab burns namespace ids so that
        # it should not): make it again on another CPU, as nsctl does.
        cpus = sorted(os.sched_getaffinity(0))
        for attempt in range(8):
            if self._create_on(cpus[attempt % len(cpus)]):
                return self
        raise LabError(f"could not make a hand-made namespace for job {self.job_id}")

    def _create_on(self, cpu: int) -> bool:
        make_tmp = f"mount -t tmpfs -o mode=1777 none /tmp && touch /tmp/{MARKER}"
        unshare = ["taskset", "-c", str(cpu), "unshare", f"--mount={self.ns_dir / 'mnt'}"]
        if "pid" not in self.kinds:
            done = self.lab.on_node([*unshare, "--propagation", "private", "sh", "-c", make_tmp],
                                    check=False)  # fmt: skip
            if done.returncode == 0:
                return True
            if "Invalid argument" not in done.stderr:
                raise LabError(f"unshare failed: {done.stderr}")
            return False
        # A PID namespace needs a live PID 1 for as long as tasks are to enter it.
        self.holder = self.lab.popen_on_node(
            [*unshare, f"--pid={self.ns_dir / 'pid'}", "--fork", "--mount-proc",
             "--propagation", "private", "sh", "-c", f"{make_tmp} && exec sleep infinity"]
        )  # fmt: skip
        if self._wait_joinable():
            return True
        self.destroy_holder()
        for kind in self.kinds:
            self.lab.on_node(["umount", "-l", str(self.ns_dir / kind)], check=False)
        self.holder = None
        return False

    def _wait_joinable(self) -> bool:
        """True once the holder's namespaces are bound and /tmp is mounted in them."""
        probe = ["nsenter", f"--mount={self.ns_dir / 'mnt'}", "test", "-e", f"/tmp/{MARKER}"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mounts = self.lab.mounts_under(str(self.ns_dir))
            bound = all(str(self.ns_dir / k) in mounts for k in self.kinds)
            if bound and self.lab.on_node(probe, check=False).returncode == 0:
                return True
            if self.holder and self.holder.poll() is not None:
                return False  # unshare gave up (the EINVAL above)
            time.sleep(0.02)
        raise LabError(f"hand-made namespace for job {self.job_id} never became joinable")

    def entry(self, **overrides: str) -> dict[str, str]:
        entry = {
            "version": "1",
            "job_id": self.job_id,
            "uid": str(self.uid),
            "gid": str(self.uid),
            "user": "nsctltest",
            "job_dir": str(self.job_dir),
            "ns_dir": str(self.ns_dir),
            "namespaces": ",".join(self.kinds),
            "holder_pid": str(self.holder_pid() or 0),
            "holder_start": self.holder_start(),
            "dirs": "/tmp",
        }
        entry.update(overrides)
        return entry

    def write_index(self, text: Optional[str] = None, mode: int = 0o644, **overrides: str) -> None:
        """Write the entry atomically, root-owned, as nsctl does (or exactly `text`)."""
        if text is None:
            text = "".join(f"{k}={v}\n" for k, v in self.entry(**overrides).items())
        self.index.parent.mkdir(parents=True, exist_ok=True)
        partial = self.index.with_name(f".{self.job_id}.new")
        partial.write_text(text)
        partial.chmod(mode)
        os.replace(partial, self.index)

    def holder_host_pid(self) -> Optional[int]:
        """The `sleep` that is PID 1 of the namespace: the only child of our unshare (which is
        nsenter's child on the node), as a host pid."""
        if not self.holder:
            return None
        unshare = children_of(self.holder.pid)
        pids = children_of(unshare[0]) if len(unshare) == 1 else []
        return pids[0] if len(pids) == 1 else None

    def holder_pid(self) -> Optional[int]:
        """The holder's pid as the node sees it (what nsctl would write in the entry)."""
        pid = self.holder_host_pid()
        return self.lab.node_pid(pid) if pid else None

    def holder_start(self) -> str:
        """Field 22 of the holder's /proc/PID/stat, as nsctl records it (0 without a holder): the
        same from any PID namespace, so read through the host's pid."""
        pid = self.holder_host_pid()
        if not pid:
            return "0"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]

    def destroy_holder(self) -> None:
        """Kill PID 1: the namespace files stay, but nothing can enter the PID namespace."""
        if self.holder:
            # `unshare --fork` ignores SIGTERM; killing its child (verified above) ends both.
            pid = self.holder_host_pid()
            if pid and pid > 1:
                os.kill(pid, signal.SIGKILL)
            try:
                self.holder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()

    def destroy(self) -> None:
        self.index.unlink(missing_ok=True)
        self.destroy_holder()
        for kind in self.kinds:
            self.lab.on_node(["umount", "-l", str(self.ns_dir / kind)], check=False)
        self.lab.on_node(["umount", "-l", str(self.job_dir)], check=False)
        shutil.rmtree(self.job_dir, ignore_errors=True)
