"""Where the rewriting model comes from: the tiny random Llama built here (tests, the demo), or a
Hugging Face model directory taken as it is. Either way the result is a local directory that
vLLM and transformers load; the `rewriter_model` asset publishes it, so every step that generates
loads the published copy, never a path some script prepared beforehand.

A directory is verified before it is published (config, tokenizer and weights that match the
architecture), so a wrong path fails in the model's own step with the path and what is missing,
not a minute later deep inside an engine start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from resources.common.config import Section
from resources.llm.model import ModelPathError, inspect_model, load_tokenizer
from resources.llm.tiny_model import build_tiny_model

TINY_NAME = "tiny-llama"
_MAX_HEADER = 100 << 20  # safetensors caps its JSON header at 100 MB


class RewriterModelSettings(Section):
    """`source: tiny` builds the tiny random-weight Llama (the vLLM path is real, the text is noise);
    `source: hf_dir` takes `path`, a local Hugging Face model directory (config.json, tokenizer,
    safetensors or pytorch_model*.bin weights): an instruct model, or one of our checkpoints."""

    source: Literal["tiny", "hf_dir"] = "tiny"
    path: str | None = Field(default=None, description="hf_dir: the model directory")
    name: str | None = Field(default=None, description="the `model` column's stem; default: tiny-llama or the folder")

    @model_validator(mode="after")
    def _path_matches_source(self) -> RewriterModelSettings:
        if self.source == "hf_dir" and not self.path:
            raise ValueError("rewrite.model: source hf_dir needs `path` (a Hugging Face model directory)")
        if self.source == "tiny" and self.path:
            raise ValueError("rewrite.model: source tiny builds its own model and takes no `path`")
        return self

    @property
    def label(self) -> str:
        return self.name or (TINY_NAME if self.source == "tiny" else Path(str(self.path)).name)

    def output_shaping(self) -> dict[str, object]:
        """The source and the path: a different directory is a different model. A directory whose
        files change in place is noticed when the asset is materialized again (a new data version)."""
        return self.model_dump()


@dataclass(frozen=True)
class PreparedModel:
    path: Path  # a local directory holding everything the engine loads
    metadata: dict[str, Any]


def prepare_model(settings: RewriterModelSettings, workdir: Path) -> PreparedModel:
    """Build or verify the configured model; `workdir` holds a built model until it is published."""
    if settings.source == "tiny":
        built = build_tiny_model(workdir / TINY_NAME)
        return PreparedModel(built, {"source": "tiny", **verify_model_dir(built)})
    path = Path(str(settings.path)).expanduser()
    return PreparedModel(path, {"source": "hf_dir", "source_path": str(path), **verify_model_dir(path)})


def verify_model_dir(path: Path) -> dict[str, Any]:
    """That `path` holds a model transformers and vLLM can load: a config of a known architecture,
    a tokenizer that loads, and weight files naming every tensor the architecture has (checked from
    the file headers and an empty model on the meta device, so a 100 GB model is not read). Returns
    metadata for the UI; raises ModelPathError naming the path and what is wrong."""
    info = inspect_model(path)
    from transformers import AutoConfig, AutoModelForCausalLM  # slow import, only when a model is checked

    try:
        config = AutoConfig.from_pretrained(str(info.path))
    except Exception as exc:  # any loader failure is one message: the config is not usable
        raise ModelPathError(f"cannot load the model config in {info.path}: {exc}") from exc
    tokenizer = load_tokenizer(info)
    found = _weight_names(info.path)
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = set(model.state_dict())
    if getattr(config, "tie_word_embeddings", False):
        expected.discard("lm_head.weight")
    missing = sorted(expected - found)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelPathError(f"{info.path}: the weights lack {len(missing)} tensors of {config.model_type}: {shown}")
    return {
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "max_position_embeddings": info.max_position_embeddings,
        "fingerprint": info.fingerprint,
    }


def _weight_names(path: Path) -> set[str]:
    """Tensor names from the weight files' headers (safetensors) or a memory map (PyTorch .bin)."""
    names: set[str] = set()
    for file in sorted(path.glob("*.safetensors")):
        try:
            with open(file, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if not 0 < size <= min(file.stat().st_size - 8, _MAX_HEADER):
                    raise ValueError(f"header size {size} does not fit the file")
                header = json.loads(handle.read(size))
        except (OSError, ValueError) as exc:
            raise ModelPathError(f"{file} is not a readable safetensors file: {exc}") from exc
        names.update(k for k in header if k != "__metadata__")
    for file in sorted(path.glob("pytorch_model*.bin")):
        import torch

        try:
            names.update(torch.load(file, map_location="meta", weights_only=True, mmap=True))
        except Exception as exc:  # a truncated or foreign file: one clear message
            raise ModelPathError(f"{file} is not a readable PyTorch weights file: {exc}") from exc
    return names
