"""Pure configuration layer: find namespace.yaml, resolve it for one node, expand job paths.

No ctypes, no mounts, no jsonschema, no YAML: ``setup``/``teardown``/``join`` import this module
for every job on every node. One option table (``OPTIONS``: name, kind, default) drives how each
key is read (``validate.py``), merged and resolved (here) and where its value came from.
Resolution follows Slurm's namespace/linux merge rules exactly (defaults first, then only the
FIRST matching node_confs entry; text overrides only when non-empty, booleans and waits whenever
the key is present; ``dir_confs`` replaces the whole list). ``resolve`` takes the typed document
that ``validate.check_text`` builds and trusts it; ``merge`` and ``dir_specs`` are the same code
validation runs its per-entry layout checks on.
"""

from __future__ import annotations

import os
from types import MappingProxyType

from .deps import dependency
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

DEFAULT_CONFIG = "/etc/slurm/namespace.yaml"
NAMESPACE_YAML = "namespace.yaml"
JOB_CONTAINER_CONF = "job_container.conf"

# The two file formats, named as --format-in names them, and the Slurm plugin each belongs to.
YAML = "yaml"  # namespace.yaml: Slurm's namespace/linux (25.11 and later)
TMPFS = "tmpfs"  # job_container.conf: namespace/tmpfs, formerly job_container/tmpfs (20.11.5+)
FORMATS = (YAML, TMPFS)
LINUX_PLUGIN = "namespace/linux"
TMPFS_PLUGIN = "namespace/tmpfs"
DEFAULT_DIRS = "/tmp,/dev/shm"
DEFAULT_WAIT = 10
USER_NS_SCRIPT_WAIT = 10  # fixed in Slurm, not configurable
INIT_SCRIPT_WAIT = 10  # fixed in Slurm, not configurable
DEV_SHM = "/dev/shm"

BUILTIN = "built-in default"
MAX_WAIT = 2_147_483  # seconds; Slurm's milliseconds (a signed int) overflow from 2,147,484 on

# Option kinds. Each kind fixes how a value is read (validate.py has one reader per kind) and
# how a node entry overrides the defaults (Slurm: booleans and waits whenever the key is
# present, text only when it is not empty, dir_confs as a whole list that also clears dirs).
BOOL = "bool"  # y/yes/t/true/on or n/no/f/false/off
WAIT = "wait"  # whole seconds, 0 means DEFAULT_WAIT
BASE_PATH = "base_path"  # absolute, or none; %h and %n expanded
SCRIPT = "script"  # an absolute path
FLAGS = "flags"  # CLONE_* names: a list or a comma-separated string
DIRS = "dirs"  # absolute directories, comma-separated
DIR_CONFS = "dir_confs"  # a list of DIR_CONF_OPTIONS mappings
DIR_PATH = "dir_path"  # a mount target; %j %S %u %% expanded per job
DIR_BASE = "dir_base"  # a per-directory backing root; %h and %n expanded
MOUNT_OPTIONS = "mount_options"  # mount flags and tmpfs data, comma-separated
HOSTLIST = "hostlist"  # a Slurm hostlist, or a list of them
OPTION_MAP = "option_map"  # a mapping of OPTIONS
NODE_LIST = "node_list"  # a list of NODE_CONF_OPTIONS mappings

PRESENT, NON_EMPTY, REPLACE = "present", "non-empty", "replace"
MERGE_RULE = {
    BOOL: PRESENT,
    WAIT: PRESENT,
    BASE_PATH: NON_EMPTY,
    SCRIPT: NON_EMPTY,
    FLAGS: NON_EMPTY,
    DIRS: NON_EMPTY,
    DIR_CONFS: REPLACE,
}


class Option(Record):
    """One key of namespace.yaml. ``default`` is the built-in value when no entry sets it."""

    name: str
    kind: str
    default: Any = None
    required: bool = False


# Keys of defaults and node_confs[].options, in the order show-config prints them. Every name
# but dirs (which only feeds dir_confs) is a NodeConfig field of the same name.
OPTIONS = (
    Option("base_path", BASE_PATH),
    Option("auto_base_path", BOOL, False),
    Option("clone_ns_flags", FLAGS, ()),
    Option("clone_ns_script", SCRIPT),
    Option("clone_ns_script_wait", WAIT, DEFAULT_WAIT),
    Option("clone_ns_epilog", SCRIPT),
    Option("clone_ns_epilog_wait", WAIT, DEFAULT_WAIT),
    Option("init_script", SCRIPT),
    Option("user_ns_script", SCRIPT),
    Option("shared", BOOL, False),
    Option("disable_bpf_token", BOOL, False),
    Option("dir_confs", DIR_CONFS),
    Option("dirs", DIRS, DEFAULT_DIRS),
)
DIR_CONF_OPTIONS = (
    Option("path", DIR_PATH, required=True),
    Option("base_path", DIR_BASE),
    Option("options", MOUNT_OPTIONS, ""),
    Option("tmpfs", BOOL, False),
)
NODE_CONF_OPTIONS = (
    Option("nodes", HOSTLIST, required=True),
    Option("options", OPTION_MAP, required=True),
)
TOP_OPTIONS = (Option("defaults", OPTION_MAP), Option("node_confs", NODE_LIST))

OPTION_KEYS = tuple(option.name for option in OPTIONS)
DIR_CONF_KEYS = tuple(option.name for option in DIR_CONF_OPTIONS)
NODE_CONF_KEYS = tuple(option.name for option in NODE_CONF_OPTIONS)
TOP_KEYS = tuple(option.name for option in TOP_OPTIONS)
STRING_KEYS = tuple(o.name for o in OPTIONS if o.kind in (BASE_PATH, SCRIPT, DIRS))
BOOL_KEYS = tuple(o.name for o in OPTIONS if o.kind == BOOL)
WAIT_KEYS = tuple(o.name for o in OPTIONS if o.kind == WAIT)
RESOLVED_KEYS = tuple(name for name in OPTION_KEYS if name != "dirs")  # the NodeConfig fields
TMPFS_FIELDS = ("plugin", "entire_step_in_ns")  # NodeConfig fields only job_container.conf sets

CLONE_FLAGS = ("CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER")

# Mount option tokens that become mount(2) flags; every other known token is tmpfs data.
MOUNT_FLAGS = ("noexec", "nosuid", "nodev", "ro", "noatime", "nodiratime", "relatime")
TMPFS_DATA_KEYS = ("size", "mode", "nr_inodes", "uid", "gid", "huge")

# The escapes nsctl expands in dir_confs[].path at setup time.
JOB_ESCAPES = {"j": "job id", "S": "SLUID", "u": "user name", "%": "a literal %"}


class DirConf(Record):
    """One private directory, with every default made explicit."""

    path: str  # target inside the job; may hold %j %S %u %% (expanded per job)
    tmpfs: bool
    flags: tuple[str, ...] = ()  # lower-case mount flag names, in the order given
    data: tuple[str, ...] = ()  # tmpfs data tokens such as "size=8g"
    base_path: Optional[str] = None  # per-dir backing root (%h/%n expanded), bind only

    @property
    def options(self) -> str:
        return ",".join(self.flags + self.data)


class NodeConfig(Record):
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
    # Whose behaviour nsctl reproduces on this node: namespace/tmpfs (a job_container.conf)
    # replaces the node's /dev/shm with a tmpfs without flags and hides the job directory
    # inside the job (plan.py). EntireStepInNS is that file's; namespace/linux always puts the
    # whole step inside, and nsctl's SPANK plugin does the same either way (job_container.conf(5)).
    plugin: str = LINUX_PLUGIN
    entire_step_in_ns: bool = True

    @property
    def tmpfs_plugin(self) -> bool:
        return self.plugin == TMPFS_PLUGIN

    @property
    def pid_ns(self) -> bool:
        return "CLONE_NEWPID" in self.clone_ns_flags

    @property
    def user_ns(self) -> bool:
        return "CLONE_NEWUSER" in self.clone_ns_flags


# ---------------------------------------------------------------------------------------------
# Where things come from


def config_path(explicit: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """--config, else $NSCTL_CONFIG, else namespace.yaml beside $SLURM_CONF (or in /etc/slurm
    without it), else job_container.conf there when only that exists.

    SLURM_CONF also covers configless Slurm, whose cached config directory it names. With
    neither file, the namespace.yaml path (reading it then says it is missing).
    """
    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get("NSCTL_CONFIG"):
        return env["NSCTL_CONFIG"]
    directory = os.path.dirname(env["SLURM_CONF"] if env.get("SLURM_CONF") else DEFAULT_CONFIG)
    yaml_path = os.path.join(directory, NAMESPACE_YAML)
    tmpfs_path = os.path.join(directory, JOB_CONTAINER_CONF)
    if not os.path.exists(yaml_path) and os.path.exists(tmpfs_path):
        return tmpfs_path
    return yaml_path


def config_format(path: str, explicit: Optional[str] = None) -> str:
    """--format-in, else by the file name: a name ending in .conf is a job_container.conf."""
    if explicit:
        return explicit
    return TMPFS if os.path.basename(path).endswith(".conf") else YAML


def slurm_wait(value: int) -> str:
    """What Slurm's script runner does with a stored wait: it multiplies the seconds into
    milliseconds in 32 bits and reads them as a signed int, where 0 or less means no limit."""
    if value == 0:
        return f"wait the default {DEFAULT_WAIT} s"
    ms = (value * 1000) & 0xFFFFFFFF
    ms -= 2**32 if ms >= 2**31 else 0
    if ms <= 0:
        return "wait without any time limit"
    return f"wait {ms // 1000} s" if ms % 1000 == 0 else f"wait {ms / 1000:.3f} s"


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
    if "%" not in template:
        return template
    values = {"j": job_id, "u": user, "%": "%", "S": sluid}
    parts = template.split("%")
    out = [parts[0]]
    index = 1
    while index < len(parts):
        part = parts[index]
        if part == "" and index + 1 < len(parts):  # "%%": a literal %
            out.append("%" + parts[index + 1])
            index += 2
            continue
        if part == "":
            raise ValueError(f"a lone % at the end of {template!r}")
        letter = part[0]
        if letter not in values:
            raise ValueError(f"unknown escape %{letter} in {template!r}")
        if values[letter] is None:
            raise ValueError(f"{template!r} uses %S but the job has no SLUID")
        out.append(values[letter] + part[1:])
        index += 1
    return "".join(out)


def is_under(path: str, root: str) -> bool:
    """True when path equals root or lies below it (a path-boundary prefix match)."""
    path, root = normalise_dir(path), normalise_dir(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def slurm_node_hostnames(slurm_conf: Optional[str]) -> dict[str, str]:
    """NodeName -> NodeHostname from slurm.conf (only names that set NodeHostname)."""
    hostlist = dependency("hostlist")  # only to match nodes: not on the Prolog's cached path

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
    hostlist = dependency("hostlist")  # only to match nodes: not on the Prolog's cached path

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
    hostlist = dependency("hostlist")  # only to match nodes: not on the Prolog's cached path

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


class Setting(Record):
    """A merged option value and the key path it was written at (``()``: the built-in default)."""

    value: Any
    path: tuple = ()

    @property
    def origin(self) -> str:
        return origin_of(self.path)


def origin_of(path: tuple) -> str:
    """The origin of a value written at ``path``: defaults, node_confs[i], or BUILTIN for ()."""
    if not path:
        return BUILTIN
    return "defaults" if path[0] == "defaults" else f"node_confs[{path[1]}]"


def slurm_text(value: Any) -> str:
    """A text option as Slurm stores it: a list (clone_ns_flags) joined with commas, null as ""."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _overlay(merged: dict[str, Setting], options: Any, prefix: tuple) -> None:
    if not isinstance(options, dict):
        return
    for option in OPTIONS:
        if option.name not in options:
            continue
        value = options[option.name]
        if MERGE_RULE[option.kind] != NON_EMPTY or slurm_text(value):
            merged[option.name] = Setting(value, (*prefix, option.name))
    if "dir_confs" in options:
        merged.pop("dirs", None)  # a dir_confs list (even []) replaces dirs, wherever it was set


def merge(doc: Optional[Mapping[str, Any]], index: Optional[int]) -> dict[str, Setting]:
    """Slurm's merge: every key of defaults, then node_confs[index].options (None: no entry)
    on top by each option's rule. Only keys some entry sets are in the result."""
    doc = doc or {}
    merged: dict[str, Setting] = {}
    _overlay(merged, doc.get("defaults"), ("defaults",))
    if index is not None:
        entry = doc["node_confs"][index]
        _overlay(merged, entry.get("options"), ("node_confs", index, "options"))
    return merged


class DirSpec(Record):
    """One private directory as merged, before normalisation and %h/%n expansion."""

    path: str  # as written
    tmpfs: bool  # tmpfs: true, or /dev/shm (trailing slashes ignored)
    options: str
    base_path: Optional[str]  # as written; None when unset or for a tmpfs
    where: tuple  # key path of the path (of dirs for the dirs string); () when built in


def dir_specs(merged: Mapping[str, Setting]) -> tuple[list[DirSpec], Setting]:
    """The directories a merged configuration mounts, and the setting they come from."""
    if "dir_confs" in merged:
        source = merged["dir_confs"]
        specs = []
        for index, raw in enumerate(source.value or []):
            if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
                continue  # only in a document that did not validate
            path = raw["path"]
            tmpfs = raw.get("tmpfs") is True or normalise_dir(path) == DEV_SHM
            base = raw.get("base_path") or None
            where = (*source.path, index, "path")
            specs.append(
                DirSpec(path, tmpfs, raw.get("options") or "", None if tmpfs else base, where)
            )
        return specs, source
    source = merged.get("dirs") or Setting(DEFAULT_DIRS)
    # Slurm splits dirs on commas and skips empty entries (strtok); validation refuses those.
    paths = [token for token in str(source.value).split(",") if token]
    where = source.path
    return [DirSpec(p, normalise_dir(p) == DEV_SHM, "", None, where) for p in paths], source


_SEARCH = -1  # resolve(): find the matching entry by expanding the hostlists


def resolve(
    doc: Optional[Mapping[str, Any]],
    node: str,
    hostname: Optional[str] = None,
    *,
    index: Optional[int] = _SEARCH,
) -> NodeConfig:
    """Resolve a validated, typed document for one node, recording where each value came from.

    ``index`` is the node_confs entry that matches ``node`` (None: none does) when the caller
    already knows it: a report over 100,000 nodes must not expand every hostlist per node.
    """
    hostname = hostname or node
    doc = doc or {}
    if index == _SEARCH:
        index = matching_entry(doc, node)
    entry = "defaults" if doc.get("defaults") is not None else ""
    if index is not None:
        entry = f"node_confs[{index}]"
    merged = merge(doc, index)
    origins = {name: setting.origin for name, setting in merged.items() if name != "dirs"}

    base = slurm_text(merged["base_path"].value) if "base_path" in merged else ""
    if not base:
        reason = "no base_path applies to this node" if entry else "namespace.yaml sets nothing"
        return NodeConfig(node=node, entry=entry, enabled=False, disabled_reason=reason)
    if base[:4].lower() == "none":  # Slurm's test: a 4-character prefix, in any case
        return NodeConfig(
            node=node,
            entry=entry,
            enabled=False,
            disabled_reason=f"base_path is none ({origins['base_path']})",
            origins=origins,
        )

    specs, source = dir_specs(merged)
    dir_confs = []
    for spec in specs:
        flag_words, data = parse_mount_options(spec.options)
        dir_base = spec.base_path and normalise_dir(
            expand_node_escapes(spec.base_path, node, hostname)
        )
        dir_confs.append(DirConf(normalise_dir(spec.path), spec.tmpfs, flag_words, data, dir_base))

    values: dict[str, Any] = {}
    for option in OPTIONS:
        setting = merged.get(option.name)
        value = option.default if setting is None else setting.value
        if option.kind == BOOL:
            values[option.name] = bool(value)
        elif option.kind == WAIT:
            values[option.name] = int(value or 0) or DEFAULT_WAIT  # Slurm: 0 means the default
        elif option.kind == SCRIPT:
            values[option.name] = value or None
    flags = ["CLONE_NEWNS"]
    for token in flag_tokens(merged["clone_ns_flags"].value if "clone_ns_flags" in merged else []):
        if token.upper() not in flags:
            flags.append(token.upper())
    origins["dir_confs"] = source.origin
    for name in RESOLVED_KEYS:
        origins.setdefault(name, BUILTIN)
    return NodeConfig(
        node=node,
        entry=entry,
        enabled=True,
        base_path=normalise_dir(expand_node_escapes(base, node, hostname)),
        clone_ns_flags=tuple(flags),
        dir_confs=tuple(dir_confs),
        origins={name: origins[name] for name in RESOLVED_KEYS},
        **values,
    )


# ---------------------------------------------------------------------------------------------
# Serialisation (show-config, the resolved-config cache)


def _dir_dict(d: DirConf) -> dict[str, Any]:
    return {"path": d.path, "tmpfs": d.tmpfs, "options": d.options, "base_path": d.base_path}


def to_dict(config: NodeConfig) -> dict[str, Any]:
    """The resolved configuration as plain data, every default explicit (show-config, cache)."""
    # The plugin and EntireStepInNS are shown for a job_container.conf only: namespace.yaml's
    # output stays what it always was.
    tmpfs = {"plugin": config.plugin} if config.tmpfs_plugin else {}
    if not config.enabled:
        return {
            "node": config.node,
            "entry": config.entry or None,
            "enabled": False,
            **tmpfs,
            "reason": config.disabled_reason,
        }
    data: dict[str, Any] = {"node": config.node, "entry": config.entry, "enabled": True, **tmpfs}
    for name in RESOLVED_KEYS:
        value = getattr(config, name)
        if name == "clone_ns_flags":
            value = list(value)
        elif name == "dir_confs":
            value = [_dir_dict(d) for d in value]
        data[name] = value
    if config.tmpfs_plugin:
        data["entire_step_in_ns"] = config.entire_step_in_ns
    return data


def from_dict(data: Mapping[str, Any], origins: Optional[Mapping[str, str]] = None) -> NodeConfig:
    """Inverse of ``to_dict`` (used by the resolved-config cache)."""
    plugin = data.get("plugin", LINUX_PLUGIN)
    if not data["enabled"]:
        return NodeConfig(
            node=data["node"],
            entry=data["entry"] or "",
            enabled=False,
            disabled_reason=data["reason"],
            origins=dict(origins or {}),
            plugin=plugin,
        )
    values = {name: data[name] for name in RESOLVED_KEYS}
    values["plugin"] = plugin
    values["entire_step_in_ns"] = data.get("entire_step_in_ns", True)
    dirs = []
    for d in values.pop("dir_confs"):
        flag_words, tokens = parse_mount_options(d["options"])
        dirs.append(DirConf(d["path"], d["tmpfs"], flag_words, tokens, d["base_path"]))
    values["clone_ns_flags"] = tuple(values["clone_ns_flags"])
    return NodeConfig(
        node=data["node"],
        entry=data["entry"],
        enabled=True,
        dir_confs=tuple(dirs),
        origins=dict(origins or {}),
        **values,
    )
