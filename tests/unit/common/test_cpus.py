"""Worker counts follow the CPUs this process may use: the affinity mask and cgroup quotas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from resources.common.cpus import available_cpus, cgroup_cpu_limit


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_tightest_ancestor(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory")
    write(root / "kubepods" / "cpu.max", "300000 100000")  # 3 CPUs for the pod
    write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000")  # 1.5 for the container
    write(root / "kubepods" / "pod1" / "worker" / "cpu.max", "max 100000")
    proc = tmp_path / "cgroup.txt"
    write(proc, "0::/kubepods/pod1/worker\n")
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert available_cpus(root, proc) == 1  # rounded down: a second worker would share the half CPU


def test_cgroup_v1_quota_and_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "200000")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    proc = tmp_path / "cgroup.txt"
    write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(root, proc) == 2.0
    write(proc, "4:cpu,cpuacct:/\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None  # no cgroup filesystem (not Linux)
    assert available_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_affinity_mask_caps_the_count() -> None:
    code = "from resources.common.cpus import available_cpus; print(available_cpus())"
    pinned = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert pinned.stdout.strip() == "1"
