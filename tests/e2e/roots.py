"""Debian roots for the e2e labs: one per Slurm version, made with debootstrap and cached.

A root is ``CACHE/<suite>/root`` with ``CACHE/<suite>/stamp.json`` beside it. The stamp holds the
recipe version and the versions of the packages that matter; a root is reused when its stamp
matches the recipe and the packages installed in it (read from its dpkg status file), and rebuilt
otherwise (missing, half-built, broken or made by an older recipe). Builds happen in
``root.new`` and are renamed into place only once complete, under a lock, so an interrupted or
concurrent run never leaves a half-made root that looks usable.

debootstrap runs in a private mount namespace and a PID namespace of its own: the ``/proc`` it
mounts in the target cannot stay on the host, and no daemon a package's postinst might start can
outlive the build (``policy-rc.d`` also forbids them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

import labns

CACHE = Path(os.environ.get("NSCTL_LAB_CACHE", "/var/cache/nsctl-lab"))
MIRROR = os.environ.get("NSCTL_LAB_MIRROR", "http://deb.debian.org/debian")
# What the labs need in every root: Slurm and munge, spank.h, and what nsctl's install and the
# SPANK plugin's build need (README: a venv, pip, gcc and make); sshd, ssh, pam_slurm_adopt and
# the PAM headers for pam_nsctl (tests/e2e/test_pam.py).
PACKAGES = (
    "slurmd",
    "slurmctld",
    "slurm-client",
    "munge",
    "libslurm-dev",
    "procps",
    "util-linux",
    "python3",
    "python3-venv",
    "gcc",
    "make",
    "libc6-dev",
    "openssh-server",
    "openssh-client",
    "libpam-slurm-adopt",
    "libpam0g-dev",
)
# Bump when the recipe below changes, so cached roots made by an older one are rebuilt.
RECIPE = 2
# The job user inside every root. Its uid is deliberately not the host's nsctltest (1001), so a
# lab's job processes can never be mistaken for those of a cluster running on the host.
JOB_USER, JOB_UID = "nsctltest", 4242
# Where the labs' directories are bound inside the roots (the same path as on the host).
LAB_PARENT = Path("/var/lib/nsctl-e2e")


@dataclass(frozen=True)
class Suite:
    """A Debian suite and the Slurm release it ships."""

    version: str  # Slurm's major.minor, the lab's id
    suite: str

    @property
    def dir(self) -> Path:
        return CACHE / self.suite


SUITES = {
    "22.05": Suite("22.05", "bookworm"),
    "24.11": Suite("24.11", "trixie"),
    "26.05": Suite("26.05", "sid"),
}


class RootError(RuntimeError):
    """A root could not be built (debootstrap or a build step failed)."""


def installed_versions(root: Path) -> dict[str, str]:
    """Package -> version for the packages in PACKAGES installed in the root (dpkg's status)."""
    versions: dict[str, str] = {}
    try:
        text = (root / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return versions
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") in PACKAGES and fields.get("Status") == "install ok installed":
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


def read_stamp(suite: Suite) -> Optional[dict]:
    try:
        return json.loads((suite.dir / "stamp.json").read_text())
    except (OSError, ValueError):
        return None


def usable(suite: Suite) -> bool:
    """True when the cached root is complete, made by this recipe, and still what it says."""
    stamp = read_stamp(suite)
    root = suite.dir / "root"
    if not stamp or stamp.get("recipe") != RECIPE or stamp.get("suite") != suite.suite:
        return False
    needed = (
        "usr/sbin/slurmd", "usr/sbin/slurmctld", "usr/bin/srun", "usr/sbin/munged",
        "usr/include/slurm/spank.h", "usr/bin/python3", "usr/bin/gcc", "usr/bin/make",
        "usr/sbin/sshd", "usr/bin/ssh", "usr/include/security/pam_modules.h",
    )  # fmt: skip
    if not all((root / path).exists() for path in needed):
        return False
    return installed_versions(root) == stamp.get("packages")


@contextlib.contextmanager
def locked(suite: Suite) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{suite.suite}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(cmd: list[str], timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise RootError(f"{cmd[:8]} exited {result.returncode}:\n{tail}")
    return result


def isolated(cmd: list[str]) -> list[str]:
    """cmd in a private mount namespace and a new PID namespace: its mounts and processes go
    when it ends."""
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            "--mount-proc", *cmd]  # fmt: skip


def build(suite: Suite) -> dict:
    """debootstrap the suite into root.new, finish it, write the stamp, move it into place."""
    if not shutil.which("debootstrap"):
        raise RootError("debootstrap is not installed (apt-get install -y debootstrap)")
    new = suite.dir / "root.new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    began = time.monotonic()
    include = ",".join(PACKAGES)
    run(isolated(["debootstrap", "--variant=minbase", f"--include={include}", "--foreign",
                  suite.suite, str(new), MIRROR]))  # fmt: skip
    # No daemon may start while packages are configured (there is no init to stop it again).
    policy = new / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    run(isolated(["chroot", str(new), "/debootstrap/debootstrap", "--second-stage"]))
    run(["chroot", str(new), "groupadd", "-g", str(JOB_UID), JOB_USER])
    run(["chroot", str(new), "useradd", "-u", str(JOB_UID), "-g", str(JOB_UID), "-M", "-d",
         "/nonexistent", "-s", "/bin/sh", JOB_USER])  # fmt: skip
    for mountpoint in (LAB_PARENT, Path("/.oldroot")):
        (new / mountpoint.relative_to("/")).mkdir(parents=True, exist_ok=True)
    run(["chroot", str(new), "apt-get", "clean"])  # the downloaded .debs: ~100 MB per root
    stamp = {
        "recipe": RECIPE,
        "suite": suite.suite,
        "mirror": MIRROR,
        "packages": installed_versions(new),
        "build_seconds": round(time.monotonic() - began, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    missing = sorted(set(PACKAGES) - set(stamp["packages"]))
    if missing:
        raise RootError(f"{suite.suite}: packages not installed: {missing}")
    old = suite.dir / "root"
    if old.exists():
        shutil.rmtree(old)
    new.rename(old)
    (suite.dir / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
    return stamp


def ensure(suite: Suite) -> tuple[Path, IO[str]]:
    """The suite's root, built when missing or unusable, and a file holding a shared lock that
    says it is in use: keep it open while a lab runs from the root, close it after. A root in
    use is never rebuilt under a running lab (of this or another test run): that fails."""
    CACHE.mkdir(parents=True, exist_ok=True)
    in_use = open(CACHE / f"{suite.suite}.in-use", "w")  # noqa: SIM115 (returned, held)
    try:
        fcntl.flock(in_use, fcntl.LOCK_SH)
        with locked(suite):
            if not usable(suite):
                try:
                    fcntl.flock(in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RootError(
                        f"the cached {suite.suite} root must be rebuilt, but a running lab uses it"
                    ) from None
                (suite.dir / "stamp.json").unlink(missing_ok=True)
                build(suite)
                fcntl.flock(in_use, fcntl.LOCK_SH)
        return suite.dir / "root", in_use
    except BaseException:
        in_use.close()
        raise


IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build",
    "dist", "*.egg-info", "*.so", "*.o", "nsctl-holder",
)  # fmt: skip


def copy_repo(repo: Path, dest: Path) -> Path:
    """The working tree as it is (uncommitted changes included), without build products."""
    shutil.copytree(repo, dest, symlinks=True, ignore=IGNORED)
    return dest


def ensure_wheelhouse(suite: Suite, repo: Path) -> Path:
    """Wheels of nsctl's dependencies (and setuptools, to build nsctl) for the root's Python.

    The labs have no network, so nsctl is installed there from a copy of the repository with
    ``pip install --no-index --find-links WHEELHOUSE``. The wheelhouse is made by the root's own
    pip (so it fits the root's Python) in the root with the host's network, and cached by the
    hash of pyproject.toml (the dependencies are declared there).
    """
    key = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()[:16]
    dest = suite.dir / "wheels" / key
    with locked(suite):
        if (dest / "complete").is_file():
            return dest
        work = suite.dir / "wheels" / f"{key}.new"
        shutil.rmtree(work, ignore_errors=True)
        (work / "wheels").mkdir(parents=True)
        source = copy_repo(repo, work / "src")
        # (on a scratch tmpfs over /srv: a build leaves no mount points in the cached root)
        binds = [
            (str(source), "/srv/nsctl-src", False),
            (str(work / "wheels"), "/srv/wheels", False),
        ]
        binds += [(path, path, True) for path in ("/etc/resolv.conf", "/etc/ssl/certs")
                  if os.path.exists(path)]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PIP_NO_CACHE_DIR": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
        if os.path.isfile("/etc/ssl/certs/ca-certificates.crt"):
            env["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
        script = (
            "python3 -m venv /tmp/venv && /tmp/venv/bin/pip wheel -q --use-pep517 -w /srv/wheels"
            " /srv/nsctl-src"
            " && /tmp/venv/bin/pip download -q -d /srv/wheels setuptools"
            " && rm -f /srv/wheels/nsctl-*.whl"
        )
        done = labns.run_in_root(suite.dir / "root", binds, ["sh", "-c", script], env, ["/srv"])
        if done.returncode != 0:
            raise RootError(f"{suite.suite}: making the wheelhouse failed:\n{done.stderr[-4000:]}")
        wheels = sorted(p.name for p in (work / "wheels").iterdir())
        (work / "wheels" / "complete").write_text("\n".join(wheels) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        (work / "wheels").rename(dest)
        shutil.rmtree(work)
        return dest
