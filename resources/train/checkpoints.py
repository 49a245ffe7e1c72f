"""Checkpoint directories: written atomically, verified on read, kept as a history, and read back
into a run only when they fit it.

A training run owns one directory; each checkpoint is a subdirectory named by its step:

    <run_dir>/step-000100/
        config.json, generation_config.json, model.safetensors   `save_pretrained` (fp32 weights):
                                                                 loads with `from_pretrained` and vLLM
        tokenizer.json, tokenizer_config.json, ...               when the run was given a tokenizer
        trainer_state.pt    optimizer, LR schedule, RNG states, step, data position, loss history
        loss_curve.png      the loss so far
        manifest.json       written last: size and sha256 of every file above, the token shards
                            (path + data version) trained on, metrics, config, parent checkpoint

A checkpoint is first written to `<run_dir>/.tmp-step-...`, every file and the directory are
fsync'ed, and only then renamed to its final name, so a kill at any moment leaves either a complete
step directory or a hidden temporary one (removed on the next start). Step directories are never
overwritten. "Latest" is not a pointer file that could go stale: it is the highest-numbered step
directory that verifies (manifest present, every file there with its recorded size and hash); a
damaged one is skipped with a warning and the one before it is used. Weights load exactly as saved;
a checkpoint of another model shape is refused rather than half loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from matplotlib.figure import Figure
from transformers import LlamaConfig, LlamaForCausalLM

from resources.train.config import EXECUTION_KNOBS

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
PLOT_FILE = "loss_curve.png"
FORMAT = "crawl2ckpt.checkpoint/1"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"
# Free to differ on resume: how the run executes, and what only its start reads (the pipeline's
# choice of data and parent is already in the sources and in the saved lineage).
RESUME_FREE = EXECUTION_KNOBS | {"out_dir", "tokenizer_path", "continue_from", "load_optimizer"}
RESUME_FREE |= {"continue_training", "replay_fraction"}

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written."""


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Every step directory of a run, oldest first, verified or not."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def verify_checkpoint(path: str | Path) -> str | None:
    """Why a checkpoint directory is unusable, or None when every file its manifest names is there
    with the recorded size and sha256 (which also catches a truncated or bit-flipped safetensors)."""
    root = Path(path)
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError) as error:
        return f"unreadable {MANIFEST_FILE} ({error})"
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        return f"{MANIFEST_FILE} is not a {FORMAT} manifest"
    for name in (MODEL_FILE, STATE_FILE, "config.json"):
        if name not in manifest["files"]:
            return f"the manifest does not list {name}"
    for name, expected in manifest["files"].items():
        file = root / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']} (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its sha256 (corrupted)"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The highest step directory that verifies; damaged ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log.warning("ignoring checkpoint %s (step %d): %s; falling back to an earlier one", path, step, problem)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A verified checkpoint from either a step directory or a run directory (its latest)."""
    root = Path(path)
    if (root / MANIFEST_FILE).exists():
        problem = verify_checkpoint(root)
        if problem:
            raise CheckpointError(f"checkpoint {root} is unusable: {problem}")
        return root
    latest = latest_checkpoint(root)
    if latest is None:
        raise CheckpointError(f"no usable checkpoint in {root}")
    return latest


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST_FILE).read_text())


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """The optimizer/schedule/RNG/data state. `weights_only` loading: tensors and plain containers
    only, so a checkpoint cannot run code."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def load_weights(model: LlamaForCausalLM, checkpoint: Path) -> None:
    """Load fp32 weights exactly as saved (no dtype round trip); a tied head may be absent."""
    weights = safetensors.torch.load_file(checkpoint / MODEL_FILE)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight", "model.embed_tokens.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied or len(missing) > 1:
        raise CheckpointError(f"{checkpoint} does not fit the model: missing {missing}, unexpected {unexpected}")


def check_same_shape(config: LlamaConfig, checkpoint: Path) -> None:
    """Refuse a parent checkpoint whose architecture differs from the model being trained."""
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


def check_resumable(
    state: dict[str, Any], current: dict[str, Any], sources: list[dict[str, Any]], world: int, run_dir: Path
) -> None:
    """Refuse another model shape; warn when anything else that shapes the trajectory changed."""
    saved = state["config"]
    shape = [k for k in ("preset", "vocab_size", "seq_len") if saved.get(k) != current[k]]
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


def loss_curve_markdown(checkpoint: Path) -> str:
    """The checkpoint's loss curve as a data URL (empty when there is none): the UI shows it without a
    file server."""
    png = checkpoint / PLOT_FILE
    if not png.exists():
        return ""
    return f"![loss curve](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"


def clean_partial(run_dir: str | Path) -> list[Path]:
    """Remove temporary directories left by a run killed while saving (they were never renamed, so
    nothing reads them). Call before a run starts writing, from the one process that writes."""
    root = Path(run_dir)
    removed = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_TMP_PREFIX)] if root.is_dir() else []
    for p in removed:
        log.warning("removing partial checkpoint %s left by an interrupted save", p)
        shutil.rmtree(p)
    return removed


def copy_tokenizer(tokenizer_dir: str | Path, directory: Path) -> None:
    """The tokenizer files there are, beside the weights: a checkpoint directory serves on its own."""
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy2(Path(tokenizer_dir) / name, directory / name)


def plot_losses(losses: list[float], checkpoint: Path, title: str) -> None:
    """The loss curve as the checkpoint's PNG, drawn on a bare Figure (Agg canvas, no pyplot global state)."""
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses, linewidth=1)
    axes.set(xlabel="step", ylabel="train loss", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(checkpoint / PLOT_FILE)


def save_checkpoint(
    run_dir: str | Path, step: int, write_files: Callable[[Path], None], manifest: dict[str, Any]
) -> Path:
    """Write a checkpoint atomically and return its directory: `write_files(directory)` writes every
    file but the manifest, which gets `manifest` plus format, step and every file's size and sha256.
    An existing step directory is never replaced: a verified one is an error, a damaged one is moved
    aside (kept hidden for inspection)."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_files(tmp)
        written = sorted(p for p in tmp.rglob("*") if p.is_file())
        files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in written}
        body = {**manifest, "format": FORMAT, "step": step, "files": files}
        (tmp / MANIFEST_FILE).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
        for p in [*written, tmp / MANIFEST_FILE]:
            p.chmod(0o644)  # transformers writes the weights through a private (0600) temporary file
            _fsync(p)
        _fsync(tmp)
        if final.exists():
            problem = verify_checkpoint(final)
            if problem is None:
                raise CheckpointError(f"{final} already exists; checkpoints are never overwritten")
            aside = root / f".invalid-{final.name}-{uuid.uuid4().hex[:8]}"
            log.warning("moving damaged checkpoint %s aside to %s (%s)", final, aside.name, problem)
            final.rename(aside)
        tmp.rename(final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk, so a rename never publishes unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
