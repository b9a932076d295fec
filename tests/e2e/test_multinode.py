"""nsctl on a three-node cluster: node_confs keyed by hostlists, each node gets its own config.

n1, n2 and n3 are separate slurmd nodes (own hostname, address, /run with /run/nsctl, and local
disk at LAB/local); base_path lives on that local disk, so a job's dir is B/J on every node it
runs on. n[1-2] and n3 get different base paths, n3 a PID namespace and a private /tmp only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import hostlist
import pytest
from slurmlab import Lab

from nsctl.layout import parse_index

NODES = ("n1", "n2", "n3")


def expected(lab: Lab) -> dict[str, dict[str, str]]:
    """What each node's jobs must get (base_path, dirs, namespaces), by node_confs."""
    a, b = f"{lab.local}/ns-a", f"{lab.local}/ns-b"
    return {
        "n1": {"base": a, "dirs": "/tmp,/dev/shm", "namespaces": "mnt"},
        "n2": {"base": a, "dirs": "/tmp,/dev/shm", "namespaces": "mnt"},
        "n3": {"base": b, "dirs": "/tmp", "namespaces": "pid,mnt"},
    }


def namespace_yaml(lab: Lab) -> str:
    return (
        "defaults:\n  auto_base_path: true\n"
        f"  base_path: {lab.local}/ns-default\n"  # every node matches an entry: never used
        "node_confs:\n"
        "  - nodes: 'n[1-2]'\n"
        f"    options: {{base_path: {lab.local}/ns-a}}\n"
        "  - nodes: n3\n"
        "    options:\n"
        f"      base_path: {lab.local}/ns-b\n"
        "      clone_ns_flags: [CLONE_NEWPID]\n"
        "      dir_confs:\n"
        "        - path: /tmp\n"
    )


@pytest.fixture(scope="module")
def three(cluster3: Lab) -> Iterator[Lab]:
    assert cluster3.nodes == NODES
    cluster3.configure("nsctl", namespace_yaml(cluster3))
    yield cluster3


TASK = (
    'echo "task $SLURMD_NODENAME host=$(hostname) tmp=$(stat -c %a:%U /tmp)'
    ' ls=[$(ls -A /tmp | tr "\\n" " ")] shm=$(stat -c %d /dev/shm) pid=$$'
    ' init=$(ps -o args= -p 1)"; touch /tmp/from-$SLURMD_NODENAME'
)


def task_lines(out: str) -> dict[str, dict[str, str]]:
    """node -> the fields its task printed (see TASK)."""
    found = {}
    for line in out.splitlines():
        if line.startswith("task "):
            node, rest = line[5:].split(" ", 1)
            head, init = rest.split(" init=", 1)
            found[node] = dict(field.split("=", 1) for field in head.split(" ", 4))
            found[node]["init"] = init
    return found


def test_srun_on_three_nodes_gets_each_nodes_base_path_and_dirs(three: Lab) -> None:
    want = expected(three)
    with three.running_job(f"srun -Q -N3 --ntasks-per-node=1 sh -c '{TASK}'", "-N3") as job:
        tasks = task_lines(job.read())
        assert sorted(tasks) == list(NODES), job.read()
        entries = {}
        for node in NODES:
            entry = parse_index((three.run_dir(node) / "jobs" / job.job_id).read_text())
            entries[node] = entry
            job_dir = f"{want[node]['base']}/{job.job_id}"
            assert entry["job_dir"] == job_dir, (node, entry)
            assert (entry["dirs"], entry["namespaces"]) == (
                want[node]["dirs"],
                want[node]["namespaces"],
            ), (node, entry)
            # The task's file is on this node's own disk, and on no other node's.
            mine = (
                Path(job_dir).relative_to(three.local) / f".{job.job_id}" / "_tmp" / f"from-{node}"
            )
            assert [n for n in NODES if (three.node_dir(n) / mine).exists()] == [node], mine
            other_base = {"n1": "ns-b", "n2": "ns-b", "n3": "ns-a"}[node]
            assert not (three.node_dir(node) / other_base / job.job_id).exists(), node
            assert three.mounts_under(job_dir, node), node
            # What the task saw.
            task = tasks[node]
            assert task["host"] == node and task["tmp"] == f"700:{three.user}", task
            assert task["ls"] == "[]", task  # its own empty /tmp (the file came after the ls)
            node_shm = str(os.stat(three.node_path("/dev/shm", node)).st_dev)
            if "/dev/shm" in want[node]["dirs"]:
                assert task["shm"] != node_shm, task
            else:
                assert task["shm"] == node_shm, task  # /dev/shm is not private on n3
            if "pid" in want[node]["namespaces"]:
                assert task["init"] == f"nsctl: [{job.job_id}:namespace]", task
                assert int(task["pid"]) < 100, task
            else:
                assert "init.py node" in task["init"], task  # the node's own PID 1
        # nsctl validate, run as an admin would (in the lab, with SLURM_CONF), reports the
        # base paths the jobs got; show-config the dirs and namespaces.
        report = validate(three)
        assert report == {n: want[n]["base"] for n in NODES}, report
        for node in NODES:
            shown = json.loads(
                three.admin(three.nsctl, "show-config", "--node", node, "--format", "json").stdout
            )
            assert shown["base_path"] == os.path.dirname(entries[node]["job_dir"])
            assert ",".join(d["path"] for d in shown["dir_confs"]) == entries[node]["dirs"]
            assert ("CLONE_NEWPID" in shown["clone_ns_flags"]) == (
                "pid" in entries[node]["namespaces"]
            )
    assert_nodes_clean(three, job.job_id)


def validate(lab: Lab) -> dict[str, str]:
    """node -> base_path, from `nsctl validate --nodes 'n[1-3]' --format json`."""
    res = lab.admin(
        lab.nsctl, "validate", str(lab.etc / "namespace.yaml"), "--nodes", "n[1-3]",
        "--format", "json",
    )  # fmt: skip
    data = json.loads(res.stdout)
    assert data["valid"] and not data["errors"], res
    return {
        node: group["base_path"]
        for group in data["report"]["nodes"]
        for node in hostlist.expand_hostlist(group["nodes"])
    }


def test_validate_text_report_names_each_hostlist(three: Lab) -> None:
    res = three.admin(three.nsctl, "validate", "--nodes", "n[1-3]")  # namespace.yaml via SLURM_CONF
    lines = [line.split() for line in res.stdout.splitlines() if line.startswith("  n")]
    assert lines == [
        ["n[1-2]", "node_confs[0]", "base_path", f"{three.local}/ns-a"],
        ["n3", "node_confs[1]", "base_path", f"{three.local}/ns-b"],
    ], res


def test_a_step_on_some_nodes_joins_the_jobs_namespace_there(three: Lab) -> None:
    """Steps of one job on different node subsets share that node's dirs, and only those."""
    job = three.submit(
        "srun -Q -N3 --ntasks-per-node=1 sh -c 'echo $SLURMD_NODENAME > /tmp/mine'\n"
        "srun -Q -N2 -w n2,n3 --ntasks-per-node=1 sh -c "
        "'echo \"again $SLURMD_NODENAME $(cat /tmp/mine) $(readlink /proc/self/ns/mnt)\"'\n",
        "-N3",
    )
    three.wait_job_gone(job.job_id)
    lines = sorted(line.split() for line in job.read().splitlines() if line.startswith("again"))
    assert [line[:3] for line in lines] == [["again", "n2", "n2"], ["again", "n3", "n3"]], (
        job.read()
    )
    node_ns = {three.ns_link("mnt", n) for n in NODES}
    assert not {line[3] for line in lines} & node_ns, lines
    assert three.job_field(job.job_id, "ExitCode") == "0:0", job.read()
    assert_nodes_clean(three, job.job_id)


def assert_nodes_clean(lab: Lab, job_id: str) -> None:
    """After the job: nothing of it on any node (runtime index, mounts, dirs, processes)."""
    for node in NODES:
        assert lab.index_entries(node) == [], node
        assert [m for m in lab.mounts_under(str(lab.local), node) if m != str(lab.local)] == []
        disk = lab.node_dir(node)
        assert not [p for p in disk.glob(f"ns-*/{job_id}")], node
        assert lab.user_processes(node) == [], node
    assert lab.holders() == []
