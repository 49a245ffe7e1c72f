"""The pipeline's checkpoints, kept as a history of generations: what the next generation trains on
(the whole mixture from scratch, or only the new shards plus replay when it continues the last
one), whether it ends with MeCo's cool-down, which run directory it trains in, and its final step
published to the store beside the earlier generations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from resources.common.model_store import MODEL
from resources.common.storage import ShardInfo, ShardStore, stable_hash
from resources.tokenize.tokenizer import load_tokenizer
from resources.train.config import RunSpec, TrainConfig
from resources.train.data import TokenSource, with_replay
from resources.train.mixture import TRAINING_MIXTURE, mixture_token_sources, read_mixture
from resources.train.trainer import train

CHECKPOINT = "checkpoint"


@dataclass
class Generation:
    checkpoint: Path  # the final step directory
    files: list[ShardInfo]  # the final step's files, as published
    inputs: dict[str, str]  # every token shard, the tokenizer and the mixture, with their data versions
    stats: dict[str, object]  # the final step directory (relative to the asset's) and its step
    summary: dict[str, object]  # the run's numbers, for the asset's metadata


def with_seen_replay(sources: Sequence[TokenSource], seen: set[str], fraction: float) -> list[TokenSource] | None:
    """Continual pre-training data: the shards whose data version the last generation did not see,
    plus a `fraction` of replay over those it did (none when nothing was seen); None when there is
    nothing new, so the next generation retrains on the whole mixture instead."""
    new = [TokenSource(s.name, [f for f in s.files if f.data_version not in seen], s.weight) for s in sources]
    new = [s for s in new if s.files]
    old = [f for s in sources for f in s.files if f.data_version in seen]
    return with_replay(new, old, fraction if old else 0.0) if new else None


def meco_cooldown(store: ShardStore, mixture: dict[str, dict], continuing: bool) -> list[TokenSource] | None:
    """The plain-text view of the mixture for MeCo's cool-down, when its shards carry metadata
    prefixes. A continued run trains on new shards plus replay, which that view of the whole
    mixture does not match: the cool-down applies to runs from scratch."""
    prefixed = any(
        m.stats.get("metadata_prefix", "none") != "none"
        for spec in mixture.values()
        for m in store.iter_manifests(spec["asset"])
    )
    return mixture_token_sources(store, mixture, drop_prefix=True) if prefixed and not continuing else None


def train_generation(
    store: ShardStore,
    config: TrainConfig,
    tokenizer_dir: Path,
    tokenizer_inputs: dict[str, str],
    progress: Callable[[dict[str, float]], None] | None = None,
) -> Generation:
    """Train the next generation on the materialized mixture (resuming its run if one was killed)
    and publish its final step; `tokenizer_inputs` names the tokenizer's data version."""
    tokenizer = load_tokenizer(tokenizer_dir)
    mixture, mixture_version = read_mixture(store)
    sources = mixture_token_sources(store, mixture)
    files = [f for source in sources for f in source.files]
    previous = store.read_manifest(CHECKPOINT, None)
    continue_from = None
    if config.continue_training and previous is not None:
        continued = with_seen_replay(sources, set(previous.inputs.values()), config.replay_fraction)
        if continued is not None:
            sources = continued
            continue_from = str(store.local_partition(previous) / previous.stats["checkpoint"])
    inputs = {f"{Path(f.path).parent.parent.name}/{Path(f.path).name}": f.data_version for f in files}
    inputs.update(tokenizer_inputs)
    inputs[TRAINING_MIXTURE] = mixture_version
    root = store.local_dir(CHECKPOINT, None)  # remote stores: trained locally, final step uploaded
    # One run directory per (settings, data, parent): rerunning after a kill resumes it; new data or
    # settings start a new generation beside the old ones.
    run_name = f"run-{stable_hash([config.output_shaping(), inputs, continue_from])[:12]}"
    spec = RunSpec(
        out_dir=str(root / run_name),
        vocab_size=tokenizer.vocab_size,
        tokenizer_path=str(tokenizer_dir),
        eos_token_id=tokenizer.eos_id,
        continue_from=continue_from,
    )
    result = train(config, spec, sources, progress, meco_cooldown(store, mixture, continue_from is not None))
    final = result.checkpoint
    published = store.publish_files(CHECKPOINT, None, root, sorted(p for p in final.iterdir() if p.is_file()), MODEL)
    stats = {"checkpoint": str(final.relative_to(root)), "step": result.step}
    summary = {
        "step": result.step,
        "final_loss": round(result.final_loss, 4),
        "tokens_seen": result.tokens_seen,
        "tokens_per_second": round(result.tokens_per_s, 1),
        "mfu": round(result.mfu, 4) if result.mfu is not None else None,
        "parameters": result.params,
        "resumed_from": str(result.resumed_from or ""),
        "continued_from": continue_from or "",
        "token_shards": len(files),
    }
    return Generation(final, published, inputs, stats, summary)
