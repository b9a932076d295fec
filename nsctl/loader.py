"""Load this node's resolved configuration fast, refusing a config that does not validate.

Prologs and Epilogs call this for every job. The resolved ``NodeConfig`` is cached under the
runtime directory, keyed by a hash of the file's bytes, the node name, the %h value and nsctl's
version (a key of stat fields could miss a same-size rewrite within one clock tick). Only a
cache miss (the file changed, or the node rebooted and /run was emptied) parses the YAML and runs
the full validator, which imports jsonschema; every later job reads one small JSON file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from typing import Optional

from . import __version__, config
from .errors import ConfigError
from .layout import run_dir


def _cache_file(content: bytes, node: str, hostname: str, env) -> str:
    identity = hashlib.sha256(f"{__version__}\0{node}\0{hostname}\0".encode())
    identity.update(content)
    return os.path.join(run_dir(env), "cache", f"{identity.hexdigest()[:40]}.json")


def _read_cache(path: str) -> Optional[config.NodeConfig]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8") as handle:
        st = os.fstat(handle.fileno())
        # Trust only a cache file we own that nobody else can write.
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        try:
            data = json.load(handle)
            return config.from_dict(data["config"], data["origins"])
        except (ValueError, KeyError, TypeError):
            return None


def _write_cache(path: str, resolved: config.NodeConfig) -> None:
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(
                {"config": config.to_dict(resolved), "origins": dict(resolved.origins)}, handle
            )
        os.replace(tmp, path)
    except OSError:
        pass  # a cache we cannot write only costs speed


def load_node_config(
    path: str,
    node: str,
    hostname: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    use_cache: bool = True,
) -> config.NodeConfig:
    """The validated, resolved configuration of ``node``; ConfigError if the file is unusable."""
    env = os.environ if env is None else env
    hostname = hostname or config.node_hostname(node, env)
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    cache = _cache_file(content, node, hostname, env) if use_cache else None
    if cache:
        cached = _read_cache(cache)
        if cached is not None:
            return cached
    from . import validate  # cold path only: pulls in jsonschema

    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    # Validate exactly the bytes that were hashed: no window between key and content.
    checked = validate.check_text(text, path)
    if not checked.valid:
        lines = "\n".join(str(issue) for issue in checked.errors)
        raise ConfigError(f"{path} is not valid:\n{lines}", checked.errors)
    resolved = config.resolve(checked.data, node, hostname)
    if cache:
        _write_cache(cache, resolved)
    return resolved
