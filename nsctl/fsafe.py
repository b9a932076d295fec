"""Directories root can trust: walked from / one component at a time, never through a symlink.

nsctl runs as root and deletes, mounts and writes where its config and its runtime directory
point. A path only means what it says if nobody but root can change what it leads to:

- no component is a symlink (every open is ``O_NOFOLLOW``, relative to its parent's fd);
- every component is a directory owned by root;
- a directory that others may write to must be sticky (like /tmp or /var/tmp): there, only
  root may rename or remove the root-owned entry below it; anywhere else a user who can write
  to an ancestor could rename the next component away and put a symlink in its place.

The last component is held to a stricter rule by its callers (a base path or a runtime
directory must be writable by root alone), see :func:`trusted_dir`.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

O_PATH_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
O_READ_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path that someone other than root could redirect; the message names the culprit."""

    def __init__(self, path: str, message: str):
        super().__init__(errno.EPERM, message, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def components(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or not parts or ".." in parts or "." in parts:
        raise OSError(errno.EINVAL, "not a normalised absolute path", path)
    return parts


def open_dir(path: str) -> int:
    """An O_PATH fd for ``path``, refusing a symlink in ANY component (none can redirect it)."""
    fd = os.open("/", O_PATH_DIR)
    try:
        for part in components(path):
            try:
                child = os.open(part, O_PATH_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(
                        exc.errno, "a path component is a symlink or not a directory", path
                    ) from None
                raise OSError(exc.errno, exc.strerror, path) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _writers(st: os.stat_result) -> Optional[str]:
    """Who other than root can write to a directory with this stat, or None."""
    if st.st_uid != 0:
        return f"its owner (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH:
        return "everyone"
    if st.st_mode & stat.S_IWGRP:
        return f"group {st.st_gid}"
    return None


def _check_ancestor(path: str, st: os.stat_result, what: str, target: str) -> None:
    writers = _writers(st)
    if st.st_uid != 0 or (writers and not st.st_mode & stat.S_ISVTX):
        raise UnsafePath(
            target,
            f"{path}, an ancestor of the {what}, can be written by {writers} and is not sticky: "
            "they could replace what lies below it with a symlink (every ancestor must be owned "
            "by root and writable only by root, or sticky like /tmp)",
        )


def trusted_dir(path: str, what: str, create_mode: Optional[int] = None, want_mode: int = 0) -> int:
    """An fd (O_RDONLY) for ``path`` after checking it and every ancestor (see the module doc).

    ``path`` itself must be a directory owned by root and writable by root alone. When it or an
    ancestor is missing and ``create_mode`` is given, it is made with exactly that mode whatever
    the umask (mkdir -p); otherwise a missing path is FileNotFoundError. ``want_mode`` bits
    (e.g. 0o055 so job users can read an index) are added to an existing directory that lacks
    them. ``what`` names the path in messages ("base directory", "runtime directory").
    """
    parts = components(path)
    fd = os.open("/", O_READ_DIR)
    walked = "/"
    try:
        for index, part in enumerate(parts):
            _check_ancestor(walked, os.fstat(fd), what, path)
            walked = os.path.join(walked, part)
            last = index == len(parts) - 1
            try:
                child = os.open(part, O_READ_DIR, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise FileNotFoundError(
                        errno.ENOENT, os.strerror(errno.ENOENT), walked
                    ) from None
                try:
                    os.mkdir(part, create_mode, dir_fd=fd)
                except FileExistsError:
                    pass  # a racing nsctl made it: it is checked below like any other
                child = os.open(part, O_READ_DIR, dir_fd=fd)
                st = os.fstat(child)
                if st.st_uid == 0 and stat.S_IMODE(st.st_mode) != create_mode:
                    os.fchmod(child, create_mode)  # mkdir's mode is filtered by the umask
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(path, f"{walked} is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = child
            if last:
                st = os.fstat(fd)
                if _writers(st):
                    raise UnsafePath(
                        path, f"{what} must be owned by root and not group/world-writable"
                    )
                if want_mode and st.st_mode & want_mode != want_mode:
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) | want_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def identity(fd: int) -> str:
    """``dev:ino`` of an open file: what the index records to recognise a directory later."""
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"
