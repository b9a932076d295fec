"""`nsctl setup` and `nsctl teardown`, and the Prolog/Epilog entry points that run them fast.

Slurm runs the Prolog and Epilog for every job, and their run time is added to every job's
start and end. ``nsctl-prolog`` and ``nsctl-epilog`` (console scripts) therefore skip the click
CLI and import only what setup and teardown need: while the resolved node config is cached, no
YAML parser, no jsonschema. The click commands in ``cli.py`` call the same two functions.
"""

from __future__ import annotations

import os
import stat
import sys

from . import config
from .errors import Exit, NsctlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Callable, Optional

    Echo = Callable[[str], None]


def holder_problem(path: str) -> Optional[str]:
    """Why ``path`` may not be used as the holder program, or None when it may."""
    if not os.path.isabs(path):
        return "must be an absolute path"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or not st.st_mode & 0o100:
        return f"{path} must be an executable owned by root and writable only by root"
    return None


def run_setup(
    config_file: Optional[str] = None,
    node: Optional[str] = None,
    job_id: Optional[str] = None,
    uid: Optional[str] = None,
    gid: Optional[str] = None,
    user: Optional[str] = None,
    dry_run: bool = False,
    on_error: str = "fail",
    holder: Optional[str] = None,
    verbose: bool = False,
    echo: Echo = print,
) -> int:
    """Build a job's namespaces; the exit status (0 also when nsctl is disabled on the node)."""
    from . import engine, plan
    from .jobs import resolve_job
    from .layout import index_path, valid_job_id
    from .loader import load_node_config
    from .log import job_logger

    # Only a checked, normalised id tags the log: raw text could split or forge its lines.
    log = job_logger(valid_job_id(job_id or os.environ.get("SLURM_JOB_ID")), verbose)
    try:
        problem = holder and holder_problem(holder)
        if problem:  # a setup failure like any other: the fail policy decides
            raise NsctlError(f"--holder: {problem}")
        job = resolve_job(job_id, uid, gid, user)
        resolved = load_node_config(config.config_path(config_file), config.node_name(node))
        if not resolved.enabled:
            log.info("nsctl is disabled on %s: %s", resolved.node, resolved.disabled_reason)
            return Exit.OK
        index_file = index_path(job.job_id)
        the_plan = plan.plan_setup(resolved, job, index_file, os.environ)
        if dry_run:
            echo(the_plan.describe())
            return Exit.OK
        if os.geteuid() != 0:
            raise NsctlError("setup needs root")

        def teardown_plan_for(entry):  # what an earlier run left, or a rollback: deleted now
            return plan.plan_teardown(resolved, job.job_id, index_file, os.environ, entry, True)

        result = engine.setup(the_plan, teardown_plan_for, log, holder)
        if verbose:
            log.info("setup: %s", result.status)
    except Exception as exc:  # noqa: BLE001 - the fail policy covers nsctl's own bugs too
        if isinstance(exc, NsctlError):
            log.error("setup failed: %s", exc)
        else:
            log.exception("setup failed: internal error: %s", exc)
        if on_error == "ignore":
            log.warning("--on-error ignore: the job runs without private directories")
            return Exit.OK
        return Exit.FAILURE
    return Exit.OK


def run_teardown(
    config_file: Optional[str] = None,
    node: Optional[str] = None,
    job_id: Optional[str] = None,
    dry_run: bool = False,
    verbose: bool = False,
    echo: Echo = print,
    wait: bool = False,
) -> int:
    """Destroy a job's namespaces and files; the exit status (1 when something was left).

    The job's trees are moved aside and deleted by a detached process, unless ``wait``.
    """
    from . import engine, plan
    from .layout import BadIndex, check_job_id, index_path, read_index, valid_job_id
    from .loader import load_node_config
    from .log import job_logger

    log = job_logger(valid_job_id(job_id or os.environ.get("SLURM_JOB_ID")), verbose)
    try:
        job_id = check_job_id(job_id or os.environ.get("SLURM_JOB_ID"))
        try:
            resolved = load_node_config(config.config_path(config_file), config.node_name(node))
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the config
            # Setup refuses such a config; here the index still says where a live job is, and
            # failing would drain the node even under a fail-open Prolog policy.
            if isinstance(exc, NsctlError):
                log.error("%s; tearing down from the runtime index only", exc)
            else:
                log.exception("reading the config failed; tearing down from the runtime index only")
            resolved = None
        index_file = index_path(job_id)
        try:
            entry = read_index(job_id)
        except BadIndex as exc:  # it steers nothing; removed at the end like a valid one
            log.error("%s; ignoring it", exc)
            entry = None
        teardown_plan = plan.plan_teardown(resolved, job_id, index_file, os.environ, entry, wait)
        if dry_run:
            echo(teardown_plan.describe())
            return Exit.OK
        if os.geteuid() != 0:
            raise NsctlError("teardown needs root")
        afterwards = None
        if not wait and resolved is not None:
            afterwards = _leftovers_collector(resolved, job_id)
        leftovers = engine.teardown(teardown_plan, log, afterwards)
        if leftovers:
            raise NsctlError(f"left behind: {', '.join(leftovers)}")
    except NsctlError as exc:
        log.error("teardown failed: %s", exc)
        return Exit.FAILURE
    return Exit.OK


def _leftovers_collector(resolved, job_id: str):
    """What the detached deleter does last: look (cheaply) for leftovers of other jobs in the
    base paths, and collect them with nsctl gc when there are some. Off the Epilog's path."""

    def collect() -> None:
        from . import gc, inventory
        from .log import job_logger

        if inventory.leftovers_seen(resolved, exclude=job_id):
            log = job_logger(None)
            log.info("leftovers of other jobs found: collecting them (nsctl gc)")
            gc.collect(resolved, log, echo=log.info)

    return collect


# ---------------------------------------------------------------------------------------------
# nsctl-prolog / nsctl-epilog: everything from Slurm's environment, a few options at most

_PROLOG_USAGE = """\
usage: nsctl-prolog [--on-error fail|ignore] [--holder PATH] [-v]

Slurm Prolog entry point: `nsctl setup` for the job in SLURM_JOB_ID, SLURM_JOB_UID,
SLURM_JOB_GID and SLURM_JOB_USER, with the config beside SLURM_CONF. See nsctl(8)."""
_EPILOG_USAGE = """\
usage: nsctl-epilog [--wait] [-v]

Slurm Epilog entry point: `nsctl teardown` for the job in SLURM_JOB_ID. The job's files are
deleted in the background unless --wait. See nsctl(8)."""


class _Usage(Exception):
    pass


def _parse(argv: Sequence[str], values: dict, flags: Sequence[str] = ()) -> dict:
    """--name VALUE, --name=VALUE for the names ``values`` lists; -v/--verbose and ``flags``."""
    parsed: dict = {"verbose": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-v", "--verbose"):
            parsed["verbose"] = True
            continue
        if arg.startswith("--") and arg[2:] in flags:
            parsed[arg[2:].replace("-", "_")] = True
            continue
        name, eq, value = arg.partition("=")
        key = name[2:].replace("-", "_")
        if not name.startswith("--") or key not in values:
            raise _Usage(f"unknown option {arg!r}")
        if not eq:
            if not args:
                raise _Usage(f"{name} needs a value")
            value = args.pop(0)
        choices = values[key]
        if choices and value not in choices:
            raise _Usage(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        parsed[key] = value
    return parsed


def _hook(
    argv: Optional[Sequence[str]],
    usage: str,
    values: dict,
    run,
    flags: Sequence[str] = (),
    exit_now: bool = False,
) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage)
        sys.exit(Exit.OK)
    try:
        options = _parse(argv, values, flags)
    except _Usage as exc:
        print(f"{usage.splitlines()[0]}\nerror: {exc}", file=sys.stderr)
        sys.exit(Exit.USAGE)
    code = run(**options)
    if exit_now:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's finalisation, which frees every module and object one by
    one (some 3 ms per Prolog): nsctl has closed what it wrote; only buffered output is left."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing to keep
            pass
    os._exit(code)


def prolog_main(argv: Optional[Sequence[str]] = None, exit_now: bool = False) -> None:
    """``exit_now``: for the launcher, which has nothing to run after it."""
    values = {"on_error": ("fail", "ignore"), "holder": None}
    _hook(argv, _PROLOG_USAGE, values, run_setup, exit_now=exit_now)


def epilog_main(argv: Optional[Sequence[str]] = None, exit_now: bool = False) -> None:
    _hook(argv, _EPILOG_USAGE, {}, run_teardown, flags=("wait",), exit_now=exit_now)
