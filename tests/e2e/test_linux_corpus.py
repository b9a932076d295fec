"""Config resolution against Slurm's own parser: namespace.yaml through slurmd 26.05 and nsctl.

Each tests/configs/linux_corpus/NN-name.yaml is given to slurmd 26.05 with
``NamespaceType=namespace/linux`` (slurmd reads namespace.yaml when it starts: a file it refuses
makes it exit, with a ``fatal:`` line in its log), and when slurmd starts, to a job, whose view
(its new mounts, namespaces, the propagation of a shared mount, the scripts that ran) is
recorded. The same file goes through ``nsctl validate`` and ``nsctl show-config --format json``
in the lab, and, when nsctl accepts it, through ``nsctl setup`` of a job on the node, looked at
with ``nsctl join`` (the same probe), then ``nsctl teardown``.

NN-name.expect (YAML) says what Slurm does with the file, as observed, and what nsctl must do:

    slurm: starts | exits
    fatal: <fragment of slurmd's fatal line>             # with exits
    job:                                                  # with starts: what Slurm's job got
      isolation: none                                     #   no namespace at all, or
      fails: <fragment of slurmd's log>                   #   the job did not start, or
      base_path: "@C@/base"                               #   without Slurm's /<NodeName>
      dirs: ["/tmp bind from=@C@/base/<J>/.<J>/_tmp",     #   TARGET KIND [flags=..] [data=..]
             "/dev/shm tmpfs flags=nosuid,nodev"]         #   [from=BACKING], in mount order
      namespaces: [pid, user]                             #   besides mnt (default [])
      shared: true                                        #   default false
      scripts: [init_script]                              #   the marker scripts that ran
    nsctl: same                                           # resolves it as Slurm does, or
    nsctl: "rejected: <fragment of a validate error>"    # refuses it, or
    nsctl: "differs: <fragment of a validate warning>"   # a documented difference, then:
    nsctl_job: {...}                                      #   what nsctl's job gets instead
    warnings: [<fragment>, ...]                           # every validate warning (default [])
    man: <phrase>                                         # namespace.yaml(5) says so
    setup: {mkdir: ["@C@/scratch"]}                       # made before the jobs (<J>: job id)

In the YAML and the expectation, @C@ is a fresh directory for the file and @BIN@ the directory
of the marker scripts, which record that they ran: init_script, clone_ns_script, clone_ns_epilog
and user_ns_script (which also writes the identity map), slow (sleeps 3 s first) and fail
(exits 1). /srv is a shared mount on the node during the corpus, so that `shared: true` shows
(as "master:" propagation in the job).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import yaml
from observe import MOUNT_FLAGS, Mount, Normaliser, man_text, new_mounts, parse_mountinfo, section
from slurmlab import REPO, Lab, LabError

ON_26_05 = pytest.mark.parametrize("lab", ["26.05"], indirect=True, ids=["slurm-26.05"])

CORPUS = REPO / "tests" / "configs" / "linux_corpus"
FILES = sorted(CORPUS.glob("*.yaml"))
MARKERS = ("init_script", "clone_ns_script", "clone_ns_epilog", "user_ns_script", "slow", "fail")
FAKE_JOB = 900000  # nsctl's own jobs on the node: 900000 + NN, no Slurm job id comes near
PROBE = (
    "echo job=$SLURM_JOB_ID\n"
    "echo '== ns'; readlink /proc/self/ns/mnt /proc/self/ns/pid /proc/self/ns/user\n"
    "echo '== mountinfo'; cat /proc/self/mountinfo\n"
)


def test_every_corpus_file_has_an_expectation() -> None:
    assert len(FILES) >= 40, len(FILES)
    for path in FILES:
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.yaml", path.name), path.name
        assert path.with_suffix(".expect").is_file(), f"{path.name} has no .expect"
        load_expect(path)
    assert len({p.name[:2] for p in FILES}) == len(FILES), "two files with one number"


# ---- the lab: linux mode, marker scripts, a shared mount -------------------------------------


@dataclass
class Corpus:
    lab: Lab
    top: Path  # LAB/corpus
    bin: Path
    out: Path
    started: float = field(default_factory=time.monotonic)
    stuck: list[str] = field(default_factory=list)  # files whose Slurm job hung (end_jobs)


@pytest.fixture(scope="module")
def corpus(lab: Lab) -> Iterator[Corpus]:
    lab.configure("linux")
    top = lab.root / "corpus"
    shutil.rmtree(top, ignore_errors=True)
    here = Corpus(lab, top, top / "bin", top / "out")
    for path in (top, here.bin, here.out):
        path.mkdir()
    for name in MARKERS:
        body = "/bin/sleep 3\n" if name == "slow" else ""
        if name == "user_ns_script":
            body = (
                "echo '0 0 4294967295' > /proc/$SLURM_NS_PID/uid_map\n"
                "echo '0 0 4294967295' > /proc/$SLURM_NS_PID/gid_map\n"
            )
        body += f": > {here.out}/{name}.$SLURM_JOB_ID\n"
        body += "exit 1\n" if name == "fail" else ""
        (here.bin / name).write_text("#!/bin/sh\n" + body)
        (here.bin / name).chmod(0o755)
    lab.on_node(["mount", "--make-shared", "/srv"])
    try:
        yield here
    finally:
        lab.on_node(["mount", "--make-private", "/srv"])
        lab.stop_slurmd()  # the next configure() starts from scratch
        print(
            f"\ncorpus: {len(FILES)} files in {time.monotonic() - here.started:.1f} s; Slurm's "
            f"extern slurmstepd hung (and was killed) for: {', '.join(here.stuck) or 'none'}"
        )


# ---- what a job gets, as the expectation's vocabulary ---------------------------------------


def dir_line(
    target: str,
    kind: str,
    flags: tuple[str, ...],
    data: tuple[str, ...],
    backing: Optional[str],
) -> str:
    line = f"{target} {kind}"
    line += f" flags={','.join(flags)}" if flags else ""
    line += f" data={','.join(sorted(data))}" if data else ""
    return line + (f" from={backing}" if backing else "")


def view_of(
    mode: str, lab: Lab, c_dir: Path, job_id: str, out: str, before: list[Mount], ran: list[str]
) -> dict[str, object]:
    """The expectation's `job` for a probe's output (Slurm's job or nsctl's)."""
    norm = Normaliser("", lab.node, job_id, {}, str(lab.root))

    def clean(path: str) -> str:
        if mode == "linux":  # Slurm's base paths end in /<NodeName> (Debian's build)
            path = path.replace(f"/{lab.node}/{job_id}", f"/{job_id}")
        return norm(at_c(path, c_dir))

    links = section(out, "ns").split()
    namespaces = [link.split(":")[0] for link in links if link != lab.ns_link(link.split(":")[0])]
    mounts = new_mounts(parse_mountinfo(section(out, "mountinfo")), before)
    if "mnt" not in namespaces:
        return {"isolation": "none"}
    view: dict[str, object] = {"dirs": []}
    srv = [m for m in parse_mountinfo(section(out, "mountinfo")) if m.target == "/srv"]
    for m in mounts:
        if m.root == m.target and m.fstype != "tmpfs":  # the job dir, bound on itself
            view["base_path"] = clean(m.target).removesuffix("/<J>")
        elif m.fstype != "proc":
            kind = "tmpfs" if m.fstype == "tmpfs" else "bind"
            backing = clean(m.root) if kind == "bind" else None
            data = m.data if kind == "tmpfs" else ()  # a bind shows its file system's options
            view["dirs"].append(dir_line(clean(m.target), kind, m.flags, data, backing))
    view["namespaces"] = sorted(n for n in namespaces if n != "mnt")
    view["shared"] = bool(srv) and "master:" in srv[-1].propagation
    view["scripts"] = sorted(ran)
    return view


def at_c(text: str, c_dir: Path) -> str:
    """The file's directory as @C@, and as @C_@ in backing names (where / became _)."""
    return text.replace(str(c_dir), "@C@").replace(str(c_dir).replace("/", "_"), "@C_@")


def kernel_data(token: str) -> Optional[str]:
    """A tmpfs data option as the kernel shows it in mountinfo (None: not shown)."""
    key, _, value = token.partition("=")
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if key == "size" and not value.endswith("%"):
        number, unit = re.fullmatch(r"(\d+)([kmgtKMGT]?)", value).groups()
        pages = -(-int(number) * units[unit.lower()] // 4096)
        return f"size={pages * 4}k"
    if key == "mode":
        mode = int(value, 8)
        return None if mode == 0o1777 else f"mode={mode:o}"
    if key in ("uid", "gid"):
        return None if int(value) == 0 else token
    return token


def config_view(shown: dict, c_dir: Path, user: str) -> dict[str, object]:
    """The expectation's `job` for what `nsctl show-config --format json` resolves."""
    if not shown["enabled"]:
        return {"isolation": "none"}

    def clean(path: str) -> str:
        return at_c(path, c_dir)

    base = shown["base_path"]
    dirs = []
    for d in shown["dir_confs"]:
        path = d["path"].replace("%u", user).replace("%j", "<J>").replace("%%", "%")
        tokens = [t for t in (d["options"] or "").split(",") if t]
        flags = {t.lower() for t in tokens if t.lower() in MOUNT_FLAGS}
        data = [t for t in tokens if t.lower() not in MOUNT_FLAGS + ("relatime",)]
        if d["tmpfs"]:
            flags |= {"nosuid", "nodev"}
            shown_data = tuple(x for x in (kernel_data(t) for t in data) if x)
            dirs.append(dir_line(path, "tmpfs", sort_flags(flags), shown_data, None))
        else:
            name = path.replace("/", "_")
            backing = (
                f"{d['base_path']}/<J>/{name}" if d["base_path"] else f"{base}/<J>/.<J>/{name}"
            )
            dirs.append(dir_line(clean(path), "bind", sort_flags(flags), (), clean(backing)))
    flags = shown["clone_ns_flags"]
    scripts = [
        Path(shown[key]).name
        for key in ("init_script", "clone_ns_script", "clone_ns_epilog", "user_ns_script")
        if shown[key] and (key != "user_ns_script" or "CLONE_NEWUSER" in flags)
    ]
    return {
        "base_path": clean(base),
        "dirs": [clean(d) for d in dirs],
        "namespaces": sorted(
            n for n, f in (("pid", "CLONE_NEWPID"), ("user", "CLONE_NEWUSER")) if f in flags
        ),  # fmt: skip
        "shared": shown["shared"],
        "scripts": sorted(scripts),
    }


def sort_flags(flags: set[str]) -> tuple[str, ...]:
    return tuple(flag for flag in MOUNT_FLAGS if flag in flags)


def expected_job(expect: dict, key: str = "job") -> dict[str, object]:
    job = dict(expect[key])
    if "isolation" in job or "fails" in job:
        return job
    job.setdefault("namespaces", [])
    job.setdefault("shared", False)
    job.setdefault("scripts", [])
    job.setdefault("dirs", [])
    return job


# ---- one file through Slurm ------------------------------------------------------------------


@dataclass
class SlurmResult:
    slurmd: str  # starts, exits
    fatal: str = ""
    job: dict = field(default_factory=dict)
    log: str = ""
    stuck: bool = False  # its extern slurmstepd hung and was killed (see end_jobs)


def start_slurmd_with(lab: Lab, text: str) -> tuple[str, str, dict]:
    """slurmd restarted on namespace.yaml `text`: ("starts" | "exits", fatal line, log mark)."""
    lab.stop_slurmd()
    (lab.etc / "namespace.yaml").write_text(text)
    mark = lab.log_mark()
    lab.start_slurmd()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log = lab.logs_since(mark)
        fatal = re.search(r"fatal: (.*)", log)
        if fatal or lab.slurmd_pid() is None:
            time.sleep(0.2)  # let it finish dying
            fatal = re.search(r"fatal: (.*)", lab.logs_since(mark))
            return "exits", fatal.group(1) if fatal else "(exited without a fatal line)", mark
        if "slurmd started on" in log:
            return "starts", "", mark
        time.sleep(0.05)
    raise LabError(f"slurmd neither started nor exited:\n{lab.logs_since(mark)[-2000:]}")


def make_dirs(paths: list[str], c_dir: Path, job_id: str) -> None:
    for path in paths:
        if job_id or "<J>" not in path:
            Path(path.replace("@C@", str(c_dir)).replace("<J>", job_id)).mkdir(
                parents=True, exist_ok=True
            )


def wait_node_usable(lab: Lab) -> None:
    """After slurmd came back: the node takes jobs (a slurmd that was away may show down)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = lab.admin("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()
        if state == "idle":
            return
        if state.startswith(("down", "drain")):
            lab.admin("scontrol", "update", f"nodename={lab.node}", "state=resume", check=False)
        time.sleep(0.1)
    raise LabError(f"node is {lab.node_state()!r}")


def end_jobs(lab: Lab) -> bool:
    """Cancel the user's jobs and wait until they are gone. Slurm 26.05's extern slurmstepd
    sometimes hangs after a failed namespace setup (in a futex, after "stepd_cleanup: done"),
    and its job stays RUNNING (Reason=Prolog) for ever: such slurmstepds are killed. Returns
    whether one had to be."""
    lab.admin("scancel", "-u", lab.user, check=False)
    killed = False
    deadline = time.monotonic() + 30
    while lab.admin("squeue", "-h", "-o", "%i", check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise LabError("jobs left after scancel and killing their slurmstepds")
        if time.monotonic() > deadline - 25 and not killed:
            for pid in lab.daemon_pids("slurmstepd"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed = True
            lab.admin("scancel", "-u", lab.user, check=False)
        time.sleep(0.05)
    for pid in lab.user_processes():  # an srun whose job never started
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed


def run_probe(lab: Lab, text: str, mkdirs: list[str], c_dir: Path) -> tuple[str, str]:
    """PROBE as a job of the user: (its output, its job id). A job that cannot start gives no
    output (slurmd's log says why)."""
    if "%j" in text:
        # A held batch job, so that its %j directories exist before it starts.
        sync = lab.new_dir("corpus")
        job_id = lab.sbatch(PROBE, "-o", str(sync / "out"), "--hold")
        make_dirs(mkdirs, c_dir, job_id)
        lab.admin("scontrol", "release", job_id)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state, reason = lab.job_field(job_id, "JobState"), lab.job_field(job_id, "Reason")
            if state in ("COMPLETED", "FAILED", "") or "held" in reason:
                break
            time.sleep(0.1)
        return ((sync / "out").read_text() if (sync / "out").exists() else ""), job_id
    env = {**lab.env, "HOME": str(lab.home), "USER": lab.user, "LOGNAME": lab.user}
    argv = lab.space.argv(["srun", "-Q", "sh", "-c", PROBE], env=env, user=lab.user,
                          cwd=str(lab.home))  # fmt: skip
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as srun:  # fmt: skip
        try:
            out, err = srun.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # the job never started (see end_jobs)
            end_jobs(lab)
            out, err = srun.communicate()
    match = re.search(r"(?m)^job=(\d+)$", out)
    return (out if srun.returncode == 0 else ""), (match.group(1) if match else "")


def through_slurm(corpus: Corpus, text: str, c_dir: Path, expect: dict) -> SlurmResult:
    lab = corpus.lab
    mkdirs = expect.get("setup", {}).get("mkdir", [])
    make_dirs([d for d in mkdirs if "<J>" not in d], c_dir, "")  # as an admin would, beforehand
    started, fatal, mark = start_slurmd_with(lab, text)
    if started == "exits":
        return SlurmResult("exits", fatal, log=lab.logs_since(mark))
    wait_node_usable(lab)
    before = parse_mountinfo(Path(f"/proc/{lab.node_space().init}/mountinfo").read_text())
    out, job_id = run_probe(lab, text, mkdirs, c_dir)
    stuck = end_jobs(lab)  # the extern step's teardown (clone_ns_epilog) ends the job
    log = lab.logs_since(mark)
    if "job=" not in out:
        return SlurmResult("starts", job={"fails": log}, log=log, stuck=stuck)
    ran = [n for n in MARKERS if (corpus.out / f"{n}.{job_id}").exists()]
    job = view_of("linux", lab, c_dir, job_id, out, before, ran)
    return SlurmResult("starts", job=job, log=log, stuck=stuck)


# ---- the same file through nsctl -------------------------------------------------------------


@dataclass
class NsctlResult:
    valid: bool
    errors: list[str]
    warnings: list[str]
    shown: Optional[dict] = None
    job: Optional[dict] = None  # nsctl's own job on the node, looked at with nsctl join
    setup_error: str = ""


def through_nsctl(
    corpus: Corpus, path: Path, c_dir: Path, expect: dict, number: int
) -> NsctlResult:
    lab = corpus.lab
    res = lab.admin(lab.nsctl, "validate", str(path), "--nodes", lab.node, "--format", "json",
                    check=False)  # fmt: skip
    report = json.loads(res.stdout)
    result = NsctlResult(
        report["valid"],
        [f"{e['path']}: {e['message']}" for e in report["errors"]],
        [f"{w['path']}: {w['message']}" for w in report["warnings"]],
    )
    assert res.returncode == (0 if result.valid else 1), res
    if not result.valid:
        return result
    res = lab.admin(lab.nsctl, "show-config", "--config", str(path), "--node", lab.node,
                    "--format", "json")  # fmt: skip
    result.shown = json.loads(res.stdout)
    if not result.shown["enabled"]:
        result.job = {"isolation": "none"}
        return result
    job_id = str(FAKE_JOB + number)
    make_dirs(expect.get("setup", {}).get("mkdir", []), c_dir, job_id)
    before = parse_mountinfo(Path(f"/proc/{lab.node_space().init}/mountinfo").read_text())
    common = ["--config", str(path), "--node", lab.node, "--job-id", job_id]
    res = lab.on_node([lab.nsctl, "setup", *common, "--user", lab.user], check=False)
    try:
        if res.returncode != 0:
            result.setup_error = res.stderr
            result.job = {"fails": res.stderr}
            return result
        probe = lab.on_node(
            [
                lab.nsctl,
                "join",
                "--job-id",
                job_id,
                "--",
                "env",
                f"SLURM_JOB_ID={job_id}",
                "/bin/sh",
                "-c",
                PROBE,
            ]  # fmt: skip
        )
    finally:
        lab.on_node([lab.nsctl, "teardown", *common, "--wait"], check=False)
    ran = [n for n in MARKERS if (corpus.out / f"{n}.{job_id}").exists()]
    result.job = view_of("nsctl", lab, c_dir, job_id, probe.stdout, before, ran)
    return result


# ---- one test per file -----------------------------------------------------------------------


def describe(slurm: SlurmResult, nsctl: NsctlResult, c_dir: Path, user: str) -> str:
    """Both results, short: a failed job as its error lines only."""

    def short(job: Optional[dict]) -> object:
        if job and "fails" in job:
            lines = [line for line in job["fails"].splitlines() if "error" in line.lower()]
            return {"fails": lines[-8:]}
        return job

    shown = config_view(nsctl.shown, c_dir, user) if nsctl.shown else None
    return (
        f"Slurm: slurmd {slurm.slurmd} {slurm.fatal!r}"
        + (" (its extern slurmstepd hung and was killed)" if slurm.stuck else "")
        + f"\n  job: {short(slurm.job)}\nnsctl: valid={nsctl.valid} errors={nsctl.errors} "
        f"warnings={nsctl.warnings}\n  show-config: {shown}\n  job: {short(nsctl.job)}"
    )


def load_expect(path: Path) -> dict:
    expect = yaml.safe_load(path.with_suffix(".expect").read_text())
    assert expect["slurm"] in ("starts", "exits"), expect
    assert ("fatal" in expect) == (expect["slurm"] == "exits"), "fatal goes with exits"
    assert ("job" in expect) == (expect["slurm"] == "starts"), "job goes with starts"
    outcome = expect["nsctl"]
    assert outcome == "same" or re.match(r"(rejected|differs): ", outcome), outcome
    assert not (outcome == "same" and expect["slurm"] == "exits"), "a file slurmd refuses"
    assert outcome.startswith("differs") == ("nsctl_job" in expect), "nsctl_job goes with differs"
    if expect["slurm"] == "starts" and outcome != "same":
        assert "man" in expect, "where nsctl parts from a config Slurm takes, the man page says so"
    return expect


@ON_26_05
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_file(lab: Lab, corpus: Corpus, path: Path) -> None:
    expect = load_expect(path)
    number = int(path.name[:2])
    c_dir = corpus.top / path.stem
    c_dir.mkdir()
    text = path.read_text().replace("@C@", str(c_dir)).replace("@BIN@", str(corpus.bin))
    config = c_dir / "namespace.yaml"
    config.write_text(text)

    slurm = through_slurm(corpus, text, c_dir, expect)
    if slurm.stuck:
        corpus.stuck.append(path.stem)
    nsctl = through_nsctl(corpus, config, c_dir, expect, number)
    record = describe(slurm, nsctl, c_dir, corpus.lab.user)

    # 1. Slurm does what the expectation says (so the expectation is Slurm's real behaviour).
    assert slurm.slurmd == expect["slurm"], record
    if slurm.slurmd == "exits":
        assert expect["fatal"] in slurm.fatal, record
    else:
        want = expected_job(expect)
        if "fails" in want:
            assert "fails" in slurm.job and want["fails"] in slurm.job["fails"], record
        else:
            assert slurm.job == want, record

    # 2. nsctl resolves it the same way, or refuses it, or differs as documented; never else.
    outcome = expect["nsctl"]
    if outcome.startswith("rejected: "):
        fragment = outcome.removeprefix("rejected: ")
        assert not nsctl.valid, f"nsctl accepts what it should refuse ({fragment!r})\n{record}"
        assert any(fragment in e for e in nsctl.errors), record
    else:
        assert nsctl.valid, record
        found = list(nsctl.warnings)
        for fragment in expect.get("warnings", []) + (
            [outcome.removeprefix("differs: ")] if outcome.startswith("differs") else []
        ):
            match = [w for w in found if fragment in w]
            assert match, f"no warning with {fragment!r}\n{record}"
            found.remove(match[0])
        assert not found, f"warnings the expectation does not list: {found}\n{record}"
        want = expected_job(expect, "job" if outcome == "same" else "nsctl_job")
        if "fails" in want:
            assert "fails" in nsctl.job, f"nsctl's setup should fail too\n{record}"
        else:
            assert config_view(nsctl.shown, c_dir, corpus.lab.user) == want, record
            assert nsctl.job == want, record
    if "man" in expect:
        text = man_text(str(REPO / "man" / "namespace.yaml.5")).lower()
        assert expect["man"].lower() in text, f"namespace.yaml(5) does not say {expect['man']!r}"
