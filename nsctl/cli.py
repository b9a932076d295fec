"""The command line: a thin layer that parses options, calls the library, maps errors to exit codes.

Exit codes (see ``errors.Exit``): 0 success, 1 failure or invalid configuration, 2 bad usage.
In Slurm a non-zero Prolog or Epilog drains the node.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import click

from . import __version__, config
from .errors import Exit, NsctlError


def _config_option(func):
    return click.option(
        "--config",
        "config_file",
        metavar="PATH",
        help="namespace.yaml or job_container.conf to use [default: $NSCTL_CONFIG, else "
        "namespace.yaml beside $SLURM_CONF (or in /etc/slurm), else job_container.conf there].",
    )(func)


def _format_in_option(func):
    return click.option(
        "--format-in",
        type=click.Choice(list(config.FORMATS)),
        help="The file's format: yaml (namespace.yaml) or tmpfs (job_container.conf) "
        "[default: by the file name, tmpfs for a name ending in .conf].",
    )(func)


def _check_version(ctx, param, value: Optional[str]) -> Optional[str]:
    if value is not None:
        from .jcconf import parse_version

        try:
            parse_version(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _slurm_version_option(func):
    return click.option(
        "--slurm-version",
        metavar="VERSION",
        callback=_check_version,
        help="For a job_container.conf: also refuse what this Slurm release (e.g. 22.05 or "
        "22.05.8) reads differently from nsctl [default: none, the newest reading].",
    )(func)


def _format_of(path: str, format_in: Optional[str], slurm_version: Optional[str]) -> str:
    fmt = config.config_format(path, format_in)
    if slurm_version and fmt != config.TMPFS:
        raise click.UsageError("--slurm-version applies to a job_container.conf only")
    return fmt


def _node_option(func):
    return click.option(
        "--node",
        metavar="NAME",
        help="Slurm node name [default: $SLURMD_NODENAME, else the short hostname].",
    )(func)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NsctlError as exc:
            click.echo(f"nsctl: error: {exc}", err=True)
            ctx.exit(Exit.FAILURE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nsctl")
def main() -> None:
    """Per-job private /tmp, /dev/shm, PID and user namespaces for Slurm.

    nsctl reads Slurm's namespace.yaml, or a job_container.conf (namespace/tmpfs, formerly
    job_container/tmpfs). Slurm's Prolog and Epilog run `nsctl setup` and
    `nsctl teardown` through the lighter entry points nsctl-prolog and nsctl-epilog
    (contrib/slurm); see nsctl(8) and namespace.yaml(5).
    """


# ---------------------------------------------------------------------------------------------
# validate


def _report_nodes(nodes: Optional[str], env) -> tuple[list[str], str]:
    import hostlist

    if nodes:
        try:
            return hostlist.expand_hostlist(nodes), "--nodes"
        except hostlist.BadHostlist as exc:
            raise click.BadParameter(
                f"bad hostlist {nodes!r}: {exc}", param_hint="--nodes"
            ) from None
    slurm_conf = env.get("SLURM_CONF")
    names = [name for names, _ in config.slurm_conf_nodes(slurm_conf) for name in names]
    return names, (slurm_conf if names else "")


@main.command()
@click.argument("file", required=False, metavar="[FILE]")
@_config_option
@click.option(
    "--nodes",
    metavar="HOSTLIST",
    help="Report what each of these nodes resolves to "
    "[default: the NodeName lines of $SLURM_CONF, when readable].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@_format_in_option
@_slurm_version_option
def validate(
    file: Optional[str],
    config_file: Optional[str],
    nodes: Optional[str],
    fmt: str,
    format_in: Optional[str],
    slurm_version: Optional[str],
):
    """Check a namespace.yaml or job_container.conf strictly and report what each node gets.

    Every problem is reported at once as FILE:LINE:COLUMN: KEY.PATH: MESSAGE (for a
    job_container.conf FILE:LINE: LINE'S FIRST KEY: MESSAGE). Exits 0 when the file is valid
    (warnings allowed), 1 when it is not, 2 on a usage error.
    """
    if file and config_file:
        raise click.UsageError("give the file either as an argument or with --config, not both")
    path = config.config_path(file or config_file)
    file_format = _format_of(path, format_in, slurm_version)
    node_names, source = _report_nodes(nodes, os.environ)
    if file_format == config.TMPFS:
        from . import jcconf as checker

        version = checker.parse_version(slurm_version) if slurm_version else None
        checked = checker.check_file(path, slurm_version=version, nodes=node_names)
    else:
        from . import validate as checker

        checked = checker.check_file(path)
    report = None
    if checked.valid:
        hostnames = config.slurm_node_hostnames(os.environ.get("SLURM_CONF"))
        report = checker.node_report(checked.data, node_names, hostnames)

    if fmt == "json":
        result = {
            "file": path,
            "valid": checked.valid,
            "errors": [i.as_dict() for i in checked.errors],
            "warnings": [i.as_dict() for i in checked.warnings],
            "node_source": source or None,
            "report": report.as_dict() if report else None,
        }
        click.echo(json.dumps(result, indent=2))
    else:
        for issue in checked.issues:
            click.echo(str(issue))
        summary = f"{path}: {'valid' if checked.valid else 'invalid'}"
        counts = [f"{len(checked.errors)} error(s)"] if checked.errors else []
        counts += [f"{len(checked.warnings)} warning(s)"] if checked.warnings else []
        click.echo(summary + (f" ({', '.join(counts)})" if counts else ""))
        if report:
            _echo_report(report, source, file_format)
    sys.exit(Exit.OK if checked.valid else Exit.FAILURE)


def _echo_report(report, source: str, file_format: str = config.YAML) -> None:
    if report.groups:
        click.echo(f"\nNodes (from {source}):")
        width = max(len(g["nodes"]) for g in report.groups)
        for group in report.groups:
            entry = group["entry"] or "(no entry)"
            what = (
                f"base_path {group['base_path']}"
                if group["enabled"]
                else f"nsctl disabled: {group['reason']}"
            )
            click.echo(f"  {group['nodes']:<{width}}  {entry:<15} {what}")
        for item in report.multiple:
            click.echo(
                f"  note: {item['nodes']} matched by {', '.join(item['entries'])}; "
                f"only {item['applies']} applies"
            )
        if report.unused:
            click.echo(f"  note: no listed node uses {', '.join(report.unused)}")
    for item in report.shadowed:
        if file_format == config.TMPFS:
            click.echo(
                f"warning: {item['entry']} has no effect: later lines set every key it sets, "
                f"on all of its nodes ({item['nodes']})"
            )
            continue
        click.echo(
            f"warning: {item['entry']} can never apply: earlier entries already match all of "
            f"its nodes ({item['nodes']})"
        )


# ---------------------------------------------------------------------------------------------
# show-config


def _explained_yaml(data: dict, origins: dict) -> str:
    import yaml

    lines = []
    for key, value in data.items():
        text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False).rstrip()
        origin = origins.get(key)
        if origin:
            first, _, rest = text.partition("\n")
            text = f"{first}  # {origin}" + (f"\n{rest}" if rest else "")
        lines.append(text)
    return "\n".join(lines)


@main.command("show-config")
@_config_option
@_node_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Show where each value came from (defaults, node_confs[i], a job_container.conf "
    "line, built-in default).",
)
@_format_in_option
@_slurm_version_option
def show_config(
    config_file: Optional[str],
    node: Optional[str],
    fmt: str,
    explain: bool,
    format_in: Optional[str],
    slurm_version: Optional[str],
):
    """Show the configuration one node resolves to, every default made explicit."""
    from .loader import load_node_config

    path = config.config_path(config_file)
    file_format = _format_of(path, format_in, slurm_version)
    resolved = load_node_config(
        path, config.node_name(node), fmt=file_format, slurm_version=slurm_version
    )
    data = config.to_dict(resolved)
    origins = dict(resolved.origins)
    if fmt == "json":
        out = {"config": data, "origins": origins} if explain else data
        click.echo(json.dumps(out, indent=2))
    elif explain:
        click.echo(_explained_yaml(data, origins))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    if not resolved.enabled:
        click.echo(f"nsctl is disabled on {resolved.node}: {resolved.disabled_reason}", err=True)


# ---------------------------------------------------------------------------------------------
# convert


@main.command()
@click.argument("file", metavar="FILE")
@click.option(
    "--format-in",
    type=click.Choice([config.TMPFS]),
    help="The file's format: tmpfs (job_container.conf) [default: by the file name].",
)
def convert(file: str, format_in: Optional[str]):
    """Print the namespace.yaml that gives every node what a job_container.conf gives it.

    Each value carries a comment naming the line it came from. A file that is not valid, or
    that says what namespace.yaml cannot say the same way, is refused (exit 1) with the reason.
    """
    from . import jcconf
    from .convert import convert as converted

    if config.config_format(file, format_in) != config.TMPFS:
        raise click.UsageError(
            f"{file} is not a job_container.conf by its name: give --format-in tmpfs if it is one"
        )
    checked = jcconf.check_file(file)
    if not checked.valid:
        for issue in checked.issues:
            click.echo(str(issue), err=True)
        raise NsctlError(f"{file} is not valid ({len(checked.errors)} error(s)): nothing converted")
    for issue in checked.warnings:
        click.echo(str(issue), err=True)
    click.echo(converted(checked.data, os.path.basename(file)), nl=False)


# ---------------------------------------------------------------------------------------------
# setup / teardown / join


def _job_options(func):
    for option in reversed(
        [
            click.option("--job-id", metavar="ID", help="Job id [default: $SLURM_JOB_ID]."),
            click.option("--uid", metavar="UID", help="Job user id [default: $SLURM_JOB_UID]."),
            click.option("--gid", metavar="GID", help="Job group id [default: $SLURM_JOB_GID]."),
            click.option("--user", metavar="NAME", help="Job user [default: $SLURM_JOB_USER]."),
        ]
    ):
        func = option(func)
    return func


def _verbose_option(func):
    return click.option("-v", "--verbose", is_flag=True, help="Log every step.")(func)


def _check_holder(path: Optional[str]) -> Optional[str]:
    from .hooks import holder_problem

    problem = path and holder_problem(path)
    if problem:
        raise click.BadParameter(problem, param_hint="--holder")
    return path


@main.command()
@_config_option
@_node_option
@_job_options
@click.option("--dry-run", is_flag=True, help="Print every step setup would take; change nothing.")
@click.option(
    "--on-error",
    type=click.Choice(["fail", "ignore"]),
    default="fail",
    show_default=True,
    help="fail: exit 1, so the job does not start (a failing Prolog drains the node). "
    "ignore: log the "
    "failure and exit 0, so the job runs without isolation.",
)
@click.option(
    "--holder",
    metavar="PATH",
    help="Use this holder program for PID namespaces "
    "(the small C holder from contrib/slurm/holder) instead of a minimal Python one.",
)
@_verbose_option
def setup(config_file, node, job_id, uid, gid, user, dry_run, on_error, holder, verbose):
    """Build a job's namespaces and private mounts (run from the Prolog).

    Every step is undone when one fails. A job that is already set up is left as it is; what an
    earlier run of the same job id left behind is cleaned first. Exits 0 when nsctl is disabled
    on this node.
    """
    from .hooks import run_setup

    holder = _check_holder(holder)
    sys.exit(
        run_setup(
            config_file,
            node,
            job_id,
            uid,
            gid,
            user,
            dry_run,
            on_error,
            holder,
            verbose,
            click.echo,
        )
    )


@main.command()
@_config_option
@_node_option
@click.option("--job-id", metavar="ID", help="Job id [default: $SLURM_JOB_ID].")
@click.option("--dry-run", is_flag=True, help="Print what teardown would do; change nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="Delete the job's files before returning [default: move them aside and delete them in "
    "a detached process, so the Epilog returns at once].",
)
@_verbose_option
def teardown(config_file, node, job_id, dry_run, wait, verbose):
    """Destroy a job's namespaces and delete its files (run from the Epilog).

    Safe (never follows a symlink or crosses a mount) and idempotent: a job that never existed,
    was half set up or is already gone succeeds. Exits 1 when something had to be left behind.
    With an invalid or missing config it tears down from the runtime index alone.
    """
    from .hooks import run_teardown

    sys.exit(run_teardown(config_file, node, job_id, dry_run, verbose, click.echo, wait))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--job-id", metavar="ID", help="Job id [default: $SLURM_JOB_ID].")
@click.option("--as-user", is_flag=True, help="Drop to the job's uid, gid and groups first.")
@_config_option
@_node_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD [ARGS]...]")
def join(job_id, as_user, config_file, node, command):
    """Run a command inside a job's namespaces (root only).

    CMD defaults to the caller's login shell, else /bin/sh. It never gets the caller's terminal:
    it runs in a new session, on a new pseudo-terminal that join relays when the caller has a
    terminal, with no controlling terminal otherwise. The exit status is CMD's; a command killed
    by signal N exits 128+N. A job without nsctl namespaces that Slurm's own namespace/linux
    plugin made (found from the config and the node name) is joined too.
    """
    import pwd

    from . import join as joiner
    from .layout import check_job_id

    job_id = check_job_id(job_id or os.environ.get("SLURM_JOB_ID"))
    argv = list(command)
    if not argv:
        try:
            argv = [pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"]
        except KeyError:
            argv = ["/bin/sh"]
    sys.exit(joiner.join(job_id, argv, as_user, config_file, node))


# ---------------------------------------------------------------------------------------------
# status / gc


def _optional_config(config_file: Optional[str], node: Optional[str]):
    """This node's resolved config, or None (with a warning) when there is no valid one:
    status and gc still see what the runtime index names."""
    from .errors import ConfigError
    from .loader import load_node_config

    try:
        return load_node_config(config.config_path(config_file), config.node_name(node))
    except ConfigError as exc:
        first = str(exc).splitlines()[0]
        click.echo(f"nsctl: warning: {first}; only what the runtime index names is seen", err=True)
        return None


def _size(value: Optional[int]) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "?"  # pragma: no cover


def _age(started: Optional[float]) -> str:
    import time

    if started is None:
        return "?"
    seconds = max(0, int(time.time() - started))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s"


@main.command()
@_config_option
@_node_option
@click.option("--job-id", metavar="ID", help="Only this job.")
@click.option(
    "--usage", is_flag=True, help="Measure each private directory's size and file count (walks it)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
def status(config_file, node, job_id, usage, fmt):
    """Show every job namespace on this node (root).

    One line per job: id, state (live, holder dead, half-built, orphan, deleting), user, holder
    pid, age, the namespaces bound now, and the private directories (with --usage, their size
    and file count). Jobs of Slurm's own namespace/linux plugin are listed too. Exits 1 when
    --job-id names a job that has nothing on this node.
    """
    import time

    from . import inventory
    from .layout import check_job_id

    if job_id is not None:
        job_id = check_job_id(job_id)
    resolved = _optional_config(config_file, node)
    records = inventory.inventory(resolved, job_id)
    if usage:
        records = [inventory.with_usage(r) for r in records]
    if fmt == "json":
        jobs = []
        for record in records:
            data = record.as_dict()
            data["age_seconds"] = (
                None if record.started is None else round(time.time() - record.started, 1)
            )
            jobs.append(data)
        node_name = resolved.node if resolved else config.node_name(node)
        click.echo(json.dumps({"node": node_name, "jobs": jobs}, indent=2))
    else:
        rows = [("JOB", "STATE", "USER", "HOLDER", "AGE", "NAMESPACES", "DIRS")]
        for r in records:
            dirs = ", ".join(
                d.path if not usage else f"{d.path} {_size(d.bytes)}/{d.files or 0} files"
                for d in r.dirs
            )
            if r.deleting and not r.job_dir:
                dirs = ", ".join(r.deleting)
            owner = r.user or "?"
            rows.append(
                (
                    r.job_id + ("" if r.made_by == "nsctl" else " (slurm)"),
                    r.state,
                    owner,
                    str(r.holder_pid or "-"),
                    _age(r.started),
                    ",".join(r.namespaces) or "-",
                    dirs or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        for row in rows:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[6])
    if job_id is not None and not records:
        raise NsctlError(f"job {job_id} has no namespace on this node")


@main.command()
@_config_option
@_node_option
@click.option("--dry-run", is_flag=True, help="Say what would be collected; change nothing.")
@click.option(
    "--no-slurm", is_flag=True, help="Do not ask Slurm (squeue) which jobs run on this node."
)
@_verbose_option
def gc(config_file, node, dry_run, no_slurm, verbose):
    """Collect what crashes and reboots left on this node (root).

    Removes nsctl's job directories that belong to no running job (running clone_ns_epilog for
    them), stale index entries, and deletions a reboot interrupted; never a live job's, one
    Slurm runs here, one still mounted in some process's namespace, or a directory without
    nsctl's mark. Run it at boot, before slurmd starts (see nsctl(8)). Exits 1 when something
    could not be removed.
    """
    from . import gc as collector
    from .log import job_logger

    if os.geteuid() != 0 and not dry_run:
        raise NsctlError("gc needs root")
    resolved = _optional_config(config_file, node)
    log = job_logger(None, verbose)
    leftovers = collector.collect(resolved, log, dry_run, not no_slurm, click.echo)
    if leftovers:
        raise NsctlError(f"left behind: {', '.join(leftovers)}")


@main.command()
def demo():
    """Show nsctl at work on an embedded example (root).

    Sets up job 4242 for user nobody, writes a file in its private /tmp as that user, shows
    that the host cannot see it, and tears the job down. Runs in a private mount namespace, so
    nothing can be left mounted on the host. Exits 0 when every check passed.
    """
    from . import demo as the_demo

    sys.exit(the_demo.run(click.echo))
