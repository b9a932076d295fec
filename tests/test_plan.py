"""The pure planning layer: what setup and teardown will do, with every value concrete."""

from __future__ import annotations

import pathlib

import pytest

from nsctl import config, plan, validate
from nsctl.errors import InputError
from nsctl.jobs import Job
from nsctl.layout import IndexEntry

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "namespace.yaml"
ALICE = Job("42", 1000, 1000, "alice")
ENV = {"SLURM_CONF": "/etc/slurm/slurm.conf"}


def resolved(node: str) -> config.NodeConfig:
    checked = validate.check_file(str(EXAMPLE))
    assert checked.valid
    return config.resolve(checked.data, node)


def test_setup_plan_for_n3_of_the_reference_example():
    the_plan = plan.plan_setup(resolved("n3"), ALICE, "/run/nsctl/jobs/42", ENV)
    ops = the_plan.ops
    assert [type(op).__name__ for op in ops] == [
        "EnsureBase",
        "CheckTarget",
        "CheckTarget",
        "MakeDir",
        "MakeMarker",
        "BindSelfPrivate",
        "MakeDir",
        "MakeNsFile",
        "MakeNsFile",
        "MakeNsFile",
        "MakeDir",
        "MakeDir",
        "RunScript",
        "CreateNamespaces",
        "RunScript",
        "WriteIndex",
    ]
    assert ops[0] == plan.EnsureBase("/var/nvme/storage_1", True)
    assert [op.kind for op in ops if isinstance(op, plan.MakeNsFile)] == ["pid", "user", "mnt"]
    # /scratch has base_path == B: its backing dir is B/J/_scratch, beside .ns and .J (section 10)
    assert plan.MakeDir("/var/nvme/storage_1/42/_scratch", 0o700, 1000, 0) in ops
    create = next(op for op in ops if isinstance(op, plan.CreateNamespaces))
    assert create.kinds == ("pid", "user", "mnt")
    assert create.child == (
        plan.SetPropagation(False),
        plan.MountProc(),
        plan.TmpfsMount("/tmp", ("noexec", "nosuid", "nodev"), ("size=8g",)),
        plan.BindMount("/var/nvme/storage_1/42/_scratch", "/scratch", ("noexec", "nosuid")),
    )
    assert create.user_ns_script.path == "/path/to/user_script"
    assert create.user_ns_script.timeout == 10  # fixed, like Slurm's
    clone = ops[-2]
    assert clone.name == "clone_ns_script" and clone.timeout == 20
    assert dict(clone.env)["SLURM_NS"] == "/var/nvme/storage_1/42/.ns/mnt"
    assert ops[-1].entry.namespaces == ("pid", "user", "mnt")


def test_dir_paths_are_expanded_per_job():
    base = config.NodeConfig(
        node="n1",
        entry="defaults",
        enabled=True,
        base_path="/b",
        dir_confs=(config.DirConf("/scratch/%u/%j", False), config.DirConf("/dev/shm", True)),
    )
    the_plan = plan.plan_setup(base, ALICE, "/run/nsctl/jobs/42", ENV)
    assert the_plan.targets == ("/scratch/alice/42", "/dev/shm")
    assert plan.MakeDir("/b/42/.42/_scratch_alice_42", 0o700, 1000, 0) in the_plan.ops
    sluid_needed = config.NodeConfig(
        node="n1",
        entry="defaults",
        enabled=True,
        base_path="/b",
        dir_confs=(config.DirConf("/s/%S", False),),
    )
    with pytest.raises(InputError, match="uses %S but the job has no SLUID"):
        plan.plan_setup(sluid_needed, ALICE, "/i", ENV)


def test_teardown_plan_covers_config_and_index_locations():
    entry = IndexEntry(
        "42",
        1000,
        1000,
        "alice",
        "/old/base/42",
        ("mnt",),
        dir_bases=("/old/scratch",),
        job_dir_id="1:2",
        dir_root_ids=("1:3",),
    )
    tp = plan.plan_teardown(resolved("n3"), "42", "/run/nsctl/jobs/42", ENV, entry)
    assert tp.job_dirs == ("/old/base/42", "/var/nvme/storage_1/42")
    assert tp.dir_job_roots == ("/old/scratch/42",)  # /scratch's base is B itself: inside B/J
    # Only the directories setup made (the ids the index recorded) are acted on.
    opens = [op for op in tp.ops if isinstance(op, plan.OpenJobDir)]
    assert [op.expected_id for op in opens] == ["1:2", ""]
    roots = [op for op in tp.ops if isinstance(op, plan.RemoveDirRoot)]
    assert [op.expected_id for op in roots] == ["1:3"]
    assert tp.epilog.path == "/path/to/epilog_script"
    assert dict(tp.epilog.env) == {
        "SLURM_JOB_ID": "42",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURMD_NODENAME": "n3",
        "SLURM_NS": "/old/base/42/.ns",  # the job's own .ns, where setup made it
    }
    assert plan.plan_teardown(None, "42", "/i", ENV).job_dirs == ()


def test_paths_that_would_corrupt_the_runtime_index_are_refused():
    text = 'defaults:\n  base_path: /b\n  dir_confs:\n    - path: "/a,b"\n    - path: "/x\\ty"\n'
    messages = [str(issue) for issue in validate.check_text(text, "ns.yaml").errors]
    assert messages == [
        "ns.yaml:4:7: defaults.dir_confs[0].path: a directory path may not contain a comma or a "
        "control character",
        "ns.yaml:5:7: defaults.dir_confs[1].path: a directory path may not contain a comma or a "
        "control character",
    ]
