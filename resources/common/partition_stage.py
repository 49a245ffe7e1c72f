"""The shape every per-crawl-batch stage after ingest shares: read the upstream partition shard
by shard, split each shard into kept documents and removed rows, write both, commit a manifest.

Shards map one to one, so memory is bounded by one upstream shard, and a stage only
differs in its `process` function. The provenance of kept and removed rows is collected on the
way, so the lineage catalog is fed without reading the partition back. With a Ray mapper
(resources.common.executor) each shard is a task that reads, processes and writes it on a
worker; the results come back in shard order and the manifest is committed here, as locally.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import polars as pl

from resources.common.executor import Recipe, ShardMapper
from resources.common.schemas import DOCUMENTS, PROVENANCE_COLUMNS, REMOVED, REMOVED_COLUMNS, REMOVED_SCHEMA
from resources.common.storage import Manifest, ShardInfo, ShardStore
from resources.common.versioning import OutputVersion

Process = Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]


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


@dataclass
class ShardOutput:
    """What one upstream shard became."""

    files: list[ShardInfo]
    rows_in: int
    removed_by_rule: Counter[str]
    provenance: pl.DataFrame
    removed: pl.DataFrame | None


@dataclass(frozen=True)
class _ShardTarget:
    """Where a shard's outputs go, and how (the same for every shard of a partition)."""

    store: ShardStore
    asset: str
    partition: str
    columns: list[str] | None
    removed_schema: dict[str, pl.DataType]


def _process_shard(target: _ShardTarget, index: int, frame: pl.DataFrame, process: Process) -> ShardOutput:
    kept, removed = process(frame)
    overlap = set(kept.get_column("doc_id")).intersection(removed.get_column("doc_id"))
    if overlap:  # a stage bug, never data: fail before anything is published
        raise AssertionError(f"{target.asset}: {len(overlap)} documents both kept and removed")
    store = target.store
    files = [store.write_parquet_shard(target.asset, target.partition, index, kept, DOCUMENTS)]
    provenance = kept.select(c for c in PROVENANCE_COLUMNS if c in kept.columns)
    if not removed.height:
        return ShardOutput(files, frame.height, Counter(), provenance, None)
    files.append(
        store.write_parquet_shard(target.asset, target.partition, index, removed.cast(target.removed_schema), REMOVED)
    )
    by_rule = Counter(dict(removed.group_by("rule").len().iter_rows()))
    return ShardOutput(files, frame.height, by_rule, provenance, removed.select(REMOVED_COLUMNS))


def _shard_task(job: tuple[int, str], target: _ShardTarget, recipe: Recipe) -> ShardOutput:
    """One shard on a worker: read it, process it with the recipe's engine, write its outputs."""
    index, path = job
    return _process_shard(target, index, target.store.read_shard(path, target.columns), recipe.build())


def run_partition_stage(
    store: ShardStore,
    version: OutputVersion,
    *,
    asset: str,
    upstream: str,
    partition: str,
    run_id: str,
    process: Callable[[], Process],
    extra_inputs: dict[str, str] | None = None,
    columns: list[str] | None = None,
    finish: Callable[[], dict[str, Iterable[pl.DataFrame]]] | None = None,
    removed_schema: dict[str, pl.DataType] = REMOVED_SCHEMA,
    mapper: ShardMapper | None = None,
    stats: dict[str, object] | None = None,
) -> StageOutput:
    """`process()` builds the stage's `(shard) -> (kept, removed)`; it is called on the shards in
    order (so it may carry state from one shard to the next); `removed` follows `removed_schema`.
    With a `mapper`, `process` must be picklable (a functools.partial of a module-level function)
    and stateless across shards: each worker builds it once. `finish()` may return further tables,
    one shard per frame (e.g. a dedup index segment), to publish with the partition; `stats` join
    the manifest's."""
    started = time.perf_counter()
    source = upstream_manifest(store, upstream, partition)
    target = _ShardTarget(store, asset, partition, columns, removed_schema)
    if mapper is None:
        engine = process()
        frames = enumerate(store.iter_frames(source, columns))
        outputs: Iterable[ShardOutput] = (_process_shard(target, i, frame, engine) for i, frame in frames)
    else:
        jobs = list(enumerate(store.shard_paths(source)))
        outputs = mapper.map(_shard_task, jobs, target, Recipe.of(process))
    files, rows_in, by_rule = [], 0, Counter()
    provenance, why = [], []
    for output in outputs:
        files += output.files
        rows_in += output.rows_in
        by_rule.update(output.removed_by_rule)
        provenance.append(output.provenance)
        if output.removed is not None:
            why.append(output.removed)
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
        manifest,
        rows_in,
        by_rule,
        time.perf_counter() - started,
        concat_or_none(provenance),
        # empty, not None, when nothing was removed: the catalog then drops an earlier run's rows
        pl.concat(why) if why else pl.DataFrame(schema=removed_schema).select(REMOVED_COLUMNS),
    )
