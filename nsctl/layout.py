"""The one place that knows where a job's files live: on disk under base_path, and in the index.

On-disk layout for job J under base path B (same names as Slurm's namespace/linux)::

    B/J/              root 0700, bind-mounted onto itself, rprivate
    B/J/.nsctl        empty: "nsctl made this" (nsctl gc never touches a job dir without it)
    B/J/.ns/{pid,user,mnt}   files holding bind mounts of the job's namespaces
    B/J/.J/           owned by the job user, 0700 ("SRC")
    B/J/.J/_tmp/      backing directory of /tmp (each "/" of the target becomes "_")
    D/J/_scratch/     backing directory of a dir_confs entry with its own base_path D
    D/J/.nsctl        the same mark
    B/.nsctl-deleting.J.INO   a torn-down job's tree, moved aside, being deleted in the background

Runtime directory (``$NSCTL_RUN_DIR``, default /run/nsctl), every level a root-owned directory
writable by root alone, reached without a symlink (see fsafe.py)::

    jobs/<J>      the job's index entry (0755 dir: the TaskProlog reads it as the job user)
    locks/        per-job byte-range locks (0700)
    cache/        resolved node configs (0700, loader.py)

``jobs/<J>`` is a root-owned text file of ``key=value`` lines, written atomically once a job is
fully set up and removed last at teardown. The SPANK plugin (contrib/slurm/spank), ``nsctl join``
and teardown read it; :class:`IndexEntry` is its one format and its one parser::

    version=1
    job_id=J
    uid=U
    gid=G
    user=NAME
    job_dir=B/J
    job_dir_id=DEV:INO        (B/J as setup made it: teardown acts only on that directory)
    ns_dir=B/J/.ns
    namespaces=pid,user,mnt   (the ones that exist, in join order)
    holder_pid=P              (0 when there is no PID namespace)
    holder_start=T            (field 22 of /proc/P/stat, so a reused pid is never trusted)
    dirs=/tmp,/dev/shm        (the private directories inside the job, expanded)
    tmpfs_dirs=/dev/shm       (those of them that are a fresh tmpfs)
    dir_bases=/scratch        (per-dir base paths other than B, so teardown finds D/J)
    dir_root_ids=DEV:INO      (D/J for each of dir_bases, in the same order)
"""

from __future__ import annotations

import os
import stat

from .errors import InputError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional

NS_JOIN_ORDER = ("pid", "user", "mnt")
MARKER = ".nsctl"
TRASH_PREFIX = ".nsctl-deleting."
INDEX_VERSION = "1"
DEFAULT_RUN_DIR = "/run/nsctl"
INDEX_MAX = 4096  # the SPANK plugin's limit too: an entry is a dozen short lines

# Runtime sub-directories and their modes (jobs/ is read by the TaskProlog as the job user).
RUN_SUBDIRS = {"jobs": 0o755, "locks": 0o700, "cache": 0o700}


def valid_job_id(job_id: Optional[str]) -> Optional[str]:
    """The normalised job id (no leading zeros), or None unless it is 1-10 ASCII digits, not 0,
    below 2^32. Nothing else is accepted: not a sign, a space, a newline or a path character."""
    if not job_id or len(job_id) > 10 or not (job_id.isascii() and job_id.isdigit()):
        return None
    number = int(job_id)
    return str(number) if 0 < number < 2**32 else None


def check_job_id(job_id: Optional[str]) -> str:
    if job_id is None or job_id == "":
        raise InputError("no job id: give --job-id or set SLURM_JOB_ID")
    normalised = valid_job_id(job_id)
    if normalised is None:
        raise InputError(f"bad job id {job_id!r}: expected a positive decimal number")
    return normalised


class BadIndex(InputError):
    """A root-owned index entry whose content is not what nsctl writes (it steers nothing)."""


class JobPaths(Record):
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

    @property
    def marker(self) -> str:
        return os.path.join(self.job_dir, MARKER)

    def dir_job_root(self, dir_base: str) -> str:
        """``D/J`` for a dir_confs entry with its own base_path D."""
        return os.path.join(dir_base, self.job_id)

    def backing(self, target: str, dir_base: Optional[str] = None) -> str:
        """Backing directory of a bind-mounted target (already %-expanded)."""
        root = self.dir_job_root(dir_base) if dir_base else self.src
        return os.path.join(root, target.replace("/", "_"))


def trash_name(job_id: str, ino: int) -> str:
    """The name a torn-down B/J (or D/J) takes while it is deleted: no job id starts with "."."""
    return f"{TRASH_PREFIX}{job_id}.{ino}"


def parse_trash_name(name: str) -> Optional[str]:
    """The job id of a trash directory's name, or None when it is not one."""
    if not name.startswith(TRASH_PREFIX):
        return None
    job_id, sep, ino = name[len(TRASH_PREFIX) :].partition(".")
    if not sep or valid_job_id(job_id) != job_id or not (ino.isascii() and ino.isdigit()):
        return None
    return job_id


def normal_abs(path: str) -> bool:
    """An absolute path in normal form (no "//", ".", ".." or trailing "/"), not "/" itself."""
    return path.startswith("/") and path != "/" and os.path.normpath(path) == path


def _csv(value: str) -> tuple[str, ...]:
    return tuple(value.split(",")) if value else ()


class IndexEntry(Record):
    """A job's runtime index entry. ``parse`` accepts only what ``format`` writes."""

    job_id: str
    uid: int
    gid: int
    user: str
    job_dir: str
    namespaces: tuple[str, ...]
    dirs: tuple[str, ...] = ()
    dir_bases: tuple[str, ...] = ()
    tmpfs_dirs: tuple[str, ...] = ()
    job_dir_id: str = ""
    dir_root_ids: tuple[str, ...] = ()
    holder_pid: int = 0
    holder_start: str = "0"

    @property
    def ns_dir(self) -> str:
        return os.path.join(self.job_dir, ".ns")

    @property
    def dir_roots(self) -> tuple[str, ...]:
        return tuple(os.path.join(base, self.job_id) for base in self.dir_bases)

    def format(self) -> str:
        fields = (
            ("version", INDEX_VERSION),
            ("job_id", self.job_id),
            ("uid", str(self.uid)),
            ("gid", str(self.gid)),
            ("user", self.user),
            ("job_dir", self.job_dir),
            ("job_dir_id", self.job_dir_id),
            ("ns_dir", self.ns_dir),
            ("namespaces", ",".join(self.namespaces)),
            ("holder_pid", str(self.holder_pid)),
            ("holder_start", self.holder_start),
            ("dirs", ",".join(self.dirs)),
            ("tmpfs_dirs", ",".join(self.tmpfs_dirs)),
            ("dir_bases", ",".join(self.dir_bases)),
            ("dir_root_ids", ",".join(self.dir_root_ids)),
        )
        return "".join(f"{key}={value}\n" for key, value in fields)

    @classmethod
    def parse(cls, text: str) -> IndexEntry:
        """ValueError unless ``text`` has exactly the shape ``format`` gives it."""
        if not text.endswith("\n"):
            raise ValueError("truncated")
        values: dict[str, str] = {}
        for line in text[:-1].split("\n"):
            key, sep, value = line.partition("=")
            if not sep or key in values:
                raise ValueError("malformed or repeated line")
            values[key] = value
        if values.get("version") != INDEX_VERSION:
            raise ValueError(f"version {values.get('version')!r}")
        try:
            entry = cls(
                job_id=values["job_id"],
                uid=_uint(values["uid"]),
                gid=_uint(values["gid"]),
                user=values["user"],
                job_dir=values["job_dir"],
                namespaces=_csv(values["namespaces"]),
                dirs=_csv(values["dirs"]),
                tmpfs_dirs=_csv(values["tmpfs_dirs"]),
                dir_bases=_csv(values["dir_bases"]),
                job_dir_id=values["job_dir_id"],
                dir_root_ids=_csv(values["dir_root_ids"]),
                holder_pid=_uint(values["holder_pid"]),
                holder_start=values["holder_start"],
            )
        except KeyError as exc:
            raise ValueError(f"no {exc.args[0]}") from None
        problem = entry._problem(values)
        if problem:
            raise ValueError(problem)
        return entry

    def _problem(self, values: Mapping[str, str]) -> Optional[str]:
        if valid_job_id(self.job_id) != self.job_id:
            return f"job_id {self.job_id!r}"
        if not normal_abs(self.job_dir) or os.path.basename(self.job_dir) != self.job_id:
            return f"job_dir {self.job_dir!r}"
        if values["ns_dir"] != self.ns_dir:
            return f"ns_dir {values['ns_dir']!r}"
        kinds = [k for k in NS_JOIN_ORDER if k in self.namespaces]
        if "mnt" not in self.namespaces or list(self.namespaces) != kinds:
            return f"namespaces {values['namespaces']!r}"
        if not all(normal_abs(base) for base in self.dir_bases):
            return f"dir_bases {values['dir_bases']!r}"
        if not set(self.tmpfs_dirs) <= set(self.dirs):
            return f"tmpfs_dirs {values['tmpfs_dirs']!r}"
        if len(self.dir_root_ids) != len(self.dir_bases):
            return "dir_root_ids do not match dir_bases"
        if not all(_is_id(i) for i in (self.job_dir_id, *self.dir_root_ids)):
            return "a directory id is not DEV:INO"
        if not (self.holder_start.isascii() and self.holder_start.isdigit()):
            return f"holder_start {self.holder_start!r}"
        if not self.user or "\n" in self.user:
            return "user"
        return None


def _uint(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"not a number: {value!r}")
    return int(value)


def _is_id(value: str) -> bool:
    dev, sep, ino = value.partition(":")
    return bool(sep) and dev.isascii() and dev.isdigit() and ino.isascii() and ino.isdigit()


# ---------------------------------------------------------------------------------------------
# The runtime directory


def run_dir(env: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if env is None else env
    path = env.get("NSCTL_RUN_DIR") or DEFAULT_RUN_DIR
    if not os.path.isabs(path):
        raise InputError(f"NSCTL_RUN_DIR must be an absolute path, got {path!r}")
    return os.path.normpath(path)


def index_path(job_id: str, env: Optional[Mapping[str, str]] = None) -> str:
    return os.path.join(run_dir(env), "jobs", job_id)


def open_run_subdir(name: str, create: bool, env: Optional[Mapping[str, str]] = None) -> int:
    """An fd for ``$NSCTL_RUN_DIR/<name>`` (jobs, locks or cache), every level checked (and made
    with its mode, whatever the umask, when ``create``). FileNotFoundError when missing and not
    ``create``; fsafe.UnsafePath when a level is not root's alone."""
    from .fsafe import trusted_dir

    top = run_dir(env)
    mode = RUN_SUBDIRS[name]
    parent = trusted_dir(top, "runtime directory", *((0o755, 0o055) if create else (None, 0)))
    try:
        return _subdir(parent, top, name, mode, create)
    finally:
        os.close(parent)


def _subdir(parent: int, top: str, name: str, mode: int, create: bool) -> int:
    from .fsafe import O_READ_DIR, UnsafePath

    path = os.path.join(top, name)
    try:
        fd = os.open(name, O_READ_DIR, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except FileExistsError:
            pass
        fd = os.open(name, O_READ_DIR, dir_fd=parent)
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    except OSError as exc:
        raise UnsafePath(path, f"not a directory, or a symlink: {exc.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise UnsafePath(path, "must be a directory owned by root and writable only by root")
    if stat.S_IMODE(st.st_mode) & mode != mode:  # a strict umask made it: let readers in
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | mode)
    return fd


def read_index(job_id: str, env: Optional[Mapping[str, str]] = None) -> Optional[IndexEntry]:
    """The index entry of a job, or None when nsctl has none for it.

    The entry steers root (teardown deletes where it says), so only a regular file owned by root
    and writable by root alone, in a runtime directory that is root's alone, is believed; a
    symlink is never followed.
    """
    from .fsafe import UnsafePath

    path = index_path(job_id, env)
    try:
        jobs = open_run_subdir("jobs", create=False, env=env)
    except FileNotFoundError:
        return None
    except UnsafePath as exc:
        raise InputError(f"runtime directory is not trusted: {exc}") from None
    try:
        fd = os.open(
            job_id, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=jobs
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read runtime index entry {path}: {exc.strerror}") from None
    finally:
        os.close(jobs)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise InputError(
                f"runtime index entry {path} is not trusted: not a regular file owned and "
                "writable only by root"
            )
        data = handle.read(INDEX_MAX + 1)
    try:
        if len(data) > INDEX_MAX:
            raise ValueError("too long")
        entry = IndexEntry.parse(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadIndex(f"runtime index entry {path} is not one nsctl wrote ({exc})") from None
    if entry.job_id != job_id:
        raise BadIndex(f"runtime index entry {path} is for job {entry.job_id}")
    return entry


def parse_index(text: str) -> dict[str, str]:
    """The raw ``key=value`` pairs of an entry (tests and tools that only look)."""
    entry = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            entry[key] = value
    return entry
