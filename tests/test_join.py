"""nsctl join on a real job, from a real terminal (root, sandboxed; issue 8, findings 1 and 7).

The test plays the admin's terminal: a pty whose slave is the controlling terminal of a root
shell (/bin/sh, the session leader, as a login shell is) that runs ``nsctl join``. The test holds
the master, as a terminal emulator or sshd does, and a descriptor of the slave of its own, from
which it reads what the root shell would read next. The job's programs run as the real
unprivileged user nobody (``--as-user``) on the system Python.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Optional

import pytest
from sandbox import holder_pid, proc_stat, proc_state

from nsctl import relay

JOB_PYTHON = "/usr/bin/python3"
NOBODY = 65534
CONFIGS = {
    "pid": "  clone_ns_flags: [CLONE_NEWPID]\n",
    "pid+user": "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]\n",
}
BASE = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
"""

# The job's side of every check: one JSON line describing what the command got.
REPORT = r"""
import json, os, sys
def field(name):
    with open("/proc/self/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[{"session": 3, "tty_nr": 4}[name]])
def dev_tty():
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        return "opened"
    except OSError as exc:
        return exc.errno
def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
print(json.dumps({
    "pid": os.getpid(), "session": field("session"), "tty_nr": field("tty_nr"),
    "dev_tty": dev_tty(), "isatty": [os.isatty(fd) for fd in (0, 1, 2)],
    "stdin_owner": os.fstat(0).st_uid, "fds": [fd for fd in range(3, 1024) if is_open(fd)],
}), flush=True)
"""


def nsctl(*args, **kwargs) -> subprocess.CompletedProcess:
    """nsctl without a terminal (not even the one pytest may have been started from)."""
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "nsctl", *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def join_command(job_id: str, code: str, *args: str, as_user: bool = True) -> str:
    """The shell command line that runs Python ``code`` in the job through nsctl join."""
    flags = ["--as-user"] if as_user else []
    argv = [sys.executable, "-m", "nsctl", "join", "--job-id", job_id, *flags, "--"]
    return shlex.join([*argv, JOB_PYTHON, "-c", code, *args])


def as_nobody(code: str, *args: str) -> str:
    """The same program run the way join used to: a plain child in root's session, as nobody."""
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    return shlex.join([*drop, JOB_PYTHON, "-c", code, *args])


def _take_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """The admin's terminal, and the root shell on it."""

    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.output = b""
        self.shell: Optional[subprocess.Popen] = None

    def close(self) -> None:
        if self.shell and self.shell.poll() is None:
            self.shell.kill()
            self.shell.wait()
        os.close(self.master)
        os.close(self.slave)

    def resize(self, rows: int, cols: int) -> None:
        """What a terminal emulator does when its window changes (the kernel sends SIGWINCH)."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def run(self, command: str) -> subprocess.Popen:
        """``sh -c COMMAND`` as the session leader on this terminal, as root's login shell is."""
        self.shell = subprocess.Popen(
            ["/bin/sh", "-c", command + "; exit $?"],  # no exec: the shell stays the leader
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
            preexec_fn=_take_controlling_tty,
        )
        return self.shell

    def _read(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        self.output += os.read(self.master, 65536)
        return True

    def expect(self, text: str, timeout: float = 30) -> str:
        """Everything shown so far, once ``text`` has been."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never shown: {text!r}; the terminal shows {self.output!r}")
            self._read(left)
        return self.output.decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 60) -> int:
        """The shell's exit status, i.e. join's; reads the screen meanwhile so nothing blocks."""
        deadline = time.monotonic() + timeout
        while self.shell.poll() is None:
            assert time.monotonic() < deadline, f"still running; shown: {self.output!r}"
            self._read(0.05)
        while self._read(0):
            pass
        return self.shell.returncode

    def report(self) -> dict:
        """The REPORT line the job's command printed."""
        line = next(x for x in self.output.splitlines() if x.startswith(b'{"pid"'))
        return json.loads(line)

    def attrs(self) -> list:
        return termios.tcgetattr(self.slave)

    def pending_input(self) -> bytes:
        """What the root shell reads next: everything in the terminal's input queue."""
        saved = termios.tcgetattr(self.slave)
        raw = termios.tcgetattr(self.slave)
        raw[3] &= ~(termios.ICANON | termios.ECHO)
        raw[6][termios.VMIN], raw[6][termios.VTIME] = 0, 0
        termios.tcsetattr(self.slave, termios.TCSANOW, raw)
        try:
            data = b""
            while True:
                chunk = os.read(self.slave, 4096)
                if not chunk:
                    return data
                data += chunk
        finally:
            termios.tcsetattr(self.slave, termios.TCSANOW, saved)


@pytest.fixture
def terminal():
    term = Terminal()
    yield term
    term.close()


@pytest.fixture(params=sorted(CONFIGS))
def job(request, lab):
    """A real job of user nobody, set up and torn down by nsctl itself."""
    lab.write_config(BASE + CONFIGS[request.param])
    job_id = "2601"
    ok(nsctl("setup", "--job-id", job_id, "--user", "nobody"))
    try:
        yield job_id
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", job_id))
    assert lab.job_files() == [] and lab.index_entries() == []


def job_tmp(lab, job_id: str) -> str:
    """The job's private /tmp, seen from the host."""
    return os.path.join(lab.base, job_id, f".{job_id}", "_tmp")


def job_processes(lab, job_id: str) -> list[int]:
    """Host pids of the processes in the job's PID namespace."""
    ns = os.stat(os.path.join(lab.base, job_id, ".ns", "pid"))
    found = []
    for name in os.listdir("/proc"):
        try:
            st = os.stat(f"/proc/{name}/ns/pid")
        except (OSError, ValueError):
            continue
        same = (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino)
        if same and proc_state(int(name)) not in (None, "Z"):
            found.append(int(name))
    return found


def test_this_kernel_lets_tiocsti_inject_so_these_tests_can_fail():
    with open("/proc/sys/dev/tty/legacy_tiocsti", encoding="ascii") as handle:
        assert handle.read().strip() == "1"


# ---------------------------------------------------------------------------------------------
# Finding 1: root's terminal


INJECT = r"""
import fcntl, os, termios
for fd in (0, os.open("/dev/tty", os.O_RDWR)):
    try:
        for key in b"id # typed by the job\n":
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([key]))
        print("injected", fd, flush=True)
    except OSError as exc:
        print("refused", fd, exc.errno, flush=True)
"""


@pytest.mark.parametrize("via", ["nsctl join", "shared terminal"])
def test_tiocsti_from_the_job_reaches_nothing_of_the_callers(lab, terminal, via):
    """The job user's code pushes a command line into its terminal, on its stdin and on
    /dev/tty. Through join it lands in the command's own pty; the control, the same program
    sharing root's terminal (as join used to run it), does inject into root's shell."""
    lab.write_config(BASE + CONFIGS["pid"])
    ok(nsctl("setup", "--job-id", "2611", "--user", "nobody"))
    try:
        before = terminal.attrs()
        command = join_command("2611", INJECT) if via == "nsctl join" else as_nobody(INJECT)
        terminal.run(command)
        assert terminal.wait() == 0, terminal.output
        assert terminal.attrs() == before
        if via == "nsctl join":
            assert terminal.pending_input() == b""
            # The keys went into the command's own terminal; only its echo was shown.
            assert "injected 0" in terminal.expect("injected 3")
        else:
            assert terminal.pending_input() == b"id # typed by the job\n" * 2
    finally:
        ok(nsctl("teardown", "--wait", "--job-id", "2611"))


READER = r"""
import os, sys, time
path = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    with open(path, "wb", buffering=0) as out:
        out.write(b"started\n")
        while True:
            try:
                keys = os.read(0, 100)
            except OSError:
                keys = b""
            if not keys:
                break
            out.write(keys)
        out.write(b"hung up\n")
    os._exit(0)
while not os.path.exists(path):
    time.sleep(0.01)
print("left a reader behind", flush=True)
"""


@pytest.mark.parametrize("via", ["nsctl join", "shared terminal"])
def test_a_background_reader_left_by_the_job_cannot_read_what_root_types_next(lab, terminal, via):
    lab.write_config(BASE + CONFIGS["pid"])
    ok(nsctl("setup", "--job-id", "2612", "--user", "nobody"))
    reader_pid = None
    try:
        if via == "nsctl join":
            terminal.run(join_command("2612", READER, "/tmp/stolen"))
            stolen = os.path.join(job_tmp(lab, "2612"), "stolen")
        else:
            os.makedirs(os.path.join(lab.dir, "shared"), mode=0o777)
            os.chmod(os.path.join(lab.dir, "shared"), 0o777)
            stolen = os.path.join(lab.dir, "shared", "stolen")
            terminal.run(as_nobody(READER, stolen))
        assert terminal.wait() == 0, terminal.output
        terminal.expect("left a reader behind")
        if via == "nsctl join":
            # join hung up the command's terminal on its way out: the reader saw the end.
            wait_for(stolen, b"hung up")
            terminal.type(b"secret\n")  # root types at its shell
            time.sleep(0.2)
            assert pathlib.Path(stolen).read_bytes() == b"started\nhung up\n"
            assert terminal.pending_input() == b"secret\n"
            assert job_processes(lab, "2612") == [holder_pid(lab.run, "2612")]
        else:
            # Orphaned to this process (a subreaper) when its parent exited.
            reader_pid = next(p for p in children_of(os.getpid()) if _cmdline_has(p, stolen))
            terminal.type(b"secret\n")
            wait_for(stolen, b"secret")
    finally:
        if reader_pid:
            os.kill(reader_pid, signal.SIGKILL)
            os.waitpid(reader_pid, 0)
        ok(nsctl("teardown", "--wait", "--job-id", "2612"))


def wait_for(path: str, data: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while data not in pathlib.Path(path).read_bytes():
        assert time.monotonic() < deadline, pathlib.Path(path).read_bytes()
        time.sleep(0.02)


def _cmdline_has(pid: int, word: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return word.encode() in handle.read().split(b"\0")
    except OSError:
        return False


def children_of(parent: int) -> list[int]:
    """Live children of ``parent`` (processes come and go while /proc is read)."""
    found = []
    for name in os.listdir("/proc"):
        fields = proc_stat(int(name)) if name.isdigit() else None
        if fields and int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(name))
    return found


@pytest.mark.parametrize("as_user", [True, False], ids=["as-user", "root"])
def test_the_command_gets_its_own_session_pty_and_nothing_else_of_the_callers(
    lab, job, terminal, as_user
):
    # fd 5: one more descriptor of root's terminal, as a shell may leave open.
    shows_its_tty = "echo \"root's tty_nr $(cut -d' ' -f7 /proc/$$/stat)\"; "
    terminal.run(shows_its_tty + join_command(job, REPORT, as_user=as_user) + " 5<>/dev/tty")
    assert terminal.wait() == 0, terminal.output
    roots_tty = int(terminal.expect("root's tty_nr").split("root's tty_nr ")[1].split()[0])
    assert roots_tty == os.fstat(terminal.slave).st_rdev
    seen = terminal.report()
    assert seen["session"] == seen["pid"]  # a session of its own, not root's
    assert seen["tty_nr"] != 0 and seen["dev_tty"] == "opened"  # a terminal, but...
    assert seen["tty_nr"] != roots_tty  # ...not root's
    assert seen["isatty"] == [True, True, True]
    assert seen["fds"] == []  # fd 5 did not follow
    assert seen["stdin_owner"] == (NOBODY if as_user else 0)


def test_the_command_ignores_no_signal_and_keeps_the_callers_mask(lab, job):
    """nsctl's Python ignores SIGPIPE and SIGXFSZ, which exec would hand down; a mask blocking
    SIGCHLD (as some daemons pass on) must not make join wait forever, nor be lost."""
    blocked = {signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1}
    result = nsctl(
        "join", "--job-id", job, "--as-user", "--", "grep", "-E", "^Sig(Ign|Blk):",
        "/proc/self/status",
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, blocked),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    masks = {line.split()[0]: int(line.split()[1], 16) for line in result.stdout.splitlines()}
    assert masks == {"SigBlk:": sum(1 << (sig - 1) for sig in blocked), "SigIgn:": 0}


def test_the_window_size_follows_the_callers(lab, job, terminal):
    code = r"""
import fcntl, signal, struct, sys, termios
def size():
    return struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]
signal.signal(signal.SIGWINCH, lambda *_: print("resized to %d %d" % size(), flush=True))
print("size %d %d" % size(), flush=True)
sys.stdin.readline()
"""
    terminal.run(join_command(job, code))
    terminal.expect("size 24 80")
    terminal.resize(50, 132)
    terminal.expect("resized to 50 132")
    terminal.type(b"\r")
    assert terminal.wait() == 0


def test_keys_reach_the_command_and_the_callers_terminal_is_raw_meanwhile(lab, job, terminal):
    code = "import sys; print('ready', flush=True); print('got', repr(sys.stdin.readline()))"
    before = terminal.attrs()
    terminal.run(join_command(job, code))
    terminal.expect("ready")
    during = terminal.attrs()
    assert not during[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
    terminal.type(b"hello\x7f!\r")  # the command's own terminal does the line editing
    assert terminal.wait() == 0
    assert "got 'hell!\\n'" in terminal.expect("got")
    assert terminal.attrs() == before


SELF_KILL = "import os, signal; os.kill(os.getpid(), signal.SIG{})"


@pytest.mark.parametrize(
    "code, status",
    [
        ("raise SystemExit(7)", 7),
        (SELF_KILL.format("TERM"), 128 + signal.SIGTERM),
        (SELF_KILL.format("KILL"), 128 + signal.SIGKILL),
    ],
    ids=["exit-7", "SIGTERM", "SIGKILL"],
)
def test_exit_status_passes_through_and_the_terminal_is_restored(lab, job, terminal, code, status):
    before = terminal.attrs()
    terminal.run(join_command(job, code))
    assert terminal.wait() == status
    assert terminal.attrs() == before
    # Without a terminal the same statuses.
    assert nsctl("join", "--job-id", job, "--as-user", "--", JOB_PYTHON, "-c", code).returncode == (
        status
    )


def test_a_signal_to_join_goes_to_the_command_and_the_terminal_is_restored(lab, job, terminal):
    code = "import time; print('waiting', flush=True); time.sleep(60)"
    before = terminal.attrs()
    shell = terminal.run(join_command(job, code))
    terminal.expect("waiting")
    assert terminal.attrs() != before  # raw while the command runs
    (joiner,) = children_of(shell.pid)
    os.kill(joiner, signal.SIGTERM)
    assert terminal.wait() == 128 + signal.SIGTERM
    assert terminal.attrs() == before
    assert "Traceback" not in terminal.output.decode(errors="replace")


@pytest.mark.parametrize(
    "redirect",
    ["< pipe > file", "< pipe > terminal", "< terminal > file"],
)
def test_stdio_without_a_terminal_is_passed_on_and_never_root_s_terminal(
    lab, job, terminal, redirect
):
    stdin, stdout = redirect.split()[1], redirect.split()[3]
    code = "import sys; line = sys.stdin.readline()\n" + REPORT + "print('read', repr(line))\n"
    command = join_command(job, code)
    out = os.path.join(lab.dir, "out")
    if stdin == "pipe":
        command = "printf 'hello\\n' | " + command
    else:
        terminal.type(b"hello\r")  # typed ahead: stays queued until the command reads it
    if stdout == "file":
        command += f" > {out} 2>&1"
    terminal.run(command)
    assert terminal.wait() == 0, terminal.output
    if stdout == "file":
        with open(out, "rb") as handle:
            shown = handle.read()
        assert b"\r" not in shown  # the file got the command's output as written, no tty in between
        terminal.output = shown
    seen = terminal.report()
    assert "read 'hello\\n'" in terminal.output.decode()
    assert seen["session"] == seen["pid"]
    if redirect == "< pipe > file":
        # No terminal at all: none to the command either, and /dev/tty leads nowhere.
        assert seen["tty_nr"] == 0 and seen["dev_tty"] == errno.ENXIO
        assert seen["isatty"] == [False, False, False]
    else:
        assert seen["tty_nr"] not in (0, os.fstat(terminal.slave).st_rdev)
        assert seen["isatty"] == [stdin == "terminal", stdout == "terminal", stdout == "terminal"]
    assert terminal.pending_input() == b""


def test_without_any_terminal_the_command_has_no_controlling_terminal(lab, job):
    result = nsctl(
        "join", "--job-id", job, "--as-user", "--", JOB_PYTHON, "-c",
        "import sys; line = sys.stdin.readline()\n" + REPORT + "print('read', repr(line))\n",
        input="hello\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[0])
    assert seen["tty_nr"] == 0 and seen["dev_tty"] == errno.ENXIO
    assert seen["session"] == seen["pid"]
    assert "read 'hello\\n'" in result.stdout


def test_the_man_page_names_the_signals_join_passes_on():
    page = pathlib.Path(__file__).resolve().parent.parent / "man" / "nsctl.8"
    names = ", ".join(sig.name[3:] for sig in relay.FORWARDED)
    assert f"receives ({names}) are passed on to the command's process group" in page.read_text()


# ---------------------------------------------------------------------------------------------
# Finding 7: a job whose holder died


def test_join_into_a_job_whose_holder_died_says_so(lab, job):
    holder = holder_pid(lab.run, job)
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)  # orphaned to this process, a subreaper
    result = nsctl("join", "--job-id", job, "--as-user", "--", "/bin/true")
    assert result.returncode == 1
    assert result.stderr == (
        f"nsctl: error: job {job}: its PID namespace is gone (its holder, PID {holder}, "
        "died); nothing can join the job any more, only teardown can clean it up\n"
    )
