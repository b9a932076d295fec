"""The differential corpus (tests/configs/jobcontainer): job_container.conf files, each with what
Slurm 22.05's job_container/tmpfs does with it and what nsctl makes of it.

Here, without Slurm: nsctl gives exactly the recorded messages and settings, and the two agree
as the issue asks: where nsctl, reading as Slurm 22.05 does (``--slurm-version 22.05``), accepts
a file, slurmd starts with it and the job gets the base path and directories nsctl resolves;
otherwise nsctl refuses the file, with a message job_container.conf(5) documents. What Slurm
22.05 does is read from its source and recorded in each ``.expected``; tests/e2e/
test_jobcontainer.py checks those records against Slurm's own plugin on a real cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_man import JOB_CONTAINER_5, items, page

from nsctl import jcconf

CORPUS = Path(__file__).parent / "configs" / "jobcontainer"
CASES = sorted(p.stem for p in CORPUS.glob("*.conf"))
NODE = "lab1"  # the e2e lab's node (tests/e2e/slurmlab.py)
BASE = "/var/lib/nsctl-lab/jcdiff/case"  # any absolute base; the e2e test uses its own


def case(name: str) -> tuple[str, dict]:
    text = (CORPUS / f"{name}.conf").read_bytes().decode()
    expected = yaml.safe_load((CORPUS / f"{name}.expected").read_text())
    return text, expected


def concrete(text: str, base: str = BASE) -> str:
    return text.replace("@BASE@", base).replace("@NODE@", NODE)


def placeholders(text: str, base: str = BASE) -> str:
    return text.replace(base, "@BASE@")


def nsctl_reads(text: str, version=None) -> jcconf.Checked:
    return jcconf.check_text(concrete(text), "job_container.conf", version, [NODE])


def test_the_corpus_is_big_enough_and_complete():
    assert len(CASES) >= 20
    for name in CASES:
        assert (CORPUS / f"{name}.expected").is_file(), name
    outcomes = [case(name)[1]["slurm_22_05"]["slurmd"] for name in CASES]
    assert {"starts", "exits"} == set(outcomes)
    assert outcomes.count("exits") >= 8 and outcomes.count("starts") >= 8


@pytest.mark.parametrize("name", CASES)
def test_nsctl_gives_the_recorded_messages_and_settings(name):
    text, expected = case(name)
    newest = nsctl_reads(text)
    assert [placeholders(str(i)) for i in newest.errors] == expected["nsctl"]["errors"]
    assert [placeholders(str(i)) for i in newest.warnings] == expected["nsctl"].get("warnings", [])
    old = nsctl_reads(text, (22, 5))
    assert [placeholders(str(i)) for i in old.errors] == expected["nsctl_22_05"]["errors"]
    if newest.valid:
        resolved = jcconf.resolve(newest.data, NODE)
        got = {"enabled": resolved.enabled}
        if resolved.enabled:
            got.update(
                base_path=placeholders(resolved.base_path),
                auto_base_path=resolved.auto_base_path,
                dirs=[d.path for d in resolved.dir_confs],
            )
        else:
            got["reason"] = resolved.disabled_reason
        assert got == expected["nsctl"]["lab1"]
    else:
        assert "lab1" not in expected["nsctl"]


@pytest.mark.parametrize("name", CASES)
def test_nsctl_and_slurm_22_05_agree_or_nsctl_refuses(name):
    text, expected = case(name)
    slurm = expected["slurm_22_05"]
    old = nsctl_reads(text, (22, 5))
    if not old.valid:
        return  # refused, with documented messages (next test)
    assert slurm["slurmd"] == "starts", "nsctl accepts what Slurm 22.05's slurmd refuses"
    resolved = jcconf.resolve(old.data, NODE)
    assert resolved.enabled  # 22.05 cannot turn the plugin off
    assert placeholders(resolved.base_path) == slurm["base_path"]
    assert [d.path for d in resolved.dir_confs] == slurm["dirs"]
    if slurm["job"] == "fails":
        # Slurm's job fails because the base path is missing: so would nsctl's setup.
        assert resolved.auto_base_path is False
    else:
        assert slurm["job"] == "runs"


@pytest.mark.parametrize("name", CASES)
def test_every_refusal_is_a_documented_message(name):
    tags = list(items(page(JOB_CONTAINER_5)["DIAGNOSTICS"]))
    text, _ = case(name)
    for version in (None, (22, 5)):
        for issue in nsctl_reads(text, version).errors:
            assert any(tag in issue.message for tag in tags), issue.message


def test_slurm_starting_where_nsctl_refuses_is_only_where_nsctl_is_stricter():
    """The files Slurm 22.05 runs and nsctl refuses: each for a rule job_container.conf(5) lists
    under DIFFERENCES FROM SLURM, or for what 22.05 reads otherwise than nsctl."""
    stricter = {
        "duplicate_key_on_line",
        "operator",
        "bad_hostlist",
        "missing_basepath_other_node",
        "percent_n",
        "none",
    }
    found = {
        name
        for name in CASES
        if case(name)[1]["slurm_22_05"]["slurmd"] == "starts"
        and not nsctl_reads(case(name)[0], (22, 5)).valid
    }
    assert found == stricter
