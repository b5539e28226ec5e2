"""Threads that fit the machine: CPU affinity and cgroup v1 / v2 quotas read from fake files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zfwidgets.errors import BadParameterError
from zfwidgets.threads import (available_cpus, cgroup_cpu_limit, passive_openmp, set_threads,
                               thread_env, torch_threads, using_threads)


@pytest.fixture
def cpus(monkeypatch):
    """Set the fake affinity: ``cpus(8)`` -> this process may run on 8 CPUs."""
    def set_affinity(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return set_affinity


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def tree(tmp_path, files: dict, membership: str):
    """A fake ``/sys/fs/cgroup`` and ``/proc/self/cgroup``; returns (root, proc_cgroup)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in files.items():
        write(root / rel, text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(membership)
    return root, proc


def test_v2_smallest_quota_along_the_lineage_rounded_down(tmp_path, cpus):
    cpus(8)
    root, proc = tree(tmp_path, {"cpu.max": "400000 100000\n",
                                 "user.slice/cpu.max": "max 100000\n",
                                 "user.slice/app/cpu.max": "150000 100000\n"},
                      "0::/user.slice/app\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    assert available_cpus(root, proc) == 1                 # 1.5 CPUs: one thread, not two
    write(root / "user.slice/app/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(4.0)   # the ancestor's quota
    assert available_cpus(root, proc) == 4


def test_v2_unlimited_and_affinity_below_the_quota(tmp_path, cpus):
    root, proc = tree(tmp_path, {"cpu.max": "max 100000\n"}, "0::/\n")
    cpus(6)
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == 6
    write(root / "cpu.max", "1600000 100000\n")            # 16 CPUs of quota, 3 in the mask
    cpus(3)
    assert available_cpus(root, proc) == 3


def test_v2_quota_below_one_cpu_still_gives_one_thread(tmp_path, cpus):
    cpus(4)
    root, proc = tree(tmp_path, {"cpu.max": "50000 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)
    assert available_cpus(root, proc) == 1


def test_v1_container_sees_its_cgroup_as_the_mount_root(tmp_path, cpus):
    cpus(64)
    # /proc/self/cgroup names the host's path, which the container's mount does not show
    root, proc = tree(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n",
                                 "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                                 "memory/memory.limit_in_bytes": "1\n"},
                      "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)
    assert available_cpus(root, proc) == 3


def test_v1_nested_cgroup_and_no_quota(tmp_path, cpus):
    cpus(16)
    root, proc = tree(tmp_path, {"cpu/cpu.cfs_quota_us": "-1\n",
                                 "cpu/cpu.cfs_period_us": "100000\n",
                                 "cpu/batch/job/cpu.cfs_quota_us": "250000\n",
                                 "cpu/batch/job/cpu.cfs_period_us": "50000\n"},
                      "3:cpu:/batch/job\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(5.0)
    assert available_cpus(root, proc) == 5
    write(root / "cpu/batch/job/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == 16


def test_unreadable_or_odd_files_mean_no_quota(tmp_path, cpus):
    cpus(2)
    root, proc = tree(tmp_path, {"cpu.max": "lots\n", "cpu/cpu.cfs_quota_us": "x\n"},
                      "garbage line\n0::/gone\n3:cpu:/\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(root, proc) == 2
    assert available_cpus(tmp_path / "nothing", tmp_path / "no_such_file") == 2


def test_the_user_thread_choice_wins(monkeypatch):
    n = available_cpus()
    assert torch_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert torch_threads({"OMP_NUM_THREADS": "3,1"}) == 3      # OpenMP's nested list
    assert torch_threads({"OMP_NUM_THREADS": "many"}) == n
    assert torch_threads({}) == n
    assert thread_env({}) == {"OMP_NUM_THREADS": str(n), "OMP_WAIT_POLICY": "PASSIVE"}
    assert thread_env({"OMP_NUM_THREADS": "1"}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert thread_env({"OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "ACTIVE"}) == {}


def test_set_threads_and_the_context_restore():
    import torch

    start = torch.get_num_threads()
    other = 1 if start != 1 else 2
    with using_threads(other) as inside:
        assert inside == other == torch.get_num_threads()
    assert torch.get_num_threads() == start
    before = set_threads(other)
    try:
        assert before == start and torch.get_num_threads() == other
    finally:
        torch.set_num_threads(start)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(BadParameterError, match="thread count"):
            set_threads(bad)
    assert torch.get_num_threads() == start


def test_importing_it_changes_nothing_and_imports_no_torch():
    code = ("import os, sys; before = dict(os.environ); import zfwidgets.threads; "
            "assert dict(os.environ) == before; assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_explorer_kernel_env_sets_threads_unless_the_user_did():
    from zfwidgets.cli import kernel_env

    env = kernel_env("efficientnet_lite0", None, {"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == str(available_cpus())
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    mine = kernel_env("efficientnet_lite0", None, {"OMP_NUM_THREADS": "1",
                                                   "OMP_WAIT_POLICY": "ACTIVE"})
    assert mine["OMP_NUM_THREADS"] == "1" and mine["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_test_suite_runs_with_them():
    """conftest put them into this process's environment (inherited by notebook kernels)."""
    assert os.environ.get("OMP_WAIT_POLICY")
    assert int(os.environ["OMP_NUM_THREADS"].split(",")[0]) >= 1


def test_openmp_counts_as_passive_only_without_a_spin_count():
    assert passive_openmp({"OMP_WAIT_POLICY": "PASSIVE"})
    assert passive_openmp({"OMP_WAIT_POLICY": " passive "})
    assert not passive_openmp({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "5000"})
    assert not passive_openmp({"OMP_WAIT_POLICY": "ACTIVE"}) and not passive_openmp({})
