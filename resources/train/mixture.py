"""The training mixture: natural and synthetic token shards combined by configured weights, with how
much each source is up- or down-sampled and every input partition's data version; and the mixture
read back as the trainer's token sources."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from resources.common.partition_stage import upstream_manifest
from resources.common.schemas import TOKEN_INDEX, TOKENS
from resources.common.storage import ShardInfo, ShardStore, sha256_bytes, stable_hash
from resources.train.data import TokenFile, TokenSource

TRAINING_MIXTURE = "training_mixture"
MIXTURE_FILE = "mixture.json"


class MixtureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: {"crawl": 1.0, "synthetic": 0.3},
        description="sampling weight per source (crawl, synthetic); normalised over the sources with tokens",
    )

    def output_shaping(self, token_assets: dict[str, str]) -> dict[str, object]:
        return {"weights": self.weights, "sources": token_assets}


def mixture_sources(store: ShardStore, assets: dict[str, str]) -> dict[str, dict]:
    """Per source: its token-shard partitions with data versions and train tokens."""
    sources = {}
    for source, asset in assets.items():
        partitions = {m.partition: m for m in store.iter_manifests(asset)}
        sources[source] = {
            "asset": asset,
            "partitions": {key: m.data_version for key, m in sorted(partitions.items())},
            "train_tokens": sum(m.stats["tokens"] - m.stats["validation_tokens"] for m in partitions.values()),
        }
    return sources


def crawl_batch_versions(sources: Mapping[str, Mapping]) -> dict[str, str]:
    """Per crawl batch in the mixture, one short hash over the data versions of its partitions in
    every source: what a training policy compares between the mixture and a checkpoint."""
    batches: dict[str, list[tuple[str, str]]] = {}
    for name, source in sorted(sources.items()):
        for key, version in source["partitions"].items():
            batches.setdefault(key, []).append((name, version))
    return {key: stable_hash(versions)[:12] for key, versions in sorted(batches.items())}


def retrain_reason(trained: Mapping[str, str], current: Mapping[str, str], every_n: int) -> str | None:
    """Why a checkpoint trained on the crawl batches `trained` is due for retraining on `current`
    (both from `crawl_batch_versions`), or None: batches it saw changed or left (a takedown, a
    changed filter: at once), or at least `every_n` batches are new."""
    changed = {key for key, version in trained.items() if current.get(key) != version}
    if changed:
        return f"{len(changed)} crawl batches it was trained on changed"
    new = current.keys() - trained.keys()
    return f"{len(new)} new crawl batches" if len(new) >= every_n else None


def weigh(sources: dict[str, dict], weights: dict[str, float]) -> dict[str, dict]:
    """Each source's share of the mixture (its weight over the weights of the sources with tokens) and
    its sampling factor (share of the mixture / share of the tokens: > 1 is upsampling)."""
    present = {name: weights.get(name, 0.0) for name in sources if sources[name]["train_tokens"]}
    total_weight, total_tokens = sum(present.values()), sum(s["train_tokens"] for s in sources.values())
    if not total_weight:
        raise ValueError(f"training_mixture: no source with tokens has a positive weight ({weights})")
    for name, source in sources.items():
        share = present.get(name, 0.0) / total_weight
        tokens = source["train_tokens"]
        source.update(weight=share, sampling_factor=round(share / (tokens / total_tokens), 4) if tokens else 0.0)
    return sources


def write_mixture(store: ShardStore, sources: dict[str, dict]) -> tuple[list[ShardInfo], dict[str, str]]:
    """The mixture file, and the data version of every input partition (the manifest's inputs)."""
    body = json.dumps(sources, indent=2, sort_keys=True).encode()
    store.write_bytes(posixpath.join(store.partition_dir(TRAINING_MIXTURE, None), MIXTURE_FILE), body)
    inputs = {f"{s['asset']}[{key}]": dv for s in sources.values() for key, dv in s["partitions"].items()}
    return [ShardInfo(MIXTURE_FILE, 0, len(body), sha256_bytes(body), "mixture")], inputs


def read_mixture(store: ShardStore) -> tuple[dict[str, dict], str]:
    manifest = store.read_manifest(TRAINING_MIXTURE, None)
    if manifest is None:
        raise FileNotFoundError(f"{TRAINING_MIXTURE} is not materialized: materialize it first")
    path = posixpath.join(store.partition_dir(TRAINING_MIXTURE, None), MIXTURE_FILE)
    return json.loads(store.read_bytes(path)), manifest.data_version


def token_files(
    store: ShardStore, asset: str, partitions: dict[str, str], drop_prefix: bool = False
) -> list[TokenFile]:
    """The train split of the named token-shard partitions, in order, memory-mapped (from a local
    mirror when the store is remote); `drop_prefix` leaves out the MeCo metadata prefixes (the
    cool-down's view of the same shards)."""
    files = []
    for key in partitions:
        manifest = upstream_manifest(store, asset, key)
        root = store.local_partition(manifest)
        tokens = sorted(f.path for f in manifest.files if f.table == TOKENS)
        indexes = sorted(f.path for f in manifest.files if f.table == TOKEN_INDEX)
        for path, index in zip(tokens, indexes, strict=True):
            files.append(
                TokenFile.from_index(
                    str(root / path),
                    str(root / index),
                    dtype=manifest.stats["dtype"],
                    data_version=manifest.data_version,
                    drop_prefix=drop_prefix,
                )
            )
    return files


def mixture_token_sources(store: ShardStore, mixture: dict[str, dict], drop_prefix: bool = False) -> list[TokenSource]:
    """One token source per mixture source with a positive weight, over all its partitions' shards."""
    return [
        TokenSource(name, token_files(store, spec["asset"], spec["partitions"], drop_prefix), spec["weight"])
        for name, spec in mixture.items()
        if spec.get("weight", 0) > 0
    ]
