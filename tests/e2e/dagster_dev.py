"""`dagster dev` (webserver + daemon) for end-to-end tests: the project's dagster.yaml in a fresh
DAGSTER_HOME, a settings file, its own process group (it ignores SIGTERM for a while: the group is
killed), and waiting helpers that fail with the tail of its log."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from jobs.demo import automation_idle_since, patiently, sensors_looked_since
from resources.settings import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_config(tmp_path: Path, crawl: Path, vllm_server: str, tiny_model: Path, **sections: Any) -> Path:
    """The demo config at test size: storage under `tmp_path`, `crawl` watched every 2 s one file
    per batch, the tiny rewriter (for SmolLM2) served by the session's vLLM server (no engine start per run),
    a few training steps, no lm-eval; `sections` replace keys of a section."""
    raw = yaml.safe_load((PROJECT_ROOT / "configs/demo.yaml").read_text())
    overrides: dict[str, dict[str, Any]] = {
        "storage": {"root": str(tmp_path / "store")},
        "catalog": {"path": str(tmp_path / "catalog.duckdb")},
        "source": {"url": str(crawl), "files_per_partition": 1, "interval_seconds": 2},
        "ingest": {"workers": 1},
        "dedup": {"near": {"workers": 1}, "wait_seconds": 2},
        "rewrite": {
            "max_model_len": 512,
            "backend": "endpoint",
            "model": {"source": "hf_dir", "path": str(tiny_model)},
            "endpoint": {"url": vllm_server, "served_model": str(tiny_model)},
            "recipes": {"encyclopedic": {"sampling": {"max_tokens": 16}, "selection": {"sample_fraction": 0.2}}},
            "post_filter": {"min_chars": 1},
        },
        "tokenizer": {"vocab_size": 800},
        "training": {"max_steps": 6, "checkpoint_every": 6, "seq_len": 64, "micro_batch_size": 4, "warmup_steps": 2},
        "evaluation": {
            "max_tokens_per_set": 20_000,
            "generation": {"backend": "transformers", "max_tokens": 8},
            "reference": None,  # the demo's is SmolLM2; the tiny rewriter is no reference
        },
        "automation": {"interval_seconds": 2},
        **sections,
    }
    for section, values in overrides.items():
        raw[section] = {**(raw.get(section) or {}), **values}
    raw["evaluation"]["lm_eval"] = None
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


@dataclass
class DagsterDev:
    home: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dagster dev exited early:\n{self.log.read_text()[-3000:]}")
            value = patiently(predicate)  # the daemon may hold the SQLite instance a while
            if value:
                return value
            time.sleep(2)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.log.read_text()[-3000:]}")

    def wait_idle(self, instance: dg.DagsterInstance, since: float, timeout: float) -> None:
        """Until the crawl sensor has looked at the source after `since`, no run is left, and an
        automation tick after the last run ended requested nothing."""

        def idle() -> bool:
            records = instance.get_run_records()
            if any(not r.dagster_run.is_finished for r in records):
                return False
            looked = sensors_looked_since(instance, since, ["crawl_sensor"])
            if looked is None:
                return False
            # after the crawl sensor's tick (the batch it registered) and the last run's end
            outcome = automation_idle_since(instance, max([looked, *(r.end_time or 0 for r in records)]))
            if isinstance(outcome, str):
                raise AssertionError(f"the automation sensor failed:\n{outcome}")
            return outcome

        self.wait(idle, timeout, "automation to have nothing left to run")


@contextlib.contextmanager
def dagster_dev(tmp_path: Path, config: Path) -> Iterator[DagsterDev]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CRAWL2CKPT_CONFIG": str(config),
        "PYTHONPATH": str(PROJECT_ROOT),  # the instance's run launcher (jobs.run_launcher) from this checkout
    }
    log = tmp_path / "dagster_dev.log"
    command = [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(home, port, process, log)
    previous = os.environ.get("DAGSTER_HOME")
    try:
        dev.wait(lambda: _ok(f"{dev.url}/server_info"), 180, "the webserver")
        os.environ["DAGSTER_HOME"] = str(home)  # the project's dagster.yaml reads it
        yield dev
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
