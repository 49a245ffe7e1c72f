"""The evaluation settings, apart from the engines: the settings aggregator and the code version
need them when the code location loads, and importing them must not import torch or a model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from resources.common.config import Section
from resources.common.versioning import file_digest
from resources.evaluate.lm_eval_tasks import LmEvalSettings
from resources.llm.vllm_backend import VLLMSettings

DEFAULT_PROMPTS = (
    "The history of the city",
    "In this article, we explain how",
    "Die Geschichte der Stadt",
    "Question: What is the capital of France?\nAnswer:",
)


class EvalSetSpec(Section):
    path: str = Field(description="text or jsonl file (local path or fsspec URL); jsonl: a `text` field per line")
    encoding: str | None = Field(default=None, description="default: detected (BOM, UTF-16, UTF-8, cp1252)")


class GenerationSettings(Section):
    """Samples to read next to the numbers: fixed prompts and seed, so checkpoints compare."""

    backend: Literal["vllm", "transformers", "none"] = "vllm"
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_tokens: int = Field(default=48, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int = Field(default=0, ge=0)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)


class EvaluationSettings(Section):
    eval_sets: dict[str, str | EvalSetSpec] = Field(
        default_factory=lambda: {"wikitext2_valid": "data/eval/wikitext2_valid_small.txt"},
        description="name -> file; scored besides the project's held-out split",
    )
    held_out: bool = Field(default=True, description="score the validation split of the deduplicated documents")
    max_tokens_per_set: int = Field(default=200_000, ge=1, description="whole documents, in file order, up to this")
    seq_len: int | None = Field(default=None, ge=8, description="default: the context the checkpoint trained with")
    batch_size: int = Field(default=16, ge=1)
    device: str = "auto"
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    regression_tolerance: float = Field(
        default=0.02, ge=0, description="bits-per-byte may rise this much (relative) over the previous checkpoint"
    )
    lm_eval: LmEvalSettings | None = Field(
        default=None, description="downstream tasks from local files with lm-evaluation-harness (the `eval` extra)"
    )

    def specs(self) -> dict[str, EvalSetSpec]:
        return {
            name: spec if isinstance(spec, EvalSetSpec) else EvalSetSpec(path=spec)
            for name, spec in self.eval_sets.items()
        }

    def output_shaping(self) -> dict[str, object]:
        """What changes the numbers (not device or batch size). Eval sets by content, not path:
        editing a set re-evaluates, moving the checkout does not."""
        shaping = self.model_dump(exclude={"device", "batch_size", "regression_tolerance"})
        shaping["generation"]["vllm"] = self.generation.vllm.output_shaping()  # its dtype changes the samples
        if self.lm_eval is not None:  # local task files by content too
            for name, task in self.lm_eval.tasks.items():
                shaping["lm_eval"]["tasks"][name]["path"] = file_digest(task.path) or task.path
        shaping["eval_sets"] = {
            # a remote or missing set by its path: a missing set fails clearly when the asset runs
            name: {"encoding": spec.encoding, "content": file_digest(spec.path) or spec.path}
            for name, spec in self.specs().items()
        }
        return shaping
