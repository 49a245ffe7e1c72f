"""The shape every per-crawl-batch stage after ingest shares: read the upstream partition shard
by shard, split each shard into kept documents and removed rows, write both, commit a manifest.

Shards map one to one, so memory is bounded by one upstream shard, and a stage only
differs in its `process` function. The provenance of kept and removed rows is collected on the
way, so the lineage catalog is fed without reading the partition back.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import polars as pl

from resources.common.schemas import DOCUMENTS, PROVENANCE_COLUMNS, REMOVED, REMOVED_COLUMNS, REMOVED_SCHEMA
from resources.common.storage import Manifest, ShardStore
from resources.common.versioning import OutputVersion


class UpstreamMissing(RuntimeError):
    pass


@dataclass
class StageOutput:
    manifest: Manifest
    rows_in: int
    removed_by_rule: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    documents: pl.DataFrame | None = None  # PROVENANCE_COLUMNS of the kept rows, for the catalog
    removed: pl.DataFrame | None = None  # REMOVED_COLUMNS of the removed rows

    @property
    def rows_out(self) -> int:
        return self.manifest.rows

    @property
    def keep_rate(self) -> float:
        return self.rows_out / self.rows_in if self.rows_in else 1.0


def upstream_manifest(store: ShardStore, asset: str, partition: str) -> Manifest:
    manifest = store.read_manifest(asset, partition)
    if manifest is None:
        raise UpstreamMissing(f"{asset} has no materialization for crawl batch {partition!r}: materialize it first")
    return manifest


def concat_or_none(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    return pl.concat(frames) if frames else None


def run_partition_stage(
    store: ShardStore,
    version: OutputVersion,
    *,
    asset: str,
    upstream: str,
    partition: str,
    run_id: str,
    process: Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]],
    extra_inputs: dict[str, str] | None = None,
    columns: list[str] | None = None,
    finish: Callable[[], dict[str, Iterable[pl.DataFrame]]] | None = None,
    removed_schema: dict[str, pl.DataType] = REMOVED_SCHEMA,
    stats: dict[str, object] | None = None,
) -> StageOutput:
    """`process(shard) -> (kept, removed)`, called on the shards in order (so it may carry state
    from one shard to the next); `removed` follows `removed_schema`. `finish()` may return further
    tables, one shard per frame (e.g. a dedup index segment), to publish with the partition;
    `stats` join the manifest's."""
    started = time.perf_counter()
    source = upstream_manifest(store, upstream, partition)
    files, rows_in, by_rule = [], 0, Counter()
    provenance, why = [], []
    for index, frame in enumerate(store.iter_frames(source, columns)):
        rows_in += frame.height
        kept, removed = process(frame)
        overlap = set(kept.get_column("doc_id")).intersection(removed.get_column("doc_id"))
        if overlap:  # a stage bug, never data: fail before anything is published
            raise AssertionError(f"{asset}: {len(overlap)} documents both kept and removed")
        files.append(store.write_parquet_shard(asset, partition, index, kept, DOCUMENTS))
        provenance.append(kept.select(c for c in PROVENANCE_COLUMNS if c in kept.columns))
        if removed.height:
            files.append(store.write_parquet_shard(asset, partition, index, removed.cast(removed_schema), REMOVED))
            by_rule.update(dict(removed.group_by("rule").len().iter_rows()))
            why.append(removed.select(REMOVED_COLUMNS))
    for table, frames in (finish() if finish else {}).items():
        files += [store.write_parquet_shard(asset, partition, i, frame, table) for i, frame in enumerate(frames)]
    manifest = store.commit(
        version.manifest(
            asset,
            partition,
            run_id,
            files,
            inputs={f"{upstream}[{partition}]": source.data_version, **(extra_inputs or {})},
            stats={"rows_in": rows_in, "removed_by_rule": dict(by_rule), **(stats or {})},
        )
    )
    return StageOutput(
        manifest, rows_in, by_rule, time.perf_counter() - started, concat_or_none(provenance), concat_or_none(why)
    )
