"""Corpus samples for the corpus-wide models (tokenizer, quality classifier), bounded by configuration.

A sample is the documents with the smallest `doc_id` (a content hash: uniform, whatever the shard,
partition or run order) among at most `partitions` partitions, those with the smallest hash of
their key: spread over every crawl and time the corpus holds, and read at a cost set by the
settings, not by the size of the corpus. A model trained on it costs the same to retrain at the
hundredth batch as at the ten-thousandth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import polars as pl

from resources.common.storage import Manifest, ShardStore


def sample_partitions(store: ShardStore, asset: str, partitions: int) -> list[Manifest]:
    """Up to `partitions` committed partitions of `asset`, picked by the hash of their key (listing
    the partitions reads no manifest; only the picked ones are read)."""
    keys = sorted(store.partition_keys(asset), key=lambda key: hashlib.sha256(key.encode()).digest())
    manifests = [store.read_manifest(asset, key) for key in keys[:partitions]]
    return sorted((m for m in manifests if m is not None), key=lambda m: m.partition)


def smallest_doc_ids(frames: Iterable[pl.DataFrame], documents: int, columns: list[str]) -> pl.DataFrame:
    """The `documents` rows with the smallest `doc_id` over all `frames` (each with `doc_id` and
    `columns`), in `doc_id` order, each doc_id once. Memory: the sample plus one frame."""
    kept: pl.DataFrame | None = None
    for frame in frames:
        smallest = frame.select("doc_id", *columns).sort("doc_id").head(documents)
        merged = smallest if kept is None else pl.concat([kept, smallest])
        kept = merged.unique("doc_id", keep="first", maintain_order=True).sort("doc_id").head(documents)
    return kept if kept is not None else pl.DataFrame(schema={"doc_id": pl.String, **dict.fromkeys(columns, pl.String)})


def sample_texts(store: ShardStore, asset: str, documents: int, partitions: int) -> tuple[list[str], dict[str, str]]:
    """The texts of a sample (see the module docstring) and the partitions it was drawn from, with
    their data versions (the model's inputs)."""
    manifests = sample_partitions(store, asset, partitions)
    frames = (frame for m in manifests for frame in store.iter_frames(m, ["doc_id", "text"]))
    texts = smallest_doc_ids(frames, documents, ["text"]).get_column("text").to_list()
    return texts, {f"{asset}[{m.partition}]": m.data_version for m in manifests}
