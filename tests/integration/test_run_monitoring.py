"""A run whose process is killed while it holds the `gpu` pool's only slot: with the project's
dagster.yaml, run monitoring (the same functions the daemon calls each poll) marks it failed, and
its slot is freed, so the next GPU step does not wait forever on a dead run."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
from dagster._daemon.monitoring import execute_concurrency_slots_iteration
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from jobs.run_launcher import LocalProcessRunLauncher, process_alive_since
from resources.settings import PROJECT_ROOT

HOLDER = textwrap.dedent(
    """
    import time
    import dagster as dg

    @dg.asset(pool="gpu")
    def holds_the_gpu() -> None:
        time.sleep(600)

    with dg.DagsterInstance.get() as instance:
        dg.materialize([holds_the_gpu], instance=instance)
    """
)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_process_liveness_tells_a_reused_pid_from_the_worker() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive_since(child.pid, time.time())
        assert not process_alive_since(child.pid, time.time() - 3600)  # started after the worker reported: reused
    finally:
        child.kill()
        child.wait()
    assert not process_alive_since(child.pid, time.time())


def test_killed_run_is_marked_failed_and_its_gpu_slot_freed(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the project's dagster.yaml reads it
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT)}
    holder = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_launcher, LocalProcessRunLauncher)

        def claimed() -> list:
            return instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

        try:
            _wait(claimed, 120, "the run to claim the gpu slot")
        finally:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
        (record,) = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.STARTED  # nobody told Dagster

        logger = logging.getLogger("test_run_monitoring")
        monitor_started_run(instance, None, record, logger)  # the monitoring daemon's check, once
        run = instance.get_run_by_id(record.dagster_run.run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
        assert "is gone" in failure.message

        context = SimpleNamespace(instance=instance)
        seconds = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]
        time.sleep(seconds + 1)
        list(execute_concurrency_slots_iteration(context, logger))
        assert claimed() == []
