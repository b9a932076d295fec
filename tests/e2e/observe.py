"""What a job gets, recorded in a form that two isolation modes can be compared in.

Used by test_parity_linux.py (the same jobs under Slurm's namespace/linux and under nsctl) and
test_linux_corpus.py (namespace.yaml files through slurmd 26.05 and through nsctl). The records
name no job id, pid, namespace id or lab directory: those are replaced by placeholders, so two
records are equal exactly when the two modes gave the jobs the same thing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional

# The seven words Slurm's plugin (and nsctl) turn into mount flags. The kernel shows "relatime"
# on every mount that has none of the other atime flags, so it says nothing about the options.
MOUNT_FLAGS = ("ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime")


def unescape(field: str) -> str:
    """A mountinfo field as a path (the kernel escapes space, tab, newline and backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/PID/mountinfo."""

    mount_id: int
    parent: int
    root: str  # the path inside its file system: a bind mount's source
    target: str
    options: str  # per-mount options (rw, nosuid, ...)
    propagation: str  # "private", "shared:N", "master:N", ... (the optional fields)
    fstype: str
    source: str
    super_options: str  # the file system's own options (tmpfs: size=, mode=, ...)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies a mount across mount namespaces (ids differ between copies)."""
        return (self.root, self.target, self.fstype, self.source)

    @property
    def flags(self) -> tuple[str, ...]:
        """The mount flags among MOUNT_FLAGS, in that order."""
        present = set(self.options.split(","))
        return tuple(flag for flag in MOUNT_FLAGS if flag in present)

    @property
    def data(self) -> tuple[str, ...]:
        """tmpfs data as the kernel shows it (without the rw/ro it always repeats)."""
        return tuple(o for o in self.super_options.split(",") if o not in ("rw", "ro", ""))


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        optional = " ".join(fields[6:dash]) or "private"
        mounts.append(
            Mount(
                int(fields[0]),
                int(fields[1]),
                unescape(fields[3]),
                unescape(fields[4]),
                fields[5],
                optional,
                fields[dash + 1],
                unescape(fields[dash + 2]),
                fields[dash + 3] if len(fields) > dash + 3 else "",
            )  # fmt: skip
        )
    return mounts


def new_mounts(job: list[Mount], node: list[Mount]) -> list[Mount]:
    """The job's mounts that the node did not have before the job, in the job's mount order."""
    left = Counter(m.key for m in node)
    found = []
    for mount in job:
        if left[mount.key] > 0:
            left[mount.key] -= 1
        else:
            found.append(mount)
    return found


class Normaliser:
    """Replaces what differs from job to job and mode to mode by placeholders.

    bases maps a placeholder name ("B", "D") to a base path as namespace.yaml gives it. Slurm's
    plugin, built with multiple-slurmd support as Debian builds it, appends "/<NodeName>" to
    every base path: the job dir is B/<NodeName>/J, nsctl's is B/J (a deliberate difference:
    test_parity_linux.DELIBERATE["job_dir"]). Both become "<B>/<J>".
    """

    def __init__(
        self, mode: str, node: str, job_id: str, bases: dict[str, str], lab_root: str
    ) -> None:
        self.job_id = job_id
        pairs = []
        for name, base in bases.items():
            actual = f"{base}/{node}" if mode == "linux" else base
            pairs += [(f"{actual}/{job_id}", f"<{name}>/<J>"), (actual, f"<{name}>")]
        pairs.append((lab_root, "<LAB>"))
        # Longest first, so that a base under another base, or under the lab, wins.
        self.pairs = sorted(pairs, key=lambda pair: -len(pair[0]))

    def __call__(self, text: str) -> str:
        for old, new in self.pairs:
            text = text.replace(old, new)
        if self.job_id:
            j = re.escape(self.job_id)
            # B/J/.J/_tmp, [J:namespace], [J.0], job=J, SLURM_JOB_ID=J, _jobs_J (a backing
            # name), never a bare number (a link count, a size, a pid).
            text = re.sub(rf"(?:(?<=[/._\[=])|^){j}(?=[/.:_\]\s]|$)", "<J>", text, flags=re.M)
            # slurmd's spool dir for the job: job00042.
            text = text.replace(f"/job{int(self.job_id):05d}/", "/job<J>/")
        return text


def slurm_messages(text: str) -> str:
    """Slurm's messages without what changes from job to job: timestamps, job and step ids."""
    text = re.sub(r"(?m)^\[[0-9T:.-]+\] ", "", text)
    text = re.sub(r"\bAT \d{4}-\d\d-\d\dT[\d:]+", "AT <time>", text)
    text = re.sub(r"\b(JOB|job|StepId=|JobId=)( ?)\d+", r"\1\2<J>", text)
    return text


def holder_name(text: str) -> str:
    """Both holders as "<holder>": Slurm's is "slurmstepd: [J:namespace]", nsctl's
    "nsctl: [J:namespace]" (a deliberate difference: DELIBERATE["holder_name"])."""
    return re.sub(r"(slurmstepd|nsctl): \[(\d+|<J>):namespace\]", "<holder>", text)


def mount_view(
    mounts: list[Mount], normalise: Normaliser
) -> list[tuple[str, str, str, tuple[str, ...], tuple[str, ...], str]]:
    """(target, fstype, source root, flags, tmpfs data, propagation) of each mount, normalised."""
    view = []
    for m in mounts:
        root = normalise(m.root) if m.fstype != "tmpfs" else "-"
        data = m.data if m.fstype == "tmpfs" else ()
        view.append((normalise(m.target), m.fstype, root, m.flags, data, m.propagation))
    return view


def env_lines(text: str) -> dict[str, str]:
    """`env` output as a dict (a value may not hold a newline here)."""
    found = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            found[key] = value
    return found


def section(text: str, name: str) -> Optional[str]:
    """The lines after "== name" up to the next "== " line (the probes print such sections)."""
    match = re.search(rf"(?ms)^== {re.escape(name)}\n(.*?)(?=^== |\Z)", text)
    return match.group(1) if match else None


def man_text(path: str, section: Optional[str] = None) -> str:
    """A man page's roff source (or one .SH section of it) as plain text, lines joined and
    spaces collapsed, for checking that the page says something."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if section is not None:
        starts = [i for i, line in enumerate(lines) if line.strip('"') == f".SH {section}"
                  or line == f'.SH "{section}"']  # fmt: skip
        if not starts:
            return ""
        rest = lines[starts[0] + 1 :]
        ends = [i for i, line in enumerate(rest) if line.startswith(".SH ")]
        lines = rest[: ends[0]] if ends else rest
    words = []
    for line in lines:
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 else ""
            line = line.replace('"', "")
        line = re.sub(r"\\f[BIRP]", "", line)
        for old, new in (("\\-", "-"), ("\\(aq", "'"), ("\\(dq", '"'), ("\\e", "\\"),
                         ("\\&", ""), ("\\ ", " ")):  # fmt: skip
            line = line.replace(old, new)
        words.append(line)
    return re.sub(r"\s+", " ", " ".join(words))
