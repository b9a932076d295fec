"""Pure configuration layer: find namespace.yaml, resolve it for one node, expand job paths.

No ctypes, no mounts, no jsonschema: ``setup``/``teardown``/``join`` import this module for
every job on every node. Resolution follows Slurm's namespace/linux merge rules exactly
(defaults first, then only the FIRST matching node_confs entry; strings override only when
non-empty, bools/ints whenever the key is present; ``dir_confs`` replaces the whole list).
Validation (types, unknown keys, overlaps) lives in ``validate.py``; this module trusts a
document that has passed it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Optional

import hostlist

DEFAULT_CONFIG = "/etc/slurm/namespace.yaml"
DEFAULT_DIRS = "/tmp,/dev/shm"
DEFAULT_WAIT = 10
USER_NS_SCRIPT_WAIT = 10  # fixed in Slurm, not configurable
INIT_SCRIPT_WAIT = 10  # fixed in Slurm, not configurable
DEV_SHM = "/dev/shm"

BUILTIN = "built-in default"

# Option keys by how a node entry overrides the defaults (Slurm: strings only when
# non-empty, bools and ints whenever the key is present).
STRING_KEYS = (
    "base_path",
    "clone_ns_script",
    "clone_ns_epilog",
    "init_script",
    "user_ns_script",
    "dirs",
)
BOOL_KEYS = ("auto_base_path", "shared", "disable_bpf_token")
WAIT_KEYS = ("clone_ns_script_wait", "clone_ns_epilog_wait")
OPTION_KEYS = STRING_KEYS + BOOL_KEYS + WAIT_KEYS + ("clone_ns_flags", "dir_confs")
DIR_CONF_KEYS = ("path", "base_path", "options", "tmpfs")
NODE_CONF_KEYS = ("nodes", "options")
TOP_KEYS = ("defaults", "node_confs")

CLONE_FLAGS = ("CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER")

# Mount option tokens that become mount(2) flags; every other known token is tmpfs data.
MOUNT_FLAGS = ("noexec", "nosuid", "nodev", "ro", "noatime", "nodiratime", "relatime")
TMPFS_DATA_KEYS = ("size", "mode", "nr_inodes", "uid", "gid", "huge")

# The escapes nsctl expands in dir_confs[].path at setup time.
JOB_ESCAPES = {"j": "job id", "S": "SLUID", "u": "user name", "%": "a literal %"}
_ESCAPE_RE = re.compile(r"%(.?)", re.DOTALL)  # "?" so a lone trailing % is an error too


class DirConf(NamedTuple):
    """One private directory, with every default made explicit."""

    path: str  # target inside the job; may hold %j %S %u %% (expanded per job)
    tmpfs: bool
    flags: tuple[str, ...] = ()  # lower-case mount flag names, in the order given
    data: tuple[str, ...] = ()  # tmpfs data tokens such as "size=8g"
    base_path: Optional[str] = None  # per-dir backing root (%h/%n expanded), bind only

    @property
    def options(self) -> str:
        return ",".join(self.flags + self.data)


class NodeConfig(NamedTuple):
    """What one node resolves to. ``enabled`` is False when nsctl does nothing there."""

    node: str
    entry: str  # "defaults", "node_confs[i]" or "" (nothing configured)
    enabled: bool
    disabled_reason: str = ""
    base_path: Optional[str] = None
    auto_base_path: bool = False
    clone_ns_flags: tuple[str, ...] = ("CLONE_NEWNS",)
    clone_ns_script: Optional[str] = None
    clone_ns_script_wait: int = DEFAULT_WAIT
    clone_ns_epilog: Optional[str] = None
    clone_ns_epilog_wait: int = DEFAULT_WAIT
    init_script: Optional[str] = None
    user_ns_script: Optional[str] = None
    shared: bool = False
    disable_bpf_token: bool = False
    dir_confs: tuple[DirConf, ...] = ()
    origins: Mapping[str, str] = MappingProxyType({})

    @property
    def pid_ns(self) -> bool:
        return "CLONE_NEWPID" in self.clone_ns_flags

    @property
    def user_ns(self) -> bool:
        return "CLONE_NEWUSER" in self.clone_ns_flags


# ---------------------------------------------------------------------------------------------
# Where things come from


def config_path(explicit: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """--config, else $NSCTL_CONFIG, else namespace.yaml beside $SLURM_CONF, else the default.

    SLURM_CONF also covers configless Slurm, whose cached config directory it names.
    """
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("NSCTL_CONFIG"):
        return env["NSCTL_CONFIG"]
    if env.get("SLURM_CONF"):
        return os.path.join(os.path.dirname(env["SLURM_CONF"]), "namespace.yaml")
    return DEFAULT_CONFIG


def short_hostname() -> str:
    return os.uname().nodename.split(".", 1)[0]


def node_name(explicit: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """--node, else $SLURMD_NODENAME, else the short hostname."""
    env = os.environ if env is None else env
    return explicit or env.get("SLURMD_NODENAME") or short_hostname()


def flag_tokens(value: Any) -> list[str]:
    """clone_ns_flags as a list of stripped tokens (a YAML list or a comma string)."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def split_csv(value: str) -> list[str]:
    return [token.strip() for token in value.split(",")] if value.strip() else []


def parse_mount_options(options: Optional[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split an options string into (flags, data) as Slurm does: 7 flag words, the rest data."""
    flags: list[str] = []
    data: list[str] = []
    for token in split_csv(options or ""):
        (flags if token.lower() in MOUNT_FLAGS else data).append(
            token.lower() if token.lower() in MOUNT_FLAGS else token
        )
    return tuple(flags), tuple(data)


def normalise_dir(path: str) -> str:
    """Strip trailing slashes (nsctl treats /tmp/ and /tmp as the same directory)."""
    stripped = path.rstrip("/")
    return stripped or "/"


def backing_name(path: str) -> str:
    """Name of the backing directory for a bind target: every "/" becomes "_"."""
    return path.replace("/", "_")


def expand_node_escapes(value: str, node: str, hostname: str) -> str:
    """Replace only the first %h (NodeHostname) and the first %n (NodeName), like Slurm."""
    return value.replace("%h", hostname, 1).replace("%n", node, 1)


def expand_job_path(template: str, job_id: str, user: str, sluid: Optional[str] = None) -> str:
    """Expand %j, %S, %u and %% in a dir_confs path for one job."""
    values = {"j": job_id, "u": user, "%": "%", "S": sluid}

    def substitute(match: re.Match) -> str:
        letter = match.group(1)
        if not letter:
            raise ValueError(f"a lone % at the end of {template!r}")
        if letter not in values:
            raise ValueError(f"unknown escape %{letter} in {template!r}")
        if values[letter] is None:
            raise ValueError(f"{template!r} uses %S but the job has no SLUID")
        return values[letter]

    return _ESCAPE_RE.sub(substitute, template)


def is_under(path: str, root: str) -> bool:
    """True when path equals root or lies below it (a path-boundary prefix match)."""
    path, root = normalise_dir(path), normalise_dir(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def slurm_node_hostnames(slurm_conf: Optional[str]) -> dict[str, str]:
    """NodeName -> NodeHostname from slurm.conf (only names that set NodeHostname)."""
    result: dict[str, str] = {}
    for names, attrs in slurm_conf_nodes(slurm_conf):
        hosts = attrs.get("nodehostname")
        if not hosts:
            continue
        try:
            host_list = hostlist.expand_hostlist(hosts)
        except hostlist.BadHostlist:
            continue  # slurm.conf is Slurm's to validate: never fail a job over it here
        for index, name in enumerate(names):
            result[name] = host_list[index] if index < len(host_list) else host_list[-1]
    return result


def slurm_conf_nodes(slurm_conf: Optional[str]) -> list[tuple[list[str], dict[str, str]]]:
    """The NodeName lines of slurm.conf: (expanded names, lower-cased attributes)."""
    if not slurm_conf:
        return []
    try:
        with open(slurm_conf, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    nodes = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line.lower().startswith("nodename="):
            continue
        attrs = {}
        for word in line.split():
            key, _, value = word.partition("=")
            attrs[key.lower()] = value
        if attrs["nodename"].upper() == "DEFAULT":
            continue
        try:
            nodes.append((hostlist.expand_hostlist(attrs["nodename"]), attrs))
        except hostlist.BadHostlist:
            continue
    return nodes


def node_hostname(node: str, env: Optional[Mapping[str, str]] = None) -> str:
    """The value of %h: NodeHostname from slurm.conf when it names one, else the short hostname."""
    env = os.environ if env is None else env
    return slurm_node_hostnames(env.get("SLURM_CONF")).get(node) or short_hostname()


# ---------------------------------------------------------------------------------------------
# Resolution


def hostlist_names(nodes: Any) -> set[str]:
    """Every node name a ``nodes`` value (hostlist string or list of them) covers."""
    items = nodes if isinstance(nodes, list) else [nodes]
    names: set[str] = set()
    for item in items:
        names.update(hostlist.expand_hostlist(str(item)))
    return names


def matching_entry(doc: Mapping[str, Any], node: str) -> Optional[int]:
    """Index of the FIRST node_confs entry whose hostlist holds ``node``; later ones never count."""
    for index, entry in enumerate(doc.get("node_confs") or []):
        if node in hostlist_names(entry["nodes"]):
            return index
    return None


def _overlay(
    values: dict[str, Any], origins: dict[str, str], options: Mapping[str, Any], origin: str
) -> None:
    for key in STRING_KEYS:
        if options.get(key) not in (None, ""):
            values[key], origins[key] = options[key], origin
    for key in BOOL_KEYS + WAIT_KEYS:
        if key in options:
            values[key], origins[key] = options[key], origin
    if "clone_ns_flags" in options and flag_tokens(options["clone_ns_flags"]):
        values["clone_ns_flags"], origins["clone_ns_flags"] = options["clone_ns_flags"], origin
    if "dir_confs" in options:
        # A node entry's dir_confs (even []) replaces the list and clears dirs.
        values["dir_confs"], origins["dir_confs"] = options["dir_confs"], origin
        values.pop("dirs", None)
        origins.pop("dirs", None)


_SEARCH = -1  # resolve(): find the matching entry by expanding the hostlists


def resolve(
    doc: Optional[Mapping[str, Any]],
    node: str,
    hostname: Optional[str] = None,
    *,
    index: Optional[int] = _SEARCH,
) -> NodeConfig:
    """Resolve a validated document for one node, recording where each value came from.

    ``index`` is the node_confs entry that matches ``node`` (None: none does) when the caller
    already knows it: a report over 100,000 nodes must not expand every hostlist per node.
    """
    hostname = hostname or node
    doc = doc or {}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    entry = ""
    if doc.get("defaults") is not None:
        _overlay(values, origins, doc["defaults"], "defaults")
        entry = "defaults"
    if index == _SEARCH:
        index = matching_entry(doc, node)
    if index is not None:
        entry = f"node_confs[{index}]"
        _overlay(values, origins, doc["node_confs"][index]["options"], entry)

    base = values.get("base_path")
    if not base:
        reason = "no base_path applies to this node" if entry else "namespace.yaml sets nothing"
        return NodeConfig(node=node, entry=entry, enabled=False, disabled_reason=reason)
    if str(base).lower() == "none":
        return NodeConfig(
            node=node,
            entry=entry,
            enabled=False,
            disabled_reason=f"base_path is none ({origins['base_path']})",
            origins=origins,
        )

    flags = ["CLONE_NEWNS"]
    for token in flag_tokens(values.get("clone_ns_flags", [])):
        if token.upper() not in flags:
            flags.append(token.upper())
    origins.setdefault("clone_ns_flags", BUILTIN)

    if "dir_confs" in values:
        raw_dirs = values["dir_confs"]
    else:
        origins["dir_confs"] = origins.get("dirs", BUILTIN)
        raw_dirs = [{"path": p} for p in split_csv(values.get("dirs") or DEFAULT_DIRS)]
    dir_confs = []
    for raw in raw_dirs:
        path = normalise_dir(raw["path"])
        flag_words, data = parse_mount_options(raw.get("options"))
        tmpfs = bool(raw.get("tmpfs", False)) or path == DEV_SHM
        dir_base = raw.get("base_path") or None
        if dir_base and not tmpfs:
            dir_base = normalise_dir(expand_node_escapes(dir_base, node, hostname))
        else:
            dir_base = None
        dir_confs.append(DirConf(path, tmpfs, flag_words, data, dir_base))

    for key in BOOL_KEYS + WAIT_KEYS + ("init_script", "user_ns_script"):
        origins.setdefault(key, BUILTIN)
    for key in ("clone_ns_script", "clone_ns_epilog"):
        origins.setdefault(key, BUILTIN)
    origins.pop("dirs", None)
    return NodeConfig(
        node=node,
        entry=entry,
        enabled=True,
        base_path=normalise_dir(expand_node_escapes(str(base), node, hostname)),
        auto_base_path=bool(values.get("auto_base_path", False)),
        clone_ns_flags=tuple(flags),
        clone_ns_script=values.get("clone_ns_script") or None,
        clone_ns_script_wait=values.get("clone_ns_script_wait") or DEFAULT_WAIT,
        clone_ns_epilog=values.get("clone_ns_epilog") or None,
        clone_ns_epilog_wait=values.get("clone_ns_epilog_wait") or DEFAULT_WAIT,
        init_script=values.get("init_script") or None,
        user_ns_script=values.get("user_ns_script") or None,
        shared=bool(values.get("shared", False)),
        disable_bpf_token=bool(values.get("disable_bpf_token", False)),
        dir_confs=tuple(dir_confs),
        origins=origins,
    )


# ---------------------------------------------------------------------------------------------
# Serialisation (show-config, the resolved-config cache)


def to_dict(config: NodeConfig) -> dict[str, Any]:
    """The resolved configuration as plain data, every default explicit."""
    if not config.enabled:
        return {
            "node": config.node,
            "entry": config.entry or None,
            "enabled": False,
            "reason": config.disabled_reason,
        }
    return {
        "node": config.node,
        "entry": config.entry,
        "enabled": True,
        "base_path": config.base_path,
        "auto_base_path": config.auto_base_path,
        "clone_ns_flags": list(config.clone_ns_flags),
        "clone_ns_script": config.clone_ns_script,
        "clone_ns_script_wait": config.clone_ns_script_wait,
        "clone_ns_epilog": config.clone_ns_epilog,
        "clone_ns_epilog_wait": config.clone_ns_epilog_wait,
        "init_script": config.init_script,
        "user_ns_script": config.user_ns_script,
        "shared": config.shared,
        "disable_bpf_token": config.disable_bpf_token,
        "dir_confs": [
            {
                "path": d.path,
                "tmpfs": d.tmpfs,
                "options": d.options,
                "base_path": d.base_path,
            }
            for d in config.dir_confs
        ],
    }


def from_dict(data: Mapping[str, Any], origins: Optional[Mapping[str, str]] = None) -> NodeConfig:
    """Inverse of ``to_dict`` (used by the resolved-config cache)."""
    if not data["enabled"]:
        return NodeConfig(
            node=data["node"],
            entry=data["entry"] or "",
            enabled=False,
            disabled_reason=data["reason"],
            origins=dict(origins or {}),
        )
    values = dict(data)
    dirs = []
    for d in values.pop("dir_confs"):
        flag_words, tokens = parse_mount_options(d["options"])
        dirs.append(DirConf(d["path"], d["tmpfs"], flag_words, tokens, d["base_path"]))
    values["clone_ns_flags"] = tuple(values["clone_ns_flags"])
    return NodeConfig(dir_confs=tuple(dirs), origins=dict(origins or {}), **values)
