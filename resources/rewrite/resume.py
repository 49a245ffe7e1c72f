"""A whole partition rewritten shard by shard, resumable per shard.

Each finished input shard's outputs are written straight into the partition directory under
their content-addressed names, followed by a small `_staged-*.json` naming them, their stats, the
input shard's sha256 and the rewrite fingerprint (settings, recipes, model). The manifest,
written last, stays the only commit point: readers never see staged shards, and
`ShardStore.commit` removes the staged notes. A run killed half-way leaves notes behind; the
rerun reuses every shard whose note matches its input sha and fingerprint (passed as `done` to
`Rewriter.generate_shards`) and generates only the others. A changed input, recipe or model
changes the note's name, so nothing stale is ever reused.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import polars as pl

from resources.common.partition_stage import StageOutput, concat_or_none, upstream_manifest
from resources.common.schemas import DOCUMENTS, PROVENANCE_COLUMNS, REMOVED, REMOVED_COLUMNS
from resources.common.storage import ShardInfo, ShardStore
from resources.common.versioning import OutputVersion
from resources.rewrite.rewriter import Rewriter, RewriteStats, ShardResult

# What the lineage catalog indexes of each table
_CATALOG_COLUMNS = {DOCUMENTS: PROVENANCE_COLUMNS, REMOVED: REMOVED_COLUMNS}


@dataclass
class RewriteOutput(StageOutput):
    """A `StageOutput` (so the shared stage reporting applies) with the rewriting counts."""

    stats: RewriteStats = field(default_factory=RewriteStats)


@dataclass(frozen=True)
class _Staged:
    """A finished shard: its files, stats and catalog rows (`_CATALOG_COLUMNS` per table written)."""

    files: list[ShardInfo]
    stats: RewriteStats
    rows: dict[str, pl.DataFrame]


def _note_path(store: ShardStore, asset: str, partition: str, index: int, input_sha: str, fingerprint: str) -> str:
    name = f"_staged-{index:05d}-{input_sha[:16]}-{fingerprint}.json"
    return posixpath.join(store.partition_dir(asset, partition), name)


def _read_note(store: ShardStore, asset: str, partition: str, note: str) -> _Staged | None:
    """A finished shard from an earlier, interrupted run, if its note and files are all there.
    Its catalog rows are read back: they are not in memory."""
    if not store.fs.exists(note):
        return None
    body = store.read_json(note)
    files = [ShardInfo(**f) for f in body["files"]]
    paths = {f.table: posixpath.join(store.partition_dir(asset, partition), f.path) for f in files}
    if not all(store.fs.exists(path) for path in paths.values()):
        return None
    rows = {table: store.read_shard(path, _CATALOG_COLUMNS[table]) for table, path in paths.items()}
    return _Staged(files, RewriteStats.from_dict(body["stats"]), rows)


def _stage(store: ShardStore, asset: str, partition: str, index: int, note: str, result: ShardResult) -> _Staged:
    """Write a shard's outputs, then its note: the note is the shard's commit point."""
    tables = {DOCUMENTS: result.kept, **({REMOVED: result.removed} if result.removed.height else {})}
    files = [store.write_parquet_shard(asset, partition, index, frame, table) for table, frame in tables.items()]
    store.write_json(note, {"files": [asdict(f) for f in files], "stats": result.stats.to_dict()})
    rows = {table: frame.select(_CATALOG_COLUMNS[table]) for table, frame in tables.items()}
    return _Staged(files, result.stats, rows)


def rewrite_partition(
    store: ShardStore,
    rewriter: Rewriter,
    version: OutputVersion,
    *,
    asset: str,
    upstream: str,
    partition: str,
    run_id: str,
    extra_inputs: dict[str, str] | None = None,
    on_shard: Callable[[int, int, RewriteStats], None] | None = None,
) -> RewriteOutput:
    """Rewrite every shard of `upstream[partition]` into `asset[partition]`, one output shard per
    input shard, reusing the shards an interrupted run already finished (see the module doc).
    `extra_inputs` (the model's data version) join the manifest's inputs; `on_shard(index,
    shard_count, stats)` is called after each generated shard (progress logs)."""
    started = time.perf_counter()
    source = upstream_manifest(store, upstream, partition)
    paths = store.shard_paths(source)
    shas = [f.sha256 for f in source.files if f.table == DOCUMENTS]
    notes = [_note_path(store, asset, partition, i, sha, rewriter.fingerprint) for i, sha in enumerate(shas)]
    staged = {i: found for i, note in enumerate(notes) if (found := _read_note(store, asset, partition, note))}
    reused = len(staged)
    loaders = [partial(store.read_shard, path) for path in paths]
    for index, result in rewriter.generate_shards(loaders, done=set(staged)):
        staged[index] = _stage(store, asset, partition, index, notes[index], result)
        if on_shard:
            on_shard(index, len(paths), result.stats)
    shards = [staged[i] for i in range(len(paths))]
    stats = sum((shard.stats for shard in shards), RewriteStats())
    stats.shards_reused, stats.shards_generated = reused, len(paths) - reused
    manifest = store.commit(
        version.manifest(
            asset,
            partition,
            run_id,
            [f for shard in shards for f in shard.files],
            inputs={f"{upstream}[{partition}]": source.data_version, **(extra_inputs or {})},
            stats={"rows_in": stats.documents, **stats.to_dict(), "fingerprint": rewriter.fingerprint},
        )
    )
    documents, removed = (
        concat_or_none([shard.rows[table] for shard in shards if table in shard.rows]) for table in (DOCUMENTS, REMOVED)
    )
    return RewriteOutput(
        manifest, stats.documents, stats.removed_by_rule, time.perf_counter() - started, documents, removed, stats
    )
