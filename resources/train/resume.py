"""Where a run starts: its own latest good checkpoint (resume), another run's weights (continual
pre-training), or fresh weights. Either way the weights are loaded exactly as saved, and a
checkpoint of another model shape is refused rather than half loaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import safetensors.torch
from transformers import LlamaConfig, LlamaForCausalLM

from resources.train.checkpoints import MODEL_FILE, CheckpointError, clean_partial, latest_checkpoint, read_manifest
from resources.train.config import EXECUTION_KNOBS
from resources.train.distributed import Placement

log = logging.getLogger(__name__)

MODEL_SHAPE = ("preset", "vocab_size", "seq_len")
# Free to differ on resume: how the run executes, and what only its start reads (the pipeline's
# choice of data and parent is already in the sources and in the saved lineage).
RESUME_FREE = EXECUTION_KNOBS | {"out_dir", "tokenizer_path", "continue_from", "load_optimizer"}
RESUME_FREE |= {"continue_training", "replay_fraction"}


def restore_point(run_dir: Path, placement: Placement) -> Path | None:
    """Rank 0 cleans partial saves and picks the latest good checkpoint; every rank uses it."""
    choice = None
    if placement.rank == 0:
        clean_partial(run_dir)
        latest = latest_checkpoint(run_dir)
        choice = str(latest) if latest else None
    choice = placement.from_rank0(choice)
    return Path(choice) if choice else None


def check_resumable(
    state: dict[str, Any], current: dict[str, Any], sources: list[dict[str, Any]], world: int, run_dir: Path
) -> None:
    """Refuse another model shape; warn when anything else that shapes the trajectory changed."""
    saved = state["config"]
    shape = [k for k in MODEL_SHAPE if saved.get(k) != current[k]]
    if shape:
        raise CheckpointError(
            f"cannot resume {run_dir}: its checkpoints have another {', '.join(shape)} "
            f"({', '.join(f'{k}={saved.get(k)!r}' for k in shape)}); use a new out_dir or continue_from"
        )
    changed = sorted(k for k in current if k not in RESUME_FREE and saved.get(k) != current[k])
    if state["data"]["sources"] != sources:
        changed.append("data sources")
    if state["data"]["world_size"] != world:
        changed.append("world size")
    if changed:
        log.warning(
            "resuming %s with changed %s: the run will differ from an uninterrupted one", run_dir, ", ".join(changed)
        )


def parent_lineage(parent: Path) -> dict[str, Any]:
    """What a continued run inherits from its parent checkpoint, for its manifests."""
    manifest = read_manifest(parent)
    return {
        "continued_from": {"path": str(parent), "step": manifest["step"]},
        "parent_trained_on": manifest["trained_on"],
        "parent_tokens": manifest["total_tokens_seen"],
    }


def load_weights(model: LlamaForCausalLM, checkpoint: Path) -> None:
    """Load fp32 weights exactly as saved (no dtype round trip); a tied head may be absent."""
    weights = safetensors.torch.load_file(checkpoint / MODEL_FILE)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight", "model.embed_tokens.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied or len(missing) > 1:
        raise CheckpointError(f"{checkpoint} does not fit the model: missing {missing}, unexpected {unexpected}")


def check_same_shape(config: LlamaConfig, checkpoint: Path) -> None:
    parent = json.loads((checkpoint / "config.json").read_text())
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "tie_word_embeddings",
    )
    differ = [f"{k}: {parent.get(k)} vs {getattr(config, k)}" for k in keys if parent.get(k) != getattr(config, k)]
    if differ:
        raise CheckpointError(f"cannot continue from {checkpoint}: another model shape ({'; '.join(differ)})")
