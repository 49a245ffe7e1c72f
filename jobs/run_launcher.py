"""Dagster's default run launcher, able to tell a dead run worker from a live one.

The default launcher starts each run in a process on this machine but cannot say whether that
process still lives, so run monitoring never fails a run whose worker was killed (`kill -9`, the
OOM killer, a demo interrupted with its process group): the run stays STARTED forever and keeps
its claim on the `gpu` pool's only slot, and every later GPU step waits on it. This launcher
answers run monitoring's health check from the worker's process id, which the worker records in
the run's first engine event; a process that is gone (or whose id now belongs to a younger
process) is reported failed, so monitoring marks the run failed, its pool slots are freed
(`run_monitoring.free_slots_after_run_end_seconds`) and run retries re-execute it from the failed
step. Only runs on this machine can be checked this way, which is all the default launcher starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_START_SLACK_S = 2.0  # /proc start times have clock-tick resolution


class LocalProcessRunLauncher(DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = worker_process(self._instance, run.run_id)
        if worker is None:  # not started by a process that reported its id (yet): nothing to judge
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker process recorded")
        pid, reported_at = worker
        if process_alive_since(pid, reported_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive")
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker process {pid} is gone: it was killed or died without reporting"
        )


def worker_process(instance, run_id: str) -> tuple[int, float] | None:
    """The process id the run's worker reported, and when."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        entry = data.metadata.get("pid") if data and data.metadata else None
        if entry is not None:
            return int(entry.value), record.timestamp
    return None


def process_alive_since(pid: int, reported_at: float) -> bool:
    """Whether `pid` is a live (not zombie) process started no later than `reported_at`: a process
    id reused by a process started afterwards is not the worker."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.parent.parent.is_dir():  # no /proc: existence is all that can be told
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return False
    return _boot_time() + start_ticks / _CLOCK_TICKS <= reported_at + _START_SLACK_S


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])
