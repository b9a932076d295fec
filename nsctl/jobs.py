"""Who a job is: its id, uid, gid and user, taken from options or the Prolog's environment.

Input is distrusted: the id must be decimal digits, and the uid, gid and user must exist and
agree with each other before anything is created on their behalf.
"""

from __future__ import annotations

import os

from .errors import InputError
from .layout import check_job_id
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional

_SLUID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class Job(Record):
    job_id: str
    uid: int
    gid: int
    user: str
    sluid: Optional[str] = None


def _number(value: Optional[str], what: str) -> Optional[int]:
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()):  # isdigit alone takes "²" and "٣"
        raise InputError(f"bad {what} {value!r}: expected a number")
    return int(value)


def resolve_job(
    job_id: Optional[str],
    uid: Optional[str],
    gid: Optional[str],
    user: Optional[str],
    env: Optional[Mapping[str, str]] = None,
) -> Job:
    """Options first, then SLURM_JOB_ID/UID/GID/USER; the result is checked against the user db.

    Only when all three of uid, gid and user come from Slurm's environment (slurmd sets them
    for every Prolog, from its own user lookup) are they taken as they are: a lookup of our own
    (NSS: /etc/passwd, or LDAP over the network) would cost every job's start time again.
    """
    env = os.environ if env is None else env
    job_id = check_job_id(job_id or env.get("SLURM_JOB_ID"))
    sluid = env.get("SLURM_JOB_SLUID") or None
    if sluid is not None and not (len(sluid) <= 64 and set(sluid) <= _SLUID_CHARS):
        raise InputError(f"bad SLURM_JOB_SLUID {sluid!r}")
    if uid is None and gid is None and user is None:
        from_slurm = [env.get(f"SLURM_JOB_{key}") for key in ("UID", "GID", "USER")]
        if all(from_slurm):
            uid_n, gid_n = _number(from_slurm[0], "uid"), _number(from_slurm[1], "gid")
            name = from_slurm[2]
            if "/" in name or name in (".", "..") or not name.isprintable():
                raise InputError(f"bad SLURM_JOB_USER {name!r}")
            return Job(job_id, uid_n, gid_n, name, sluid)
    user = user or env.get("SLURM_JOB_USER") or None
    uid_n = _number(uid if uid is not None else env.get("SLURM_JOB_UID"), "uid")
    gid_n = _number(gid if gid is not None else env.get("SLURM_JOB_GID"), "gid")
    import grp
    import pwd

    try:
        if user is not None:
            entry = pwd.getpwnam(user)
        elif uid_n is not None:
            entry = pwd.getpwuid(uid_n)
        else:
            raise InputError("no job user: give --user or --uid, or set SLURM_JOB_USER")
    except KeyError:
        raise InputError(f"no such user: {user if user is not None else uid_n}") from None
    if uid_n is not None and uid_n != entry.pw_uid:
        raise InputError(f"uid {uid_n} does not belong to user {entry.pw_name} ({entry.pw_uid})")
    if gid_n is None:
        gid_n = entry.pw_gid
    try:
        grp.getgrgid(gid_n)
    except KeyError:
        raise InputError(f"no such group: {gid_n}") from None
    if gid_n != entry.pw_gid and gid_n not in os.getgrouplist(entry.pw_name, entry.pw_gid):
        raise InputError(f"user {entry.pw_name} is not a member of group {gid_n}")
    return Job(job_id, entry.pw_uid, gid_n, entry.pw_name, sluid)
