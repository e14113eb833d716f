"""Thread pools size themselves by the container's CPU quota, not the node's core count (genguard/cpus.py)."""

from __future__ import annotations

import os

import pytest

from genguard.cpus import available_cpus, cgroup_quota

AFFINITY = len(os.sched_getaffinity(0))


def v2(tmp_path, quotas: dict[str, str], own: str = "/kubepods/pod1/ctr"):
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for path, value in quotas.items():
        folder = root / path.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(value + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")  # (tmp_path may be a fresh sub-folder)
    return root, proc


def test_a_4_cpu_limit_gives_4_threads_on_a_many_core_node(tmp_path):
    root, proc = v2(tmp_path, {"/kubepods/pod1/ctr": "400000 100000", "/": "max 100000"})
    assert cgroup_quota(root, proc) == 4.0
    assert available_cpus(root, proc) == min(4, AFFINITY)


def test_the_tightest_quota_on_the_path_counts_and_fractions_round_up(tmp_path):
    root, proc = v2(tmp_path, {"/kubepods": "250000 100000", "/kubepods/pod1/ctr": "max 100000"})
    assert cgroup_quota(root, proc) == 2.5
    assert available_cpus(root, proc) == min(3, AFFINITY)
    root2, proc2 = v2(tmp_path / "b", {"/kubepods/pod1/ctr": "50000 100000"})
    assert available_cpus(root2, proc2) == 1  # half a CPU: one thread, never zero


def test_no_quota_falls_back_to_the_affinity_mask(tmp_path):
    root, proc = v2(tmp_path, {"/kubepods/pod1/ctr": "max 100000"})
    assert cgroup_quota(root, proc) is None
    assert available_cpus(root, proc) == AFFINITY
    assert available_cpus(tmp_path / "nowhere", tmp_path / "missing") == AFFINITY


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cgroup"
    folder = root / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_quota(root, proc) == 3.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(root, proc) is None


@pytest.mark.parametrize("model", ["preprocess", "validate"])
def test_the_decode_pools_use_the_quota_unless_configured(model):
    from pathlib import Path

    models = Path(__file__).parents[1] / "genguard" / "triton_models"
    source, common = (models / f"{model}.py").read_text(), (models / "common.py").read_text()
    assert "worker_pool(" in source and "os.cpu_count()" not in source + common
    assert "available_cpus()" in common
