"""Load this node's resolved configuration fast, refusing a config that does not validate.

The file is a namespace.yaml or a job_container.conf (by its name: ``*.conf``), checked and
resolved by validate.py and config.py or by jcconf.py into the same ``NodeConfig``.

Prologs and Epilogs call this for every job. The resolved ``NodeConfig`` is cached under the
runtime directory, one entry per file, format, Slurm version asked for, node name, %h value and
nsctl build (its version and its config and validation rules' files); the entry holds the
file's exact text and is used only while the file still reads the same (a key of stat fields
could miss a same-size rewrite within one clock tick). Only a cache miss (the file changed,
nsctl was upgraded, or the node rebooted and /run was emptied) parses the file and runs the
full validator; every later job reads one small file in marshal's format.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys

from . import __version__, config
from .errors import ConfigError
from .layout import open_run_subdir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional


def _rules() -> str:
    """What the resolution and validation rules are: an upgrade that changes them (even without
    a new version number) must not be served a config the old rules accepted."""
    here = os.path.dirname(config.__file__)
    marks = []
    for name in ("config.py", "validate.py", "jcconf.py", "issues.py"):
        try:
            st = os.stat(os.path.join(here, name))
            marks.append(f"{st.st_size}.{st.st_mtime_ns}")
        except OSError:
            marks.append("-")
    # marshal's format belongs to the Python version that wrote it.
    return f"{__version__}:{sys.version_info[0]}.{sys.version_info[1]}:{':'.join(marks)}"


def _cache_key(path: str, node: str, hostname: str, fmt: str, version: str) -> str:
    """One entry per nsctl build, file, format, Slurm version, node and %h."""
    return f"{_rules()}\0{os.path.realpath(path)}\0{fmt}\0{version}\0{node}\0{hostname}"


def _cache_name(key: str) -> str:
    # The entry holds its whole key and the file's exact text, so the name needs only a cheap
    # hash (64-bit FNV-1a; hashlib or zlib would cost the Prolog a module to load).
    value = 0xCBF29CE484222325
    for byte in key.encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}.cache"


def _cache_dir(env) -> Optional[int]:
    """The cache directory (root's alone, like the rest of the runtime directory), or None: a
    cache only root can trust is only root's to use, and one that cannot be made costs speed."""
    if os.geteuid() != 0:
        return None
    try:
        return open_run_subdir("cache", create=True, env=env)
    except OSError:
        return None


def _read_cache(cache: int, key: str, source: str) -> Optional[config.NodeConfig]:
    try:
        fd = os.open(_cache_name(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cache)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        # Trust only a cache file root owns that nobody else can write (marshal is not meant
        # for data someone else could have made).
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        try:
            data = marshal.loads(handle.read())
            if data["source"] != source:  # the file changed since: this entry is stale
                return None
            if data["key"] != key:  # another entry whose key hashes alike
                return None
            return config.from_dict(data["config"], data["origins"])
        except (ValueError, KeyError, TypeError, EOFError):
            return None


def _write_cache(cache: int, key: str, source: str, resolved: config.NodeConfig) -> None:
    """The resolved config as plain data in marshal's format: read back with one call, no
    parser to import (json costs a Prolog an import)."""
    name = _cache_name(key)
    tmp = f"{name}.{os.getpid()}.tmp"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=cache)
        with os.fdopen(fd, "wb") as handle:
            entry = {
                "key": key,
                "source": source,
                "config": config.to_dict(resolved),
                "origins": dict(resolved.origins),
            }
            handle.write(marshal.dumps(entry))
        os.replace(tmp, name, src_dir_fd=cache, dst_dir_fd=cache)
    except OSError:  # a cache we cannot write only costs speed; leave no partial file
        try:
            os.unlink(tmp, dir_fd=cache)
        except OSError:
            pass


def load_node_config(
    path: str,
    node: str,
    hostname: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    use_cache: bool = True,
    fmt: Optional[str] = None,
    slurm_version: Optional[str] = None,
) -> config.NodeConfig:
    """The validated, resolved configuration of ``node``; ConfigError if the file is unusable.

    ``fmt`` is config.YAML or config.TMPFS (default: by the file name); ``slurm_version`` (a
    job_container.conf only) also refuses what that Slurm release reads differently.
    """
    env = os.environ if env is None else env
    fmt = config.config_format(path, fmt)
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    if not hostname:
        # %h needs NodeHostname from slurm.conf, whose NodeName lines can name thousands of
        # nodes: read it only for a config that uses %h (it never matters otherwise).
        hostname = config.node_hostname(node, env) if "%h" in text else node
    cache = _cache_dir(env) if use_cache else None
    key = _cache_key(path, node, hostname, fmt, slurm_version or "")
    try:
        if cache is not None:
            cached = _read_cache(cache, key, text)
            if cached is not None:
                return cached
        # Validate exactly the text that was compared and will be cached: no window between.
        if fmt == config.TMPFS:
            from . import jcconf  # cold path only: no YAML parser for a job_container.conf

            try:
                version = jcconf.parse_version(slurm_version) if slurm_version else None
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            checked = jcconf.check_text(text, path, version, (node,))
        else:
            from . import validate  # cold path only: the YAML parser and every rule

            checked = validate.check_text(text, path)
        if not checked.valid:
            lines = "\n".join(str(issue) for issue in checked.errors)
            raise ConfigError(f"{path} is not valid:\n{lines}", checked.errors)
        if fmt == config.TMPFS:
            resolved = jcconf.resolve(checked.data, node, hostname)
        else:
            resolved = config.resolve(checked.data, node, hostname)
        if cache is not None:
            _write_cache(cache, key, text, resolved)
        return resolved
    finally:
        if cache is not None:
            os.close(cache)
