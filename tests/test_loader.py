"""The resolved-config cache the Prolog and Epilog read: exact, never stale."""

from __future__ import annotations

import os

from nsctl import loader


def test_a_same_size_rewrite_with_the_same_mtime_is_never_served_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("NSCTL_RUN_DIR", str(tmp_path / "run"))
    path = tmp_path / "namespace.yaml"
    path.write_text("defaults: {base_path: /srv/aaa}\n")
    stamp = os.stat(path)
    assert loader.load_node_config(str(path), "n1", "n1").base_path == "/srv/aaa"
    path.write_text("defaults: {base_path: /srv/bbb}\n")  # same size
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert loader.load_node_config(str(path), "n1", "n1").base_path == "/srv/bbb"
    entries = os.listdir(tmp_path / "run" / "cache")
    assert len(entries) == 1  # one entry per file and node, rewritten in place


def test_each_node_has_its_own_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("NSCTL_RUN_DIR", str(tmp_path / "run"))
    path = tmp_path / "namespace.yaml"
    path.write_text(
        "defaults: {base_path: /srv/all}\n"
        "node_confs:\n  - nodes: n2\n    options: {base_path: /srv/two}\n"
    )
    for _ in range(2):  # the second round is served from the cache
        assert loader.load_node_config(str(path), "n1", "n1").base_path == "/srv/all"
        assert loader.load_node_config(str(path), "n2", "n2").base_path == "/srv/two"
    assert len(os.listdir(tmp_path / "run" / "cache")) == 2


def test_slurm_conf_is_read_only_for_a_config_that_uses_percent_h(tmp_path, monkeypatch):
    """%h is NodeHostname from slurm.conf; parsing slurm.conf on every Prolog costs every job."""
    monkeypatch.setenv("NSCTL_RUN_DIR", str(tmp_path / "run"))
    slurm_conf = tmp_path / "slurm.conf"
    slurm_conf.write_text("NodeName=n1 NodeHostname=host-of-n1 CPUs=2\n")
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    reads = []
    real = loader.config.slurm_node_hostnames
    monkeypatch.setattr(
        loader.config, "slurm_node_hostnames", lambda conf: reads.append(conf) or real(conf)
    )
    path = tmp_path / "namespace.yaml"
    path.write_text("defaults: {base_path: /srv/plain}\n")
    assert loader.load_node_config(str(path), "n1").base_path == "/srv/plain"
    assert reads == []
    path.write_text("defaults: {base_path: /srv/%h}\n")
    assert loader.load_node_config(str(path), "n1").base_path == "/srv/host-of-n1"
    assert reads == [str(slurm_conf)]
