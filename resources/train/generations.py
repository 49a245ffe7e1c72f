"""The pipeline's checkpoints, kept as a history of generations: what the next generation trains on
(the whole mixture from scratch, or only the new shards plus replay when it continues the last
one), whether it ends with MeCo's cool-down, which run directory it trains in, and its final step
published to the store beside the earlier generations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from resources.common.model_store import MODEL
from resources.common.storage import UNPARTITIONED, Manifest, ShardInfo, ShardStore, sha256_bytes, stable_hash
from resources.lineage.checkpoints import STEP_MANIFEST, step_manifests
from resources.tokenize.tokenizer import load_tokenizer
from resources.train.config import RunSpec, TrainConfig
from resources.train.data import TokenSource, with_replay
from resources.train.mixture import TRAINING_MIXTURE, crawl_batch_versions, mixture_token_sources, read_mixture

if TYPE_CHECKING:
    from resources.train.trainer import TrainResult

CHECKPOINT = "checkpoint"


@dataclass
class Generation:
    result: TrainResult
    files: list[ShardInfo]  # the final step's files, as published
    inputs: dict[str, str]  # every token shard, the tokenizer and the mixture, with their data versions
    stats: dict[str, object]  # the final step directory (relative to the asset's) and its step
    continued_from: str | None
    token_shards: int
    crawl_batches: dict[str, str]  # the mixture's crawl batches it saw (crawl_batch_versions)
    passed_over: list[str] = field(default_factory=list)  # later generations not continued: they saw withdrawn data

    def summary(self) -> dict[str, object]:
        result = self.result
        return {
            "step": result.step,
            "final_loss": round(result.final_loss, 4),
            "tokens_seen": result.tokens_seen,
            "tokens_per_second": round(result.tokens_per_s, 1),
            "mfu": round(result.mfu, 4) if result.mfu is not None else None,
            "parameters": result.params,
            "resumed_from": str(result.resumed_from or ""),
            "continued_from": self.continued_from or "",
            "token_shards": self.token_shards,
            "passed_over": ", ".join(self.passed_over),
        }


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


def run_name(shaping: dict[str, object], inputs: dict[str, str], continue_from: str | None) -> str:
    """One run directory per (settings, data, parent): rerunning after a kill resumes it; new data
    or settings start a new generation beside the old ones."""
    return f"run-{stable_hash([shaping, inputs, continue_from])[:12]}"


def generations(store: ShardStore) -> list[tuple[str, dict]]:
    """Every finished generation in the store, oldest first: (name, step manifest) of each run's
    final step. A run killed before its last step (it will resume) is not a generation yet."""
    finished = [
        (name, manifest)
        for name, manifest in step_manifests(store, CHECKPOINT)
        if manifest.get("step") == manifest.get("config", {}).get("max_steps")
    ]
    return sorted(finished, key=lambda found: (found[1].get("created_at", ""), found[0]))


def trained_versions(step_manifest: dict) -> set[str]:
    """The data versions of every token shard a checkpoint's weights saw, its parents' included."""
    return {entry["data_version"] for entry in step_manifest.get("trained_on", [])}


def local_step(store: ShardStore, name: str, step_manifest: dict) -> Path:
    """A stored checkpoint's step directory on local disk (downloaded once when the store is remote)."""
    directory = store.partition_dir(CHECKPOINT, None)
    body = store.read_bytes(f"{directory}/{name}/{STEP_MANIFEST}")
    files = [ShardInfo(f"{name}/{n}", 0, f["bytes"], f["sha256"], MODEL) for n, f in step_manifest["files"].items()]
    files.append(ShardInfo(f"{name}/{STEP_MANIFEST}", 0, len(body), sha256_bytes(body), MODEL))
    return store.local_partition(Manifest(CHECKPOINT, UNPARTITIONED, files)) / name


@dataclass(frozen=True)
class Parent:
    path: Path
    seen: set[str]  # data versions it trained on: the next generation replays them instead of learning them anew


def parent_generation(
    store: ShardStore, withdrawn: set[str], restart: Literal["last_clean", "scratch"]
) -> tuple[Parent | None, list[str]]:
    """The generation the next one continues (None: none yet, or start from scratch), and the later
    ones passed over. The latest, unless it trained on a token shard version that held taken-down
    documents (`withdrawn`): then the last one that did not (`last_clean`), or none (`scratch`)."""
    passed_over = []
    for name, manifest in reversed(generations(store)):
        if not trained_versions(manifest) & withdrawn:
            return Parent(local_step(store, name, manifest), trained_versions(manifest)), passed_over
        passed_over.append(name)
        if restart == "scratch":
            break
    return None, passed_over


def train_generation(
    store: ShardStore,
    config: TrainConfig,
    tokenizer_dir: Path,
    tokenizer_inputs: dict[str, str],
    progress: Callable[[dict[str, float]], None] | None = None,
    withdrawn: set[str] | frozenset[str] = frozenset(),
    restart: Literal["last_clean", "scratch"] = "last_clean",
) -> Generation:
    """Train the next generation on the materialized mixture (resuming its run if one was killed)
    and publish its final step; `tokenizer_inputs` names the tokenizer's data version. A continued
    generation never starts from weights that saw `withdrawn` token shard versions (see
    `parent_generation`)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    mixture, mixture_version = read_mixture(store)
    sources = mixture_token_sources(store, mixture)
    files = [f for source in sources for f in source.files]
    continue_from = None
    parent, passed_over = parent_generation(store, set(withdrawn), restart) if config.continue_training else (None, [])
    if parent is not None:
        continued = with_seen_replay(sources, parent.seen, config.replay_fraction)
        if continued is not None:
            sources = continued
            continue_from = str(parent.path)
    inputs = {f"{Path(f.path).parent.parent.name}/{Path(f.path).name}": f.data_version for f in files}
    inputs.update(tokenizer_inputs)
    inputs[TRAINING_MIXTURE] = mixture_version
    root = store.local_dir(CHECKPOINT, None)  # remote stores: trained locally, final step uploaded
    spec = RunSpec(
        out_dir=str(root / run_name(config.output_shaping(), inputs, continue_from)),
        vocab_size=tokenizer.vocab_size,
        tokenizer_path=str(tokenizer_dir),
        eos_token_id=tokenizer.eos_id,
        continue_from=continue_from,
    )
    from resources.train.trainer import train  # torch: loaded by the process that trains, not by every importer

    result = train(config, spec, sources, progress, meco_cooldown(store, mixture, continue_from is not None))
    final = result.checkpoint
    published = store.publish_files(CHECKPOINT, None, root, sorted(p for p in final.iterdir() if p.is_file()), MODEL)
    stats = {"checkpoint": str(final.relative_to(root)), "step": result.step}
    return Generation(
        result, published, inputs, stats, continue_from, len(files), crawl_batch_versions(mixture), passed_over
    )
