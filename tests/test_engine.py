"""setup / join / teardown for real: namespaces, mounts and the job user's view (root, sandboxed).

Every command runs as a separate process, the way Slurm's Prolog and Epilog run it; the job's
view is observed through `nsctl join --as-user`, i.e. as the unprivileged job user.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
from typing import Optional

import pytest
from sandbox import holder_pid, mount_points, proc_state

from nsctl import config as cfg

DEFAULT = """
defaults:
  base_path: "@BASE@"
  auto_base_path: true
"""


def nsctl(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "nsctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"nsctl {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


def in_job(job_id: str, script: str, check=True, as_user=True) -> subprocess.CompletedProcess:
    flags = ["--as-user"] if as_user else []
    return nsctl("join", "--job-id", job_id, *flags, "--", "/bin/sh", "-c", script, check=check)


def setup(job_id: str, user: str = "nobody", *extra) -> subprocess.CompletedProcess:
    return nsctl("setup", "--job-id", job_id, "--user", user, *extra)


def teardown(job_id: str) -> subprocess.CompletedProcess:
    return nsctl("teardown", "--wait", "--job-id", job_id)


def test_private_tmp_is_empty_owned_by_the_user_0700_and_backed_on_disk(lab, job_user):
    lab.write_config(DEFAULT)
    marker = "/tmp/nsctl-host-marker"
    open(marker, "w").close()
    try:
        setup("101")
        out = in_job(
            "101", "stat -c '%a %U %g' /tmp; ls -A /tmp | wc -l; echo data > /tmp/f; id -u"
        )
        mode_owner, count, uid = out.stdout.split("\n")[:3]
        assert mode_owner == "700 nobody 0"  # E1: 0700, the user, group root; not 1777
        assert count.strip() == "0"
        assert int(uid) == job_user.pw_uid
        backing = os.path.join(lab.base, "101", ".101", "_tmp")
        st = os.stat(backing)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, job_user.pw_uid, 0)
        with open(os.path.join(backing, "f")) as handle:
            assert handle.read() == "data\n"
        assert not os.path.exists("/tmp/f")  # the host's /tmp never saw it
        assert in_job("101", f"test -e {marker}", check=False).returncode == 1
        job_dir = os.path.join(lab.base, "101")
        assert stat.S_IMODE(os.stat(job_dir).st_mode) == 0o700 and os.stat(job_dir).st_uid == 0
        assert lab.index_entries() == ["101"]
    finally:
        os.unlink(marker)
        teardown("101")
    assert lab.job_files() == [] and lab.index_entries() == []


def test_two_jobs_never_see_each_others_files(lab):
    lab.write_config(DEFAULT)
    setup("201")
    setup("202")
    try:
        in_job("201", "echo one > /tmp/a; echo one > /dev/shm/a")
        in_job("202", "echo two > /tmp/b; echo two > /dev/shm/b")
        assert in_job("201", "ls -A /tmp /dev/shm").stdout.split() == [
            "/dev/shm:",
            "a",
            "/tmp:",
            "a",
        ]
        assert in_job("202", "ls -A /tmp /dev/shm").stdout.split() == [
            "/dev/shm:",
            "b",
            "/tmp:",
            "b",
        ]
    finally:
        teardown("201")
        teardown("202")
    assert lab.job_files() == []


def _mount_line(job_id: str, target: str) -> list[str]:
    """The mountinfo line of ``target`` as the job sees it (the top-most mount there)."""
    out = in_job(job_id, "cat /proc/self/mountinfo", as_user=False).stdout
    lines = [line.split() for line in out.splitlines() if line.split()[4] == target]
    assert lines, f"{target} is not a mount point in the job"
    return lines[-1]


def test_dev_shm_is_a_private_tmpfs_with_nosuid_nodev_and_the_configured_size(lab):
    lab.write_config(
        DEFAULT
        + """  dir_confs:
    - path: /tmp
    - path: /dev/shm
      options: "size=16m,mode=1777"
"""
    )
    setup("301")
    try:
        fields = _mount_line("301", "/dev/shm")
        options, fstype = set(fields[5].split(",")), fields[fields.index("-") + 1]
        super_options = fields[fields.index("-") + 3]
        assert fstype == "tmpfs" and {"nosuid", "nodev"} <= options
        assert "size=16384k" in super_options.split(",")
        out = in_job("301", "df -k /dev/shm | tail -1").stdout.split()
        assert out[1] == "16384"
    finally:
        teardown("301")


def test_pid_namespace_shows_only_the_job_and_pid_1_is_the_holder(lab):
    lab.write_config(DEFAULT + "  clone_ns_flags: [CLONE_NEWPID]\n")
    setup("401")
    try:
        out = in_job("401", "ps -eo pid=,args=").stdout.splitlines()
        processes = {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in out}
        assert processes[1] == "nsctl: [401:namespace]"
        assert len(processes) == 3, processes  # the holder, sh, ps
        holder = holder_pid(lab.run, "401")
        with open(f"/proc/{holder}/cmdline", "rb") as handle:
            assert handle.read().rstrip(b"\0") == b"nsctl: [401:namespace]"
        # No descriptor of the Prolog survives in the holder: all three point to /dev/null.
        fds = {
            fd: os.readlink(f"/proc/{holder}/fd/{fd}") for fd in os.listdir(f"/proc/{holder}/fd")
        }
        assert fds == {"0": "/dev/null", "1": "/dev/null", "2": "/dev/null"}
    finally:
        teardown("401")
    assert proc_state(holder) in (None, "Z")  # killed (a zombie until its parent reaps it)


def test_without_a_pid_namespace_there_is_no_holder(lab):
    lab.write_config(DEFAULT)
    setup("402")
    try:
        entry = pathlib.Path(os.path.join(lab.run, "jobs", "402")).read_text()
        assert "holder_pid=0\n" in entry and "namespaces=mnt\n" in entry
        # The mount namespace lives on through its bind mount alone.
        assert in_job("402", "echo ok").stdout == "ok\n"
    finally:
        teardown("402")


def test_user_namespace_gets_the_identity_map(lab):
    lab.write_config(DEFAULT + "  clone_ns_flags: CLONE_NEWPID,CLONE_NEWUSER\n")
    setup("501")
    try:
        out = in_job("501", "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %U /tmp")
        maps = [line.split() for line in out.stdout.splitlines()[:2]]
        assert maps == [["0", "0", "4294967295"], ["0", "0", "4294967295"]]
        assert out.stdout.splitlines()[3] == "nobody"
        host_user_ns = os.stat("/proc/self/ns/user").st_ino
        job_user_ns = os.stat(os.path.join(lab.base, "501", ".ns", "user")).st_ino
        assert job_user_ns != host_user_ns
    finally:
        teardown("501")


def test_user_ns_script_writes_the_maps_instead(lab):
    script = lab.dir / "userns.sh"
    script.write_text(
        "#!/bin/sh\n"
        'echo "0 0 65536" > /proc/$SLURM_NS_PID/uid_map\n'
        'echo "0 0 65536" > /proc/$SLURM_NS_PID/gid_map\n'
        "echo mapped $SLURM_JOB_ID\n"
    )
    script.chmod(0o755)
    lab.write_config(DEFAULT + f"  clone_ns_flags: [CLONE_NEWUSER]\n  user_ns_script: {script}\n")
    setup("502")
    try:
        out = in_job("502", "cat /proc/self/uid_map", as_user=False).stdout.split()
        assert out == ["0", "0", "65536"]
    finally:
        teardown("502")


def _unmount_all(path) -> None:
    """Unmount every mount stacked on ``path`` (umount -R removes only the top one)."""
    while str(path) in mount_points():
        subprocess.run(["umount", "-R", str(path)], check=True)


def test_shared_lets_a_host_mount_made_after_setup_appear_in_the_job(lab):
    lab.write_config(DEFAULT + "  shared: true\n")
    automount = lab.dir / "automount"
    automount.mkdir()
    subprocess.run(["mount", "--bind", str(automount), str(automount)], check=True)
    subprocess.run(["mount", "--make-shared", str(automount)], check=True)
    setup("601")
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "late", str(automount)], check=True
        )
        (automount / "hello").write_text("hi")
        assert in_job("601", f"cat {automount}/hello").stdout == "hi"
        # ... while the job's own mounts never reach the host.
        backing = os.stat(os.path.join(lab.base, "601", ".601", "_tmp"))
        assert (os.stat("/tmp").st_dev, os.stat("/tmp").st_ino) != (backing.st_dev, backing.st_ino)
    finally:
        teardown("601")
        _unmount_all(automount)


def test_private_root_keeps_host_mounts_made_after_setup_out(lab):
    lab.write_config(DEFAULT)
    late = lab.dir / "late"
    late.mkdir()
    subprocess.run(["mount", "--bind", str(late), str(late)], check=True)
    subprocess.run(["mount", "--make-shared", str(late)], check=True)
    setup("602")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "late", str(late)], check=True)
        (late / "hello").write_text("hi")
        assert in_job("602", f"test -e {late}/hello", check=False).returncode == 1
    finally:
        teardown("602")
        _unmount_all(late)


def test_dir_confs_per_dir_base_remount_flags_and_tmpfs_size(lab):
    tmp_path = lab.dir
    scratch_base = tmp_path / "scratch-base"
    for name in ("scratch", "ro", "small"):
        (tmp_path / name).mkdir()
    lab.write_config(
        DEFAULT
        + f"""  dir_confs:
    - path: /tmp
      options: noexec
    - path: {tmp_path}/scratch
      base_path: {scratch_base}
    - path: {tmp_path}/ro
      options: ro
    - path: {tmp_path}/small
      tmpfs: true
      options: "size=1m"
"""
    )
    setup("701")
    try:
        job_backing = scratch_base / "701" / f"{str(tmp_path / 'scratch').replace('/', '_')}"
        in_job("701", f"echo s > {tmp_path}/scratch/x")
        assert (job_backing / "x").read_text() == "s\n"
        # noexec really prevents exec
        out = in_job("701", "cp /bin/true /tmp/t && /tmp/t", check=False)
        assert out.returncode == 126 and "Permission denied" in out.stderr
        # ro really prevents writes
        out = in_job("701", f"touch {tmp_path}/ro/x", check=False)
        assert out.returncode != 0 and "Read-only file system" in out.stderr
        out = in_job(
            "701", f"dd if=/dev/zero of={tmp_path}/small/big bs=1k count=2048", check=False
        )
        assert out.returncode != 0 and "No space left on device" in out.stderr
    finally:
        teardown("701")
    assert not (scratch_base / "701").exists()
    assert lab.job_files() == []


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 3", 3), ("kill -SEGV $$", 139), ("kill -TERM $$", 143)],
)
@pytest.mark.parametrize("flags", ["[]", "[CLONE_NEWPID]"])
def test_join_passes_exit_status_and_signals_through(lab, script, status, flags):
    lab.write_config(DEFAULT + f"  clone_ns_flags: {flags}\n")
    setup("801")
    try:
        assert in_job("801", script, check=False).returncode == status
    finally:
        teardown("801")


def test_join_refuses_a_job_without_namespaces(lab):
    lab.write_config(DEFAULT)
    out = in_job("802", "true", check=False)
    assert out.returncode == 1
    assert "job 802 has no nsctl namespaces on this node" in out.stderr


def test_scripts_get_exactly_slurms_environment(lab, job_user):
    record = lab.dir / "record"
    record.mkdir()
    for name in ("init", "clone", "epilog"):
        path = lab.dir / f"{name}.sh"
        path.write_text(f"#!/bin/sh\nenv | sort > {record}/{name}\n")
        path.chmod(0o755)
    lab.write_config(
        DEFAULT
        + f"""  init_script: {lab.dir}/init.sh
  clone_ns_script: {lab.dir}/clone.sh
  clone_ns_epilog: {lab.dir}/epilog.sh
"""
    )
    env = {**os.environ, "SLURM_CONF": "/etc/slurm/slurm.conf", "SLURM_JOB_CPUS": "4"}
    env["NSCTL_CONFIG"] = lab.config
    nsctl("setup", "--job-id", "901", "--user", "nobody", env=env)
    nsctl("teardown", "--wait", "--job-id", "901", env=env)
    ns = os.path.join(lab.base, "901", ".ns")
    src = os.path.join(lab.base, "901", ".901")
    common = {
        "SLURM_JOB_ID": "901",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURMD_NODENAME": "node1",
        "SLURM_JOB_UID": str(job_user.pw_uid),
        "SLURM_JOB_GID": str(job_user.pw_gid),
        "SLURM_JOB_USER": "nobody",
        "SLURM_JOB_CPUS": "4",
    }

    def env_of(name):
        lines = (record / name).read_text().splitlines()
        return dict(
            line.split("=", 1)
            for line in lines
            if line.split("=", 1)[0] not in ("PWD", "SHLVL", "_")
        )

    assert env_of("init") == {**common, "SLURM_JOB_MOUNTPOINT_SRC": src}
    assert env_of("clone") == {**common, "SLURM_JOB_MOUNTPOINT_SRC": src, "SLURM_NS": f"{ns}/mnt"}
    assert env_of("epilog") == {
        "SLURM_JOB_ID": "901",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURMD_NODENAME": "node1",
        "SLURM_NS": ns,  # E13: the directory, not the mnt file
    }


def test_clone_ns_script_can_enter_the_namespace_with_nsenter(lab):
    script = lab.dir / "clone.sh"
    script.write_text(
        '#!/bin/sh\n/usr/bin/nsenter --mount="$SLURM_NS" /bin/sh -c "echo from-script > /tmp/s"\n'
    )
    script.chmod(0o755)
    lab.write_config(DEFAULT + f"  clone_ns_script: {script}\n")
    setup("902")
    try:
        assert in_job("902", "cat /tmp/s").stdout == "from-script\n"
        assert not os.path.exists("/tmp/s")
    finally:
        teardown("902")


def test_setup_is_idempotent_and_teardown_too(lab):
    lab.write_config(DEFAULT + "  clone_ns_flags: [CLONE_NEWPID]\n")
    setup("1001")
    index = os.path.join(lab.run, "jobs", "1001")
    first = pathlib.Path(index).read_text()
    setup("1001")  # already fully set up: success, no change
    assert pathlib.Path(index).read_text() == first
    teardown("1001")
    teardown("1001")  # already gone: success
    nsctl("teardown", "--wait", "--job-id", "1002")  # never existed: success
    assert lab.job_files() == [] and lab.index_entries() == []


def test_a_stale_job_dir_from_an_earlier_run_is_cleaned_and_recreated(lab):
    lab.write_config(DEFAULT)
    stale = os.path.join(lab.base, "1101", ".1101", "_tmp")
    os.makedirs(stale)
    open(os.path.join(stale, "old-file"), "w").close()
    out = setup("1101")
    assert "cleaning up what an earlier run of this job left behind" in out.stderr
    try:
        assert in_job("1101", "ls -A /tmp").stdout == ""
    finally:
        teardown("1101")


def test_dry_run_prints_the_plan_and_touches_nothing(lab):
    lab.write_config(DEFAULT + "  clone_ns_flags: [CLONE_NEWPID]\n")
    out = nsctl("setup", "--job-id", "1201", "--user", "nobody", "--dry-run").stdout
    assert f"mkdir {lab.base}/1201 (mode 0700, uid 0)" in out
    assert "in the namespace: mount a fresh procfs on /proc" in out
    assert "keep PID 1 alive as the holder 'nsctl: [1201:namespace]'" in out
    assert not os.path.exists(lab.base) and not os.path.exists(lab.run + "/jobs")


def test_disabled_node_exits_0_and_does_nothing(lab):
    lab.write_config(DEFAULT + "node_confs:\n  - nodes: node1\n    options: {base_path: none}\n")
    out = setup("1301")
    assert "nsctl is disabled on node1: base_path is none (node_confs[0])" in out.stderr
    assert not os.path.exists(lab.base)


def test_setup_output_pipes_close_when_setup_exits(lab):
    """Slurm waits for EOF on the Prolog's output: the holder must not keep the pipes open."""
    lab.write_config(DEFAULT + "  clone_ns_flags: [CLONE_NEWPID]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nsctl", "setup", "--job-id", "1401", "--user", "nobody"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.communicate(timeout=30)  # hangs (and fails) if a holder inherited the pipes
        assert proc.returncode == 0
    finally:
        teardown("1401")


def test_a_dir_base_path_equal_to_base_path_backs_it_inside_the_job_dir(lab):
    """As in namespace.yaml(5)'s EXAMPLE: the backing dir sits beside .ns and .J."""
    (lab.dir / "scratch").mkdir()
    lab.write_config(
        DEFAULT
        + f"""  dir_confs:
    - path: {lab.dir}/scratch
      base_path: "@BASE@"
"""
    )
    setup("1501")
    try:
        in_job("1501", f"echo x > {lab.dir}/scratch/f")
        backing = pathlib.Path(lab.base, "1501", str(lab.dir / "scratch").replace("/", "_"))
        assert (backing / "f").read_text() == "x\n"
    finally:
        teardown("1501")
    assert lab.job_files() == []


# ---------------------------------------------------------------------------------------------
# From a job_container.conf: namespace/tmpfs's behaviour where it is not namespace/linux's


JOB_CONTAINER_CONF = "AutoBasePath=true\nBasePath=@BASE@\n"


def _mounts_at(job_id: Optional[str], target: str) -> list[list[str]]:
    """The mountinfo lines of ``target``, bottom first: in the job, or here (job_id None)."""
    if job_id is None:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            out = handle.read()
    else:
        out = in_job(job_id, "cat /proc/self/mountinfo", as_user=False).stdout
    return [line.split() for line in out.splitlines() if line.split()[4] == target]


def test_job_container_conf_replaces_dev_shm_with_a_tmpfs_without_flags(lab, job_user):
    lab.write_job_container_conf(JOB_CONTAINER_CONF)
    host = _mounts_at(None, "/dev/shm")
    setup("601")
    try:
        job = _mounts_at("601", "/dev/shm")
        top = job[-1]
        assert top[top.index("-") + 1] == "tmpfs"
        assert not {"nosuid", "nodev"} & set(top[5].split(","))  # no flags at all
        assert top[2] not in {line[2] for line in host}  # a new tmpfs, not the node's
        # The node's top /dev/shm mount was unmounted first (in the job's namespace only).
        assert [line[2] for line in job[:-1]] == [line[2] for line in host[:-1]]
        assert _mounts_at(None, "/dev/shm") == host
        # /tmp as with namespace.yaml; a mount namespace only; the job directory hidden.
        out = in_job("601", "stat -c '%a %U' /tmp; readlink /proc/self/ns/pid")
        assert out.stdout.splitlines() == ["700 nobody", os.readlink("/proc/self/ns/pid")]
        job_dir = os.path.join(lab.base, "601")
        assert not _mounts_at("601", job_dir)
        assert _mounts_at(None, job_dir)  # still the host's, for teardown and join
        entry = pathlib.Path(lab.run, "jobs", "601").read_text()
        assert "namespaces=mnt\n" in entry and "holder_pid=0\n" in entry
    finally:
        teardown("601")
    assert lab.job_files() == [] and lab.index_entries() == []


def test_job_container_conf_shared_stacks_dev_shm_over_the_nodes(lab):
    lab.write_job_container_conf(JOB_CONTAINER_CONF + "Shared=yes\n")
    host = _mounts_at(None, "/dev/shm")
    setup("602")
    try:
        job = _mounts_at("602", "/dev/shm")
        assert [line[2] for line in job[:-1]] == [line[2] for line in host]
        assert not {"nosuid", "nodev"} & set(job[-1][5].split(","))
    finally:
        teardown("602")
    assert lab.job_files() == []


def test_job_container_conf_dirs_and_last_match_wins_for_real(lab):
    scratch = lab.dir / "scratch"
    scratch.mkdir()
    lab.write_job_container_conf(
        "BasePath=@LAB@/elsewhere\n"
        "NodeName=node[1-2] BasePath=@BASE@ AutoBasePath=yes\n"
        f"NodeName=node1 BasePath=@BASE@ Dirs=/dev/shm,{scratch}\n"
        "NodeName=node2 BasePath=@LAB@/not-this-node\n"
    )
    setup("603")
    try:
        in_job("603", f"touch {scratch}/mine")
        backing = os.path.join(lab.base, "603", ".603", cfg.backing_name(str(scratch)))
        assert os.listdir(backing) == ["mine"]
        assert not os.listdir(scratch)  # the node's directory never saw it
        # /tmp is not private with this Dirs: the job sees the node's /tmp as it is.
        host_tmp = [(line[2], line[3]) for line in _mounts_at(None, "/tmp")]
        assert [(line[2], line[3]) for line in _mounts_at("603", "/tmp")] == host_tmp
        assert in_job("603", "test -O /tmp", check=False).returncode == 1  # not nobody's
    finally:
        teardown("603")
    assert lab.job_files() == [] and not (lab.dir / "elsewhere").exists()


def test_job_container_conf_scripts_get_the_namespace_file_as_slurm_ns(lab):
    seen = lab.dir / "seen"
    script = lab.dir / "script.sh"
    script.write_text(f'#!/bin/sh\necho "$0 $SLURM_NS" >> {seen}\n')
    script.chmod(0o755)
    lab.write_job_container_conf(
        f"BasePath=@BASE@ AutoBasePath=yes CloneNSScript={script} CloneNSEpilog={script}\n"
    )
    setup("604")
    teardown("604")
    ns_file = os.path.join(lab.base, "604", ".ns", "mnt")
    # namespace/tmpfs gives both scripts the namespace file (namespace/linux: the epilog gets
    # the .ns directory).
    assert seen.read_text().splitlines() == [f"{script} {ns_file}", f"{script} {ns_file}"]
    assert lab.job_files() == []


def test_job_container_conf_dry_run_and_teardown_of_a_half_setup(lab):
    lab.write_job_container_conf(JOB_CONTAINER_CONF)
    out = nsctl("setup", "--job-id", "605", "--user", "nobody", "--dry-run").stdout
    assert "unmount /dev/shm, then mount a fresh tmpfs on /dev/shm (no flags" in out
    assert f"unmount {lab.base}/605 (lazily) inside the job" in out
    assert lab.job_files() == []
    # A job directory left by a setup that died half way is torn down from the config alone.
    os.makedirs(os.path.join(lab.base, "605", ".605", "_tmp"))
    teardown("605")
    assert lab.job_files() == []
