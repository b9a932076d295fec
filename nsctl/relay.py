"""The terminal of ``nsctl join``: the command never gets the caller's.

What ``join`` runs belongs to the job (with ``--as-user`` it is the job user's own code, their
~/.bashrc for a start). Given the caller's terminal as its controlling tty it could push
keystrokes into it with TIOCSTI, which root's shell runs once join returns, and a background
process it leaves behind could keep reading what root types next. So, the way ``su --pty`` and
sudo's ``use_pty`` do it:

* the command always starts a new session, so the caller's terminal is never its controlling
  terminal, whether the caller has one or not;
* when any of the caller's stdin, stdout and stderr is a terminal, the command gets a new
  pseudo-terminal (from the caller's /dev/ptmx, opened before join enters the job's mount
  namespace) as its controlling terminal and in place of each of those descriptors; pipes and
  files are passed on as they are. nsctl keeps the master, outside the job, and relays: the
  caller's terminal (in raw mode, restored on every way out) to the pty, the pty to the caller's
  stdout (or stderr), window size changes as TIOCSWINSZ. When the command exits, closing the
  master hangs up whatever it left holding the pty;
* the command keeps no other descriptor of nsctl's.

Signals arrive through a wakeup pipe, so none is lost between two selects.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import termios
import tty
from typing import Optional

# Passed on to the command's process group; SIGWINCH becomes TIOCSWINSZ on the pty instead.
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
)
_HANDLED = (*FORWARDED, signal.SIGWINCH, signal.SIGCHLD)
# Python ignores these, and an ignored signal stays ignored across exec.
_IGNORED_BY_PYTHON = (signal.SIGPIPE, signal.SIGXFSZ)

# Once the command has exited: what it wrote may still be on its way through the pty. Read until
# the pty says nobody holds it (EIO), it was quiet this long, or this much came.
DRAIN_QUIET = 0.2
DRAIN_MAX = 1 << 20


def _read(fd: int) -> Optional[bytes]:
    """What is there; b"" when the other side is gone (EOF, EIO); None when nothing is, yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Relay:
    """The command's stdin, stdout and stderr, and the relay that serves them.

    Made before join enters the job (the pty comes from the caller's devpts). Use as a context
    manager around fork: ``child_side()`` in the child, ``run(child)`` in the parent.
    """

    def __init__(self, owner: Optional[int] = None) -> None:
        self.ttys = [fd for fd in (0, 1, 2) if os.isatty(fd)]
        self.master: Optional[int] = None
        self.slave: Optional[int] = None
        self._out = next((fd for fd in (1, 2) if fd in self.ttys), None)
        self._saved: Optional[list] = None  # the caller's termios while stdin is raw
        self._old_handlers: dict = {}
        self._old_mask: set = set()
        self._old_wakeup = -1
        self._wake: tuple[int, int] = (-1, -1)
        if not self.ttys:
            return
        self.master, self.slave = os.openpty()
        try:
            # The command's terminal starts as the caller's is now (cooked, its erase key...).
            termios.tcsetattr(self.slave, termios.TCSANOW, termios.tcgetattr(self.ttys[0]))
            self._resize()
            if owner is not None:
                os.fchown(self.slave, owner, -1)  # the user's terminal, as login and sudo do
        except BaseException:
            self._close_pty()
            raise

    # -- set up and torn down around fork

    def __enter__(self) -> Relay:
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake[1])
        for sig in _HANDLED:
            self._old_handlers[sig] = signal.signal(sig, lambda _signum, _frame: None)
        # A caller may hand down a mask that blocks them (a blocked SIGCHLD: join waits forever).
        self._old_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        return self

    def __exit__(self, *_exc) -> None:
        if self._saved is not None:
            with contextlib.suppress(termios.error, OSError):  # gone: a hung-up terminal
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved)
            self._saved = None
        try:
            self._close_pty()  # hangs up what is still holding the command's terminal
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            signal.set_wakeup_fd(self._old_wakeup)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            for fd in self._wake:
                os.close(fd)

    def _close_pty(self) -> None:
        for name in ("slave", "master"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)

    # -- the command's side

    def child_side(self) -> None:
        """In the forked child, as root: a new session, the pty as controlling terminal and in
        place of the caller's terminal, default signal handling, no descriptor but 0, 1, 2."""
        signal.set_wakeup_fd(-1)
        for sig in (*_HANDLED, *_IGNORED_BY_PYTHON):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)  # the caller's, as it was
        os.setsid()
        if self.slave is not None:
            fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
            for fd in self.ttys:
                os.dup2(self.slave, fd)
        try:
            fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
        for fd in fds:
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- nsctl's side

    def run(self, child: int) -> int:
        """Relay until the command exits; its exit status (128+N for a death by signal N)."""
        if self.slave is not None:
            os.close(self.slave)  # only the command holds it now: EIO on the master once it's gone
            self.slave = None
        if self.master is not None:
            os.set_blocking(self.master, False)  # a busy command must never block the relay
        if 0 in self.ttys:
            self._saved = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSANOW)  # keystrokes (^C, ^Z too) go to the command's pty
        reading = 0 in self.ttys
        to_pty = b""
        status = None
        while status is None:
            wanted = [self._wake[0]]
            if self.master is not None:
                wanted.append(self.master)
                if reading and not to_pty:
                    wanted.append(0)
            writable = [self.master] if self.master is not None and to_pty else []
            ready, writable, _ = select.select(wanted, writable, [])
            if self.master in ready:
                data = _read(self.master)
                if data == b"":
                    os.close(self.master)  # nothing holds the pty any more
                    self.master = None
                elif data:
                    self._write_out(data)
            if 0 in ready:
                data = _read(0)
                if data == b"":
                    reading = False  # the caller's terminal hung up
                to_pty += data or b""
            if writable and self.master is not None:
                try:
                    to_pty = to_pty[os.write(self.master, to_pty) :]
                except BlockingIOError:
                    pass
                except OSError:
                    to_pty = b""
            if self._wake[0] in ready:
                status = self._signals(child)
        self._drain()
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code

    def _signals(self, child: int) -> Optional[int]:
        """Act on the signals that came; the command's wait status once it has exited."""
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(self._wake[0], 4096):
                if signum == signal.SIGWINCH:
                    self._resize()
                elif signum != signal.SIGCHLD:
                    try:
                        os.killpg(child, signum)
                    except OSError:  # it left its process group
                        with contextlib.suppress(OSError):
                            os.kill(child, signum)
        pid, status = os.waitpid(child, os.WNOHANG)
        return status if pid else None

    def _resize(self) -> None:
        """The caller's window size onto the pty (the kernel sends its SIGWINCH)."""
        if self.master is None:
            return
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(self.ttys[0], termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def _write_out(self, data: bytes) -> None:
        while data and self._out is not None:
            try:
                data = data[os.write(self._out, data) :]
            except BlockingIOError:  # the caller's (shared) descriptor is non-blocking
                select.select([], [self._out], [])
            except OSError:
                self._out = None  # the caller's output is gone; keep serving the command

    def _drain(self) -> None:
        total = 0
        while self.master is not None and total < DRAIN_MAX:
            if not select.select([self.master], [], [], DRAIN_QUIET)[0]:
                return
            data = _read(self.master)
            if data == b"":
                return
            total += len(data or b"")
            self._write_out(data or b"")
