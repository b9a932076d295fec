"""The one place that knows where a job's files live: on disk under base_path, and in the index.

On-disk layout for job J under base path B (same names as Slurm's namespace/linux)::

    B/J/              root 0700, bind-mounted onto itself, rprivate
    B/J/.ns/{pid,user,mnt}   files holding bind mounts of the job's namespaces
    B/J/.J/           owned by the job user, 0700 ("SRC")
    B/J/.J/_tmp/      backing directory of /tmp (each "/" of the target becomes "_")
    D/J/_scratch/     backing directory of a dir_confs entry with its own base_path D

Runtime index (``$NSCTL_RUN_DIR``, default /run/nsctl): ``jobs/<J>`` is a root-owned text file of
``key=value`` lines, written atomically once a job is fully set up and removed last at teardown.
The SPANK plugin (contrib/slurm/spank) and ``nsctl join`` read it; its keys are::

    version=1
    job_id=J
    uid=U
    gid=G
    user=NAME
    job_dir=B/J
    ns_dir=B/J/.ns
    namespaces=pid,user,mnt   (the ones that exist, in join order)
    holder_pid=P              (0 when there is no PID namespace)
    holder_start=T            (field 22 of /proc/P/stat, so a reused pid is never trusted)
    dirs=/tmp,/dev/shm        (the private directories inside the job, expanded)
    dir_bases=/scratch        (per-dir base paths other than B, so teardown finds D/J)
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from typing import NamedTuple, Optional

from .errors import InputError

NS_JOIN_ORDER = ("pid", "user", "mnt")
INDEX_VERSION = "1"
DEFAULT_RUN_DIR = "/run/nsctl"

_JOB_ID = re.compile(r"^[0-9]{1,10}$")


def check_job_id(job_id: Optional[str]) -> str:
    """A job id is 1-10 decimal digits (no sign, no path characters), and not 0."""
    if job_id is None or job_id == "":
        raise InputError("no job id: give --job-id or set SLURM_JOB_ID")
    if not _JOB_ID.match(job_id) or int(job_id) == 0 or int(job_id) >= 2**32:
        raise InputError(f"bad job id {job_id!r}: expected a positive decimal number")
    return str(int(job_id))


class JobPaths(NamedTuple):
    base: str
    job_id: str

    @property
    def job_dir(self) -> str:
        return os.path.join(self.base, self.job_id)

    @property
    def ns_dir(self) -> str:
        return os.path.join(self.job_dir, ".ns")

    def ns_file(self, kind: str) -> str:
        return os.path.join(self.ns_dir, kind)

    @property
    def src(self) -> str:
        return os.path.join(self.job_dir, f".{self.job_id}")

    def dir_job_root(self, dir_base: str) -> str:
        """``D/J`` for a dir_confs entry with its own base_path D."""
        return os.path.join(dir_base, self.job_id)

    def backing(self, target: str, dir_base: Optional[str] = None) -> str:
        """Backing directory of a bind-mounted target (already %-expanded)."""
        root = self.dir_job_root(dir_base) if dir_base else self.src
        return os.path.join(root, target.replace("/", "_"))


def run_dir(env: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if env is None else env
    path = env.get("NSCTL_RUN_DIR") or DEFAULT_RUN_DIR
    if not os.path.isabs(path):
        raise InputError(f"NSCTL_RUN_DIR must be an absolute path, got {path!r}")
    return os.path.normpath(path)


def index_path(job_id: str, env: Optional[Mapping[str, str]] = None) -> str:
    return os.path.join(run_dir(env), "jobs", job_id)


def lock_path(name: str, env: Optional[Mapping[str, str]] = None) -> str:
    return os.path.join(run_dir(env), "locks", name)


def format_index(entry: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in entry.items())


def parse_index(text: str) -> dict[str, str]:
    entry = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            entry[key] = value
    return entry


def read_index(job_id: str, env: Optional[Mapping[str, str]] = None) -> Optional[dict[str, str]]:
    """The index entry of a live job, or None when nsctl has none for it.

    The entry steers root (teardown deletes where it says), so only a regular file owned by root
    and writable by root alone is believed; a symlink is never followed.
    """
    path = index_path(job_id, env)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read runtime index entry {path}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise InputError(
                f"runtime index entry {path} is not trusted: not a regular file owned and "
                "writable only by root"
            )
        entry = parse_index(handle.read(65536))
    if entry.get("version") != INDEX_VERSION or entry.get("job_id") != job_id:
        raise InputError(f"runtime index entry for job {job_id} is not one nsctl wrote")
    return entry
