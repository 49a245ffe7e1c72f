"""The real thing end to end: `dagster dev` (webserver + daemon) with the project's own
dagster.yaml picks up new crawl files through the sensor and ingests them, no clicks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from resources.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited early:\n{log.read_text()[-3000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_sensor_and_daemon_ingest_new_crawl_files(tmp_path: Path, crawl_dir: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"root": str(tmp_path / "store")},
                "catalog": {"path": str(tmp_path / "catalog.duckdb")},
                "source": {
                    "url": str(crawl_dir),
                    "files_per_partition": 2,
                    "interval_seconds": 5,
                    "sensor_running": True,
                },
                "ingest": {"workers": 1},
            }
        )
    )
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "CRAWL2CKPT_CONFIG": str(config)}
    log = tmp_path / "dagster_dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster"),
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                str(PROJECT_ROOT / "workspace.yaml"),
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(lambda: _ok(f"http://127.0.0.1:{port}/server_info"), 120, "the webserver", process, log)
        os.environ["DAGSTER_HOME"] = str(home)
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def ingested() -> bool:
                keys = instance.get_dynamic_partitions("crawl_batches")
                if len(keys) < 2:
                    return False
                done = instance.get_materialized_partitions(dg.AssetKey("raw_documents"))
                finished = all(run.is_finished for run in instance.get_runs())
                return set(keys) <= done and finished

            _wait(ingested, 300, "the sensor's runs to ingest every batch", process, log)
            runs = instance.get_runs()
            assert runs and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
            assert {run.tags.get("dagster/sensor_name") for run in runs} == {"crawl_sensor"}
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
