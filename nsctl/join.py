"""Run a command inside a job's namespaces (``nsctl join``).

The order is the kernel's, as util-linux nsenter does it: open every namespace file first (after
joining the user or mount namespace the paths or the rights to open the rest may be gone), then
setns pid -> user -> mnt with the explicit type, in a single-threaded process, then fork (setns on
a PID namespace only places future children there) and pass the child's status through.

The command never shares the caller's terminal or session (``relay``): what runs in a job is the
job's, and with ``--as-user`` it is the job user's own code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import threading
from collections.abc import Sequence
from typing import NamedTuple, Optional

from . import libc
from .errors import InputError, NsctlError
from .layout import NS_JOIN_ORDER, IndexEntry, read_index
from .relay import Relay


class _User(NamedTuple):
    passwd: pwd.struct_passwd
    gid: int
    groups: list[int]


def _single_threaded() -> bool:
    return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1


def _open_stdio() -> None:
    """/dev/null for a closed stdin, stdout or stderr, so no descriptor join opens becomes one."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


def find_job(job_id: str, config_file: Optional[str] = None, node: Optional[str] = None):
    """The job's index entry; for a job of Slurm's own namespace/linux plugin (no nsctl index:
    ``B[/<NodeName>]/J/.ns`` from the config and the node name, root's alone, as nsctl's own
    job directories must be), one made up from what is bound there. InputError otherwise."""
    entry = read_index(job_id)
    if entry is not None:
        return entry
    from . import config, inventory, procfs
    from .errors import ConfigError
    from .loader import load_node_config

    try:
        resolved = load_node_config(config.config_path(config_file), config.node_name(node))
    except ConfigError:
        resolved = None
    records = inventory.inventory(resolved, job_id) if resolved else []
    record = records[0] if records else None
    if record is None or record.made_by != "slurm" or "mnt" not in record.namespaces:
        raise InputError(f"job {job_id} has no nsctl namespaces on this node")
    try:
        owner = pwd.getpwuid(os.lstat(os.path.join(record.job_dir, f".{job_id}")).st_uid)
    except (OSError, KeyError):
        raise InputError(f"job {job_id}: the owner of Slurm's job directory is unknown") from None
    return IndexEntry(
        job_id,
        owner.pw_uid,
        owner.pw_gid,
        owner.pw_name,
        record.job_dir,
        record.namespaces,
        holder_pid=record.holder_pid,
        holder_start=procfs.start_time(record.holder_pid) or "0" if record.holder_pid else "0",
    )


def open_namespaces(entry: IndexEntry) -> list[tuple[str, int]]:
    """Open every namespace file of a live job, in join order."""
    kinds, ns_dir = entry.namespaces, entry.ns_dir
    opened: list[tuple[str, int]] = []
    try:
        for kind in NS_JOIN_ORDER:
            if kind in kinds:
                path = os.path.join(ns_dir, kind)
                opened.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)))
    except OSError as exc:
        for _, fd in opened:
            os.close(fd)
        raise NsctlError(f"cannot open {exc.filename}: {exc.strerror}") from None
    return opened


def _job_user(job_id: str, entry: IndexEntry) -> _User:
    """The job's user, looked up on the host (before join enters the job's namespaces)."""
    try:
        user = pwd.getpwuid(entry.uid)
    except KeyError:
        raise InputError(f"job {job_id}: the job's user no longer exists") from None
    return _User(user, entry.gid, os.getgrouplist(user.pw_name, entry.gid))


def _exec(argv: Sequence[str], cwd: str, user: Optional[_User]) -> None:
    if user:
        os.setgroups(user.groups)
        os.setgid(user.gid)
        os.setuid(user.passwd.pw_uid)
        os.environ.update(
            HOME=user.passwd.pw_dir, USER=user.passwd.pw_name, LOGNAME=user.passwd.pw_name
        )
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")  # the caller's directory may not exist in the job's view
    try:
        os.execvp(argv[0], list(argv))
    except OSError as exc:
        os.write(2, f"nsctl: cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127 if exc.errno == errno.ENOENT else 126)


def _fork(job_id: str, entry: IndexEntry) -> int:
    try:
        return os.fork()
    except OSError as exc:
        # A PID namespace whose init has exited takes no new process: fork fails with ENOMEM.
        if exc.errno == errno.ENOMEM and "pid" in entry.namespaces:
            raise NsctlError(
                f"job {job_id}: its PID namespace is gone (its holder, PID "
                f"{entry.holder_pid}, died); nothing can join the job any more, "
                "only teardown can clean it up"
            ) from None
        raise NsctlError(f"cannot start the command in job {job_id}: {exc.strerror}") from None


def join(
    job_id: str,
    argv: Sequence[str],
    as_user: bool = False,
    config_file: Optional[str] = None,
    node: Optional[str] = None,
) -> int:
    """Run argv inside the job's namespaces; returns its exit status (128+N for signal N)."""
    if os.geteuid() != 0:
        raise NsctlError("join needs root (setns requires CAP_SYS_ADMIN)")
    _open_stdio()
    entry = find_job(job_id, config_file, node)
    user = _job_user(job_id, entry) if as_user else None
    if not _single_threaded():
        raise NsctlError("join must run single-threaded (setns into a user or mount namespace)")
    cwd = os.getcwd()
    # The command's pty, if it gets one, comes from the caller's /dev/ptmx: before setns.
    with Relay(owner=user.passwd.pw_uid if user else None) as relay:
        opened = open_namespaces(entry)
        try:
            for kind, fd in opened:
                try:
                    libc.setns(fd, libc.NAMESPACES[kind])
                except OSError as exc:
                    raise NsctlError(
                        f"cannot join the {kind} namespace of job {job_id}: {exc.strerror}"
                    ) from None
        finally:
            for _, fd in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # Always fork: required after joining a PID namespace, and it gives one status convention
        # (a signal death is 128+N, like a shell) whether or not the job has one.
        child = _fork(job_id, entry)
        if child == 0:
            try:
                relay.child_side()
                _exec(argv, cwd, user)
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    os.write(2, f"nsctl: cannot start {argv[0]}: {exc}\n".encode())
            finally:
                os._exit(126)
        return relay.run(child)
