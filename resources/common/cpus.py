"""How many CPUs this process may use: the default for every worker count.

`os.cpu_count()` counts the machine's CPUs. Under `taskset`, a Kubernetes CPU limit or a container's
`--cpus` the process may use fewer, and one worker per machine CPU then oversubscribes the ones it
has (each worker gets a fraction of a core and they all wait for each other). The usable count is
the smallest of the affinity mask and every cgroup CPU quota on the way from the process's cgroup
to the root (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded down
and at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    return max(1, min(affinity, math.floor(quota)) if quota is not None else affinity)


def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroup and its ancestors; None if unlimited
    or unknown (no cgroup filesystem, e.g. outside Linux)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":  # cgroup v2 (under unified/ on hybrid v1 hosts)
            mount = cgroup_root if (cgroup_root / "cgroup.controllers").exists() else cgroup_root / "unified"
            limits += [_v2_limit(directory) for directory in _ancestors(mount, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1
            mount = next((m for m in (cgroup_root / "cpu,cpuacct", cgroup_root / "cpu") if m.is_dir()), None)
            if mount is not None:
                limits += [_v1_limit(directory) for directory in _ancestors(mount, path)]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and every parent up to the mount (a container sees its own cgroup as /)."""
    parts = [p for p in path.strip("/").split("/") if p]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
