"""Run a site script (init_script, clone_ns_script, ...) the way Slurm does, but never hang.

The environment is exactly the given variables (no PATH, no HOME), stdin is /dev/null, the script
runs in a new session so its whole process group can be killed at the time limit, and its output
goes to an unlinked temporary file (not a pipe: a background child that keeps a pipe open would
block us past the limit) that is then copied into nsctl's log.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py makes enums, an import each Prolog pays
import os
import time

from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .log import Log

GRACE = 0.5  # seconds between SIGTERM and SIGKILL of a timed-out script's process group
LOG_LIMIT = 64 * 1024  # bytes of a script's output that reach the log; the rest is counted


class ScriptResult(Record):
    ok: bool
    detail: str  # "exit status 3", "killed by signal 9", "timed out after 10 s", ...


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(GRACE if sig == signal.SIGTERM else 0)


def run_script(
    name: str, path: str, env: Mapping[str, str], timeout: float, log: Log
) -> ScriptResult:
    if not os.path.isabs(path):
        return ScriptResult(False, f"{path} is not an absolute path")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return ScriptResult(False, f"{path} is not an executable file")
    # Imported here: together ~13 ms of every setup and teardown, and most sites run no script.
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                [path],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        except OSError as exc:
            return ScriptResult(False, f"cannot run {path}: {exc.strerror}")
        try:
            status = proc.wait(timeout=timeout if timeout > 0 else None)
            result = ScriptResult(
                status == 0,
                f"exit status {status}" if status >= 0 else f"killed by signal {-status}",
            )
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            result = ScriptResult(False, f"timed out after {timeout:g} s; process group killed")
        except BaseException:
            # nsctl itself was interrupted (SIGTERM from slurmd): its rollback must not leave
            # the script's session running behind it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            raise
        # A clean exit still leaves no stragglers behind in its group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        size = output.seek(0, os.SEEK_END)
        output.seek(0)
        for line in output.read(LOG_LIMIT).decode(errors="replace").splitlines():
            log.info("%s: %s", name, line)
        if size > LOG_LIMIT:
            log.warning("%s: %d more bytes of output not logged", name, size - LOG_LIMIT)
    return result
