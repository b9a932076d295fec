"""Differential: Slurm 22.05's own job_container/tmpfs against nsctl, file by file.

For each job_container.conf of the corpus (tests/configs/jobcontainer), slurmd is started with
Slurm's C plugin and the file, and what happens is compared with what the corpus records (from
Slurm's source) and with what nsctl resolves: does slurmd start, and where does a job's /tmp
live (its base path, with the node name Debian's multiple-slurmd build appends) and which of
/tmp and /dev/shm are private. Where nsctl, reading as 22.05 does (--slurm-version 22.05),
accepts the file, Slurm must start and give the job what nsctl resolves; where nsctl refuses
it, the refusal is a documented message (tests/test_jobcontainer_corpus.py checks that part,
and the records, without Slurm).

On the 22.05 lab only: the corpus records what 22.05 reads (later releases read some files
differently, which jcconf's --slurm-version checks cover without Slurm).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from slurmlab import Lab, LabError, mounts_under

from nsctl import jcconf

CORPUS = Path(__file__).resolve().parents[1] / "configs" / "jobcontainer"
CASES = sorted(p.stem for p in CORPUS.glob("*.conf"))
# Debian's Slurm is built with multiple-slurmd support: job_container/tmpfs appends /NodeName
# to BasePath (slurm-lab.md), so a job's directory is BasePath/NodeName/JOBID there.
MULTIPLE_SLURMD = True
HOST_SHM_MARKER = Path("/dev/shm/nsctl-jcdiff-host")

pytestmark = pytest.mark.parametrize("lab", ["22.05"], indirect=True, ids=["slurm-22.05"])


@pytest.fixture(scope="module")
def jcdiff(lab: Lab):
    root = lab.root / "jcdiff"
    root.mkdir(exist_ok=True)
    os.chmod(root, 0o755)
    HOST_SHM_MARKER.touch()
    yield lab, root
    HOST_SHM_MARKER.unlink(missing_ok=True)
    lab.configure("tmpfs")  # back to the default job_container.conf
    assert not mounts_under(str(root)), mounts_under(str(root))
    shutil.rmtree(root, ignore_errors=True)


def concrete(text: str, base: Path, node: str) -> str:
    return text.replace("@BASE@", str(base)).replace("@NODE@", node)


def job_view(lab: Lab, base_of_job: Path) -> dict:
    """Run a job; from inside it, what /tmp and /dev/shm are; from the host, where it lives."""
    script = (
        'stat -c "%a %U" /tmp > $SYNC/tmp\n'
        "ls -A /tmp | wc -l >> $SYNC/tmp\n"
        f"test -e {HOST_SHM_MARKER} && echo host-shm > $SYNC/shm || echo own-shm > $SYNC/shm\n"
        "touch /tmp/nsctl-jcdiff-marker /dev/shm/nsctl-jcdiff-$SLURM_JOB_ID\n"
    )
    with lab.running_job(script) as job:
        job_dir = base_of_job / job.job_id
        markers = sorted(str(p.relative_to(job_dir)) for p in job_dir.rglob("nsctl-jcdiff-marker"))
        seen = {
            "job_dir": job_dir.is_dir(),
            "tmp_backing": markers,
            "shm_on_host": Path(f"/dev/shm/nsctl-jcdiff-{job.job_id}").exists(),
            "tmp": (job.sync / "tmp").read_text().split(),
            "shm": (job.sync / "shm").read_text().strip(),
            "job_id": job.job_id,
        }
    seen["left"] = os.path.lexists(job_dir)
    return seen


@pytest.mark.parametrize("name", CASES)
def test_slurm_22_05_does_what_the_corpus_records_and_nsctl_agrees(jcdiff, name):
    lab, root = jcdiff
    base = root / name
    shutil.rmtree(base, ignore_errors=True)
    text = concrete((CORPUS / f"{name}.conf").read_bytes().decode(), base, lab.node)
    expected = yaml.safe_load((CORPUS / f"{name}.expected").read_text())["slurm_22_05"]
    mark = lab.log_mark()
    try:
        lab.configure("tmpfs", job_container_conf=text)
        started = True
    except LabError:
        started = False
    log = lab.logs_since(mark)
    assert started == (expected["slurmd"] == "starts"), log
    checked = jcconf.check_text(text, "job_container.conf", (22, 5), [lab.node])
    if not started:
        assert not checked.valid, "nsctl accepts a file Slurm 22.05's slurmd refuses"
        return
    if expected["job"] == "unchecked":
        return
    if expected["job"] == "fails":
        result = lab.srun("true")
        assert result.returncode != 0, result
        if lab.node_state() != "idle":
            lab.resume_node()
        return
    recorded = Path(concrete(expected["base_path"], base, lab.node))
    base_of_job = recorded / lab.node if MULTIPLE_SLURMD else recorded
    seen = job_view(lab, base_of_job)
    assert seen["job_dir"], (seen, log)
    assert seen["tmp"] == ["700", lab.user, "0"]  # private, the user's, empty
    # 22.05 binds /tmp to the job directory's .JOBID itself (23.02 and later, and nsctl: _tmp).
    assert seen["tmp_backing"] == [f".{seen['job_id']}/nsctl-jcdiff-marker"], seen
    assert seen["shm"] == "own-shm" and not seen["shm_on_host"], seen
    assert not seen["left"], seen
    if checked.valid:  # nsctl accepts it as 22.05 reads it: the same base and directories
        resolved = jcconf.resolve(checked.data, lab.node)
        assert Path(resolved.base_path) == recorded
        assert [d.path for d in resolved.dir_confs] == expected["dirs"] == ["/tmp", "/dev/shm"]
