"""Tests for nsctl.rmtree: real trees, real mounts (in a throwaway mount namespace), real races."""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import pickle
import resource
import socket
import stat
import subprocess
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from nsctl import rmtree
from nsctl.rmtree import MAX_OPEN_DIRS, Result, remove_contents, remove_tree

pytestmark = pytest.mark.root

NOBODY = 65534
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


# -- helpers --------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict:
    """Everything observable about a tree, without following symlinks."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                detail = path.read_bytes()
            else:
                detail = None
            seen[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode, detail)
    return seen


def make_sentinel(path: Path) -> Path:
    """Stands for /etc or another job's directory: must come through every test untouched."""
    (path / "sub").mkdir(parents=True)
    (path / "passwd").write_text("root:x:0:0\n")
    (path / "sub" / "secret").write_text("other job's data\n")
    return path


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [line for line in info if line.split()[4].startswith(str(path))]


def _private_mount_namespace() -> None:
    if _libc.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "unshare(CLONE_NEWNS)")
    # Without this, mounts made below would propagate to the host's shared peer groups.
    if _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "mount --make-rprivate /")


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def run_in_child(prepare: Callable[[], None], body: Callable[[], object]) -> object:
    """Run ``body`` in a forked child after ``prepare``; return its (pickled) value.

    The child's mount namespace (if ``prepare`` makes one) dies with it, so nothing it mounts
    can outlive the test; its credentials (if dropped) never touch the test process.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            prepare()
            payload = ("ok", body())
        except BaseException:
            payload = ("error", traceback.format_exc())
        try:
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(payload))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    kind, value = pickle.loads(data)
    if kind == "error":
        pytest.fail(f"child failed:\n{value}")
    return value


@pytest.fixture
def no_leaked_mounts(tmp_path: Path):
    yield
    assert mounts_under(tmp_path) == []


def _make_leaf(job: tuple[str, int]) -> None:
    path, count = job
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            os.mknod(f"f{i}", stat.S_IFREG | 0o600, dir_fd=fd)
    finally:
        os.close(fd)


def build_wide(root: Path, files: int, per_dir: int = 1000) -> int:
    """``files`` empty files in directories of ``per_dir``; returns the directory count."""
    root.mkdir()
    jobs = [
        (str(root / f"d{i}"), min(per_dir, files - i * per_dir))
        for i in range(0, -(-files // per_dir))
    ]
    # Creating inodes is slow on some virtual disks; creations in distinct directories overlap.
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(_make_leaf, jobs))
    return len(jobs)


def build_chain(root: Path, depth: int, file_every: int) -> int:
    """A chain of ``depth`` directories named ``d`` below root (deeper than PATH_MAX allows
    by path, so built fd-relative); returns how many files it holds."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    files = 0
    try:
        for level in range(1, depth + 1):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if level % file_every == 0:
                os.mknod(f"f{level}", stat.S_IFREG | 0o600, dir_fd=fd)
                files += 1
    finally:
        os.close(fd)
    return files


# -- basics ---------------------------------------------------------------------------------------


def test_missing_path_is_success_and_teardown_can_repeat(tmp_path: Path):
    assert remove_tree(str(tmp_path / "absent")) == Result()
    assert remove_tree(str(tmp_path / "no" / "parent" / "either")) == Result()
    assert remove_contents(str(tmp_path / "absent")) == Result()

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    first = remove_tree(str(tree))
    assert (first.files, first.dirs, first.ok) == (1, 3, True)
    assert remove_tree(str(tree)) == Result()


def test_removes_every_kind_of_entry_and_counts_them(tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "d1" / "d2").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "file").write_text("data")
    (tree / "d1" / "d2" / "file").write_text("data")
    os.mkfifo(tree / "fifo")
    os.mknod(tree / "d1" / "node", stat.S_IFREG | 0o644)
    os.symlink("file", tree / "link")
    os.link(tree / "file", tree / "d1" / "hardlink")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "d1" / "sock"))

    result = remove_tree(str(tree))

    assert result == Result(files=7, dirs=4)
    assert not tree.exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_paths_without_a_last_component(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "keep").write_text("keep")
    for bad in ("/", "//", ".", "..", "", f"{tmp_path}/a/b/..", f"{tmp_path}/a/b/.", "x/../.."):
        with pytest.raises(ValueError):
            remove_tree(bad)
    assert (tmp_path / "a" / "keep").read_text() == "keep"


# -- symlinks -------------------------------------------------------------------------------------


def test_planted_symlinks_are_unlinked_never_followed(tmp_path: Path):
    etc = make_sentinel(tmp_path / "etc")
    other_job = make_sentinel(tmp_path / "other-job")
    before = (snapshot(etc), snapshot(other_job))
    tree = tmp_path / "tree"
    (tree / "deep" / "er").mkdir(parents=True)
    os.symlink(etc, tree / "etc")
    os.symlink(etc / "passwd", tree / "passwd")
    os.symlink(other_job, tree / "deep" / "job")
    os.symlink(other_job / "sub", tree / "deep" / "er" / "sub")
    os.symlink("/", tree / "root")
    os.symlink("../../../..", tree / "deep" / "er" / "up")
    os.symlink("nowhere", tree / "dangling")

    result = remove_tree(str(tree))

    assert result == Result(files=7, dirs=3)
    assert not tree.exists()
    assert (snapshot(etc), snapshot(other_job)) == before


@pytest.mark.parametrize("suffix", ["", "/"])
def test_top_level_symlink_is_unlinked_not_followed(tmp_path: Path, suffix: str):
    etc = make_sentinel(tmp_path / "etc")
    before = snapshot(etc)
    top = tmp_path / "_tmp"
    os.symlink(etc, top)

    # "rm -rf link/" would empty the target; a trailing slash must not make us follow.
    result = remove_tree(str(top) + suffix)

    assert result == Result(files=1)
    assert not os.path.lexists(top)
    assert snapshot(etc) == before


def test_top_level_file_is_removed(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    assert remove_tree(str(tmp_path / "file")) == Result(files=1)
    assert not (tmp_path / "file").exists()


def test_remove_contents_keeps_the_directory_and_caller_fd(tmp_path: Path):
    etc = make_sentinel(tmp_path / "etc")
    before = snapshot(etc)
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "f").write_text("x")
    os.symlink(etc, target / "etc")

    assert remove_contents(str(target)) == Result(files=2, dirs=1)
    assert list(target.iterdir()) == []

    (target / "again").mkdir()
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_contents(fd) == Result(dirs=1)
        os.fstat(fd)  # still open: the caller owns it
    finally:
        os.close(fd)
    assert list(target.iterdir()) == []
    assert snapshot(etc) == before


def test_remove_contents_of_a_symlink_refuses(tmp_path: Path):
    etc = make_sentinel(tmp_path / "etc")
    before = snapshot(etc)
    os.symlink(etc, tmp_path / "link")

    result = remove_contents(str(tmp_path / "link"))

    # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR on current kernels, ELOOP on some.
    assert [f.path for f in result.failures] == [str(tmp_path / "link")]
    assert result.failures[0].error in (os.strerror(errno.ENOTDIR), os.strerror(errno.ELOOP))
    assert (result.files, result.dirs, result.skipped_mounts) == (0, 0, [])
    assert os.path.islink(tmp_path / "link")
    assert snapshot(etc) == before


# -- permissions ----------------------------------------------------------------------------------


def _locked_tree(tree: Path) -> None:
    (tree / "closed" / "inner").mkdir(parents=True)
    (tree / "closed" / "inner" / "f").write_text("x")
    (tree / "closed" / "f").write_text("x")
    (tree / "readonly" / "sub").mkdir(parents=True)
    (tree / "readonly" / "f").write_text("x")
    (tree / "file000").write_text("x")
    (tree / "file000").chmod(0)
    (tree / "readonly").chmod(0o500)
    (tree / "closed" / "inner").chmod(0)
    (tree / "closed").chmod(0)


def test_mode_000_and_read_only_directories_as_root(tmp_path: Path):
    tree = tmp_path / "tree"
    _locked_tree(tree)

    assert remove_tree(str(tree)) == Result(files=4, dirs=5)
    assert not tree.exists()


def test_mode_000_directories_as_their_owner(tmp_path: Path):
    """As the owner (no CAP_DAC_OVERRIDE) nothing works without the explicit chmod."""
    target = tmp_path / "target"
    target.mkdir()
    _locked_tree(target)
    for dirpath, dirnames, filenames in os.walk(target):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, NOBODY, NOBODY)
    # As root, walk() could not enter mode 000 directories; chown them too.
    for path in (target / "closed", target / "closed" / "inner", target / "closed" / "inner" / "f"):
        os.lchown(path, NOBODY, NOBODY)

    def try_open_closed(fd: int) -> int:
        try:
            os.close(os.open("closed", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd))
        except OSError as exc:
            return exc.errno
        return 0

    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)  # tmp_path is root-only: pass an fd
    try:
        # The tree really is locked for its owner...
        assert run_in_child(_drop_to_nobody, lambda: try_open_closed(fd)) == errno.EACCES
        result = run_in_child(_drop_to_nobody, lambda: remove_contents(fd))
    finally:
        os.close(fd)

    assert result == Result(files=4, dirs=4)  # the target itself stays
    assert list(target.iterdir()) == []


# -- mounts ---------------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def test_mounts_inside_the_tree_are_skipped(tmp_path: Path, no_leaked_mounts):
    etc = make_sentinel(tmp_path / "etc")
    before = snapshot(etc)
    tree = tmp_path / "tree"
    for sub in ("plain/x", "tmpfs", "nested/bind", "same-fs-bind"):
        (tree / sub).mkdir(parents=True)
    (tree / "plain" / "x" / "f").write_text("x")
    (tree / "filebind").write_text("placeholder")
    (tree / "nested" / "f").write_text("x")

    def body():
        _mount("-t", "tmpfs", "tmpfs", str(tree / "tmpfs"))
        (tree / "tmpfs" / "on-tmpfs").write_text("keep")
        _mount("--bind", str(etc), str(tree / "nested" / "bind"))
        # Same filesystem as the tree, so st_dev alone cannot tell: only the mount id can.
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "f").write_text("keep")
        _mount("--bind", str(tmp_path / "elsewhere"), str(tree / "same-fs-bind"))
        _mount("--bind", str(etc / "passwd"), str(tree / "filebind"))
        result = remove_tree(str(tree))
        return result, sorted(os.listdir(tree)), (tree / "tmpfs" / "on-tmpfs").read_text()

    result, left, on_tmpfs = run_in_child(_private_mount_namespace, body)

    assert result.failures == []
    assert sorted(result.skipped_mounts) == sorted(
        str(tree / sub) for sub in ("tmpfs", "nested/bind", "same-fs-bind", "filebind")
    )
    assert (result.files, result.dirs) == (2, 2)  # plain/x/f, nested/f; plain/x, plain
    assert left == ["filebind", "nested", "same-fs-bind", "tmpfs"]
    assert on_tmpfs == "keep"
    assert snapshot(etc) == before
    assert (tmp_path / "elsewhere" / "f").read_text() == "keep"


def test_top_that_is_a_mount_point_is_left_alone(tmp_path: Path, no_leaked_mounts):
    job_dir = tmp_path / "job"
    (job_dir / "sub").mkdir(parents=True)
    (job_dir / "sub" / "f").write_text("x")

    def body():
        _mount("--bind", str(job_dir), str(job_dir))  # like B/J, bind-mounted onto itself
        whole = remove_tree(str(job_dir))
        left_after_tree = sorted(os.listdir(job_dir))
        contents = remove_contents(str(job_dir))  # its own mount is the reference here
        return whole, left_after_tree, contents, os.listdir(job_dir)

    whole, left_after_tree, contents, left = run_in_child(_private_mount_namespace, body)

    assert whole == Result(skipped_mounts=[str(job_dir)])
    assert left_after_tree == ["sub"]
    assert contents == Result(files=1, dirs=1)
    assert left == []


def test_mount_id_fallback_agrees_with_statx(tmp_path: Path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ident = rmtree._identity(fd)
        st = os.fstat(fd)
        assert rmtree._statx is not None  # glibc 2.36 here: the statx path must be the one tested
        assert (ident.dev, ident.ino) == (st.st_dev, st.st_ino)
        assert ident.mnt == rmtree._fdinfo_mnt_id(fd) is not None
    finally:
        os.close(fd)


# -- depth and fds --------------------------------------------------------------------------------


FD_SLACK = 8  # the walk's transient fds: scandir's dup, ".." before its child closes, ...


@pytest.fixture
def fd_limit():
    """Make opening more than MAX_OPEN_DIRS + FD_SLACK new fds fail with EMFILE.

    RLIMIT_NOFILE bounds fd *numbers*, and pytest leaves gaps below its highest fd, so the
    gaps are filled first; otherwise the walk could use them unnoticed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = []
    while True:
        fd = os.open("/dev/null", os.O_RDONLY)
        if fd > highest:
            os.close(fd)
            break
        fillers.append(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + MAX_OPEN_DIRS + FD_SLACK, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)


@pytest.fixture
def chain_20000(tmp_path: Path) -> tuple[Path, int]:
    tree = tmp_path / "tree"
    return tree, build_chain(tree, 20_000, file_every=1000)


def test_tree_20000_levels_deep_with_bounded_fds(chain_20000, fd_limit):
    tree, files = chain_20000
    fds_before = open_fd_count()

    # Past the fd limit an open fails with EMFILE, which would show up as a failure here.
    result = remove_tree(str(tree))

    assert result == Result(files=files, dirs=20_001)
    assert not tree.exists()
    assert open_fd_count() == fds_before


def test_fd_limit_would_catch_an_fd_hungry_walk(tmp_path: Path, fd_limit):
    """The limit used above really bites: keeping every level open exceeds it."""
    fds = []
    with pytest.raises(OSError) as exc_info:
        try:
            fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
            fds.append(fd)
            for _ in range(MAX_OPEN_DIRS + FD_SLACK):
                fds.append(os.dup(fd))
        finally:
            for fd in fds:
                os.close(fd)
    assert exc_info.value.errno == errno.EMFILE


def test_ancestors_moved_while_their_fds_were_closed(tmp_path: Path, monkeypatch, fd_limit):
    """Re-opening closed ancestors checks identity; what moved is found again by a re-scan."""
    tree = tmp_path / "tree"
    build_chain(tree, 300, file_every=1)
    away = tmp_path / "away"
    away.mkdir()
    (away / "keep").write_text("keep")
    original = rmtree._Remover._open_child
    moved = []

    def level(n: int) -> Path:
        return tree.joinpath(*["d"] * n)

    def open_child(self, parent, name):
        if len(self.stack) == 251 and not moved:  # descending into level 250 of the chain
            # By now levels 1..186 have had their fds closed. Move ancestors around:
            # 150 leaves the tree (its open descendants go on being emptied, where it is now),
            # 100 moves up to the top (its ".." no longer matches: re-walk by name),
            # 20 moves too, so that re-walk fails at 20 and drops the frames below it.
            os.rename(level(150), away / "moved150")
            os.rename(level(100), tree / "moved100")
            os.rename(level(20), tree / "moved20")
            moved.append(True)
        return original(self, parent, name)

    monkeypatch.setattr(rmtree._Remover, "_open_child", open_child)
    result = remove_tree(str(tree))

    assert moved
    assert result.ok, result
    assert not tree.exists()
    # Level 150 itself stays where the user put it; everything it held (tree data) is gone.
    assert sorted(os.listdir(away)) == ["keep", "moved150"]
    assert os.listdir(away / "moved150") == []
    assert (away / "keep").read_text() == "keep"


# -- races ----------------------------------------------------------------------------------------


def _racer(tree: str, sentinel: str, started, stop) -> None:
    """The hostile user: keeps swapping directories for symlinks to the sentinel."""
    started.set()
    a = os.path.join(tree, "a")
    victim, parked = os.path.join(a, "victim"), os.path.join(a, "parked")
    files = os.path.join(tree, "files")
    n = 0
    while not stop.is_set():
        n += 1
        for op, args in (
            (os.rename, (victim, parked)),
            (os.symlink, (sentinel, victim)),
            (os.unlink, (victim,)),
            (os.rename, (parked, victim)),
            (os.rename, (os.path.join(victim, "s0"), os.path.join(tree, f"up{n}"))),
            (os.symlink, (sentinel, os.path.join(victim, "s0"))),
            (os.unlink, (os.path.join(files, f"f{n % 500}"),)),
            (os.symlink, (os.path.join(sentinel, "passwd"), os.path.join(files, f"f{n % 500}"))),
        ):
            try:
                op(*args)
            except OSError:
                pass


_RACY_TREE_FILES = 100 * 20 + 500


def _racy_tree(tree: Path) -> None:
    victim = tree / "a" / "victim"
    for i in range(100):
        (victim / f"s{i}" / "x").mkdir(parents=True)
        for j in range(20):
            (victim / f"s{i}" / "x" / f"f{j}").write_text("x")
    (tree / "files").mkdir()
    for i in range(500):
        (tree / "files" / f"f{i}").write_text("x")


def test_racing_renames_and_symlink_swaps_never_reach_outside(tmp_path: Path):
    sentinel = make_sentinel(tmp_path / "etc")
    before = snapshot(sentinel)
    context = multiprocessing.get_context("fork")
    planted_symlinks_removed = []
    for attempt in range(5):
        tree = tmp_path / f"tree{attempt}"
        _racy_tree(tree)
        started, stop = context.Event(), context.Event()
        racer = context.Process(target=_racer, args=(str(tree), str(sentinel), started, stop))
        racer.start()
        try:
            assert started.wait(60)
            result = remove_tree(str(tree))
        finally:
            stop.set()
            racer.join()
        assert racer.exitcode == 0
        assert snapshot(sentinel) == before, result
        planted_symlinks_removed.append(result.files - _RACY_TREE_FILES)
        # Once the user stops, a second teardown finishes whatever the race left.
        second = remove_tree(str(tree))
        assert second.ok, second
        assert not tree.exists()
        assert snapshot(sentinel) == before
    # The race did happen: symlinks the racer planted mid-walk were unlinked (never followed).
    assert max(planted_symlinks_removed) > 0


# -- size -----------------------------------------------------------------------------------------


def test_100000_files_are_all_removed(tmp_path: Path):
    tree = tmp_path / "tree"
    dirs = build_wide(tree, 100_000)

    result = remove_tree(str(tree))

    assert result == Result(files=100_000, dirs=dirs + 1)
    assert not tree.exists()
