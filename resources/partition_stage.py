"""The shape every per-crawl-batch stage after ingest shares: read the upstream partition shard
by shard, split each shard into kept documents and removed rows, write both, commit a manifest.

Shards map one to one, so memory is bounded by one upstream shard, and a stage only
differs in its `process` function.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from resources.storage import DOCUMENTS, Manifest, ShardStore

REMOVED = "removed"
REMOVED_SCHEMA: dict[str, pl.DataType] = {
    "doc_id": pl.String(),
    "url": pl.String(),
    "crawl_batch": pl.String(),
    "stage": pl.String(),
    "rule": pl.String(),
    "detail": pl.String(),
    "duplicate_of": pl.String(),
}


class UpstreamMissing(RuntimeError):
    pass


@dataclass
class StageOutput:
    manifest: Manifest
    rows_in: int
    removed_by_rule: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rows_out(self) -> int:
        return self.manifest.rows

    @property
    def keep_rate(self) -> float:
        return self.rows_out / self.rows_in if self.rows_in else 1.0


def removed_rows(frame: pl.DataFrame, stage: str, rule: pl.Expr | str, detail: pl.Expr | str) -> pl.DataFrame:
    """Removed rows for the documents of `frame`, in the shared schema."""
    as_expr = lambda value: value if isinstance(value, pl.Expr) else pl.lit(value)  # noqa: E731
    return frame.select(
        pl.col("doc_id"),
        pl.col("url"),
        pl.col("crawl_batch"),
        pl.lit(stage).alias("stage"),
        as_expr(rule).cast(pl.String).alias("rule"),
        as_expr(detail).cast(pl.String).alias("detail"),
        (pl.col("duplicate_of") if "duplicate_of" in frame.columns else pl.lit(None))
        .cast(pl.String)
        .alias("duplicate_of"),
    )


def upstream_manifest(store: ShardStore, asset: str, partition: str) -> Manifest:
    manifest = store.read_manifest(asset, partition)
    if manifest is None:
        raise UpstreamMissing(f"{asset} has no materialization for crawl batch {partition!r}: materialize it first")
    return manifest


def run_partition_stage(
    store: ShardStore,
    *,
    asset: str,
    upstream: str,
    partition: str,
    process: Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]],
    code_version: str,
    config_hash: str,
    run_id: str,
    extra_inputs: dict[str, str] | None = None,
    columns: list[str] | None = None,
    finish: Callable[[], dict[str, pl.DataFrame]] | None = None,
) -> StageOutput:
    """`process(shard) -> (kept, removed)`, called on the shards in order (so it may carry state
    from one shard to the next); `removed` follows REMOVED_SCHEMA. `finish()` may return further
    tables (e.g. a dedup index segment) to publish with the partition."""
    started = time.perf_counter()
    source = upstream_manifest(store, upstream, partition)
    files, rows_in, by_rule = [], 0, Counter()
    for index, frame in enumerate(store.iter_frames(source, columns)):
        rows_in += frame.height
        kept, removed = process(frame)
        overlap = set(kept.get_column("doc_id")).intersection(removed.get_column("doc_id"))
        if overlap:  # a stage bug, never data: fail before anything is published
            raise AssertionError(f"{asset}: {len(overlap)} documents both kept and removed")
        files.append(store.write_parquet_shard(asset, partition, index, kept, DOCUMENTS))
        if removed.height:
            files.append(store.write_parquet_shard(asset, partition, index, removed.cast(REMOVED_SCHEMA), REMOVED))
            by_rule.update(dict(removed.group_by("rule").len().iter_rows()))
    for table, frame in (finish() if finish else {}).items():
        files.append(store.write_parquet_shard(asset, partition, 0, frame, table))
    manifest = store.commit(
        Manifest(
            asset=asset,
            partition=partition,
            files=files,
            config_hash=config_hash,
            code_version=code_version,
            inputs={f"{upstream}[{partition}]": source.data_version, **(extra_inputs or {})},
            stats={"rows_in": rows_in, "removed_by_rule": dict(by_rule)},
            run_id=run_id,
        )
    )
    return StageOutput(manifest, rows_in, by_rule, time.perf_counter() - started)
