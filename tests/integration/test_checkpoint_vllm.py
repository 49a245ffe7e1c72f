"""A checkpoint from our own training loop, with its tokenizer, generates with vLLM on the CPU:
the format the rewriting and evaluation stages serve models in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resources.filter.text_sources import read_documents
from resources.llm.tiny_model import train_tiny_checkpoint
from resources.settings import PROJECT_ROOT

pytestmark = pytest.mark.vllm

_GENERATE = """
import json, sys
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], max_model_len=256, gpu_memory_utilization=0.2, enable_chunked_prefill=False)
try:
    out = llm.generate(["The lobster is"], SamplingParams(max_tokens=12, temperature=0.0))[0].outputs[0]
    print(json.dumps({"tokens": len(out.token_ids), "text": out.text}))
finally:
    llm.llm_engine.engine_core.shutdown()
"""


def test_trained_checkpoint_generates_with_vllm(tmp_path: Path) -> None:
    texts = read_documents(str(PROJECT_ROOT / "data/reference/wikitext2_reference.txt"))
    checkpoint = train_tiny_checkpoint(texts, tmp_path, vocab_size=512, seq_len=64, micro_batch_size=4, steps=4)
    done = subprocess.run(
        [sys.executable, "-c", _GENERATE, str(checkpoint)], capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    generated = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"tokens"')))
    assert generated["tokens"] == 12
