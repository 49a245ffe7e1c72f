"""One way for an asset to run an engine on its partition and commit what it wrote: the partition
held by one writer at a time (`writing`), a manifest named after the asset partition, carrying the
code version and config hash Dagster was given, the run id and the input data versions; the catalog
fed from what the engine produced (`record`); the manifest's hash returned as the materialization's
data version, with the metadata every stage reports."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from resources.common.catalog import LineageCatalog
from resources.common.partition_stage import Process, StageOutput, run_partition_stage
from resources.common.storage import Manifest, ShardInfo, ShardStore
from resources.common.versioning import OutputVersion
from resources.resources import CatalogResource, ExecutorResource, StorageResource

STAGE_CHECKS = ("keep_rate_in_bounds", "no_row_both_kept_and_removed")
WARNING_CHECKS = ("keep_rate_in_bounds",)


def target(context: dg.AssetExecutionContext) -> tuple[str, str | None]:
    """The asset partition a step writes: the asset's name and its partition key (None if unpartitioned)."""
    return context.asset_key.to_user_string(), context.partition_key if context.has_partition_key else None


@contextmanager
def writing(context: dg.AssetExecutionContext, storage: StorageResource) -> Iterator[ShardStore]:
    """The store, with this step holding its asset partition: a second run writing the same
    partition waits for it (at most `storage.lock_timeout_s`, saying whom it waits for), so
    neither commit collects the other's fresh shards. Wrap everything from the first write to
    the catalog record."""
    asset, partition = target(context)
    store = storage.store()
    with store.writing(asset, partition, f"run {context.run_id}", context.log.warning):
        yield store


def record(
    context: dg.AssetExecutionContext,
    catalog: LineageCatalog,
    manifest: Manifest,
    documents: pl.DataFrame | None = None,
    removed: pl.DataFrame | None = None,
    token_index: pl.DataFrame | None = None,
) -> None:
    """Lineage for a committed manifest. The data is already published, so a catalog held by
    another process too long does not fail the step: the record is queued and applied later."""
    if not catalog.record_materialization(manifest, documents, removed, token_index):
        context.log.warning(
            f"lineage catalog {catalog.path} stayed locked by another process for {catalog.lock_timeout_s:g} s: "
            f"this record is queued in {catalog.pending_dir} and applied by the next catalog write "
            "(or `crawl2ckpt sync-catalog`)"
        )


def commit(
    context: dg.AssetExecutionContext,
    store: ShardStore,
    version: OutputVersion,
    files: Iterable[ShardInfo],
    *,
    inputs: Mapping[str, str] | None = None,
    stats: Mapping[str, Any] | None = None,
    collect: bool = True,
) -> Manifest:
    """Publish the files an engine wrote for this asset partition (`collect=False` keeps files no
    manifest names: assets that keep a history, like checkpoints)."""
    asset, partition = target(context)
    return store.commit(version.manifest(asset, partition, context.run_id, files, inputs, stats), collect=collect)


def materialized(
    store: ShardStore,
    manifest: Manifest,
    metadata: Mapping[str, Any] | None = None,
    check_results: list[dg.AssetCheckResult] | None = None,
) -> dg.MaterializeResult:
    """The manifest's hash as the data version (identical bytes keep everything downstream fresh)."""
    return dg.MaterializeResult(
        data_version=dg.DataVersion(manifest.data_version),
        metadata={"path": dg.MetadataValue.path(store.url(manifest.asset, manifest.partition)), **(metadata or {})},
        check_results=check_results or [],
    )


def blocking_check_specs(asset: str, names: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    """Checks that stop the chain on bad data: a failed check (but a warning) fails the step, so
    nothing after it, in its run or later by automation, works on data a stage got wrong."""
    return [dg.AssetCheckSpec(name, asset=asset, blocking=name not in WARNING_CHECKS) for name in names]


def stage_check_specs(asset: str, extra: tuple[str, ...] = ()) -> list[dg.AssetCheckSpec]:
    return blocking_check_specs(asset, (*STAGE_CHECKS, *extra))


def run_stage(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    catalog: CatalogResource,
    version: OutputVersion,
    *,
    upstream: str,
    process: Callable[[], Process],
    keep_rate_bounds: tuple[float, float],
    executor: ExecutorResource | None = None,
    extra_inputs: dict[str, str] | None = None,
    columns: list[str] | None = None,
    finish: Callable[[], dict[str, Iterable[pl.DataFrame]]] | None = None,
    metadata: dict[str, object] | None = None,
    check_results: Callable[[StageOutput], list[dg.AssetCheckResult]] | None = None,
    stats: dict[str, object] | None = None,
) -> dg.MaterializeResult:
    """A per-crawl-batch stage after ingest: `process()` builds `(shard) -> (kept, removed)`, run
    over the upstream partition (as Ray tasks when `executor` says so, see run_partition_stage),
    committed, recorded in the catalog and reported; `check_results(output)` adds the stage's own
    checks."""
    asset, partition = target(context)
    with writing(context, storage) as store:
        output = run_partition_stage(
            store,
            version,
            asset=asset,
            upstream=upstream,
            partition=partition,
            run_id=context.run_id,
            process=process,
            extra_inputs=extra_inputs,
            columns=columns,
            finish=finish,
            mapper=executor.mapper() if executor else None,
            stats=stats,
        )
        checks = check_results(output) if check_results else None
        return stage_result(context, store, catalog.catalog(), output, keep_rate_bounds, metadata, checks)


def stage_result(
    context: dg.AssetExecutionContext,
    store: ShardStore,
    catalog: LineageCatalog,
    output: StageOutput,
    keep_rate_bounds: tuple[float, float],
    metadata: dict[str, object] | None = None,
    check_results: list[dg.AssetCheckResult] | None = None,
    overlap_exempt: set[str] | frozenset[str] = frozenset(),
) -> dg.MaterializeResult:
    """Lineage in the catalog, the funnel per rule as metadata, and the checks every filtering stage
    must pass. `overlap_exempt`: removal rules whose rows share a doc_id with a kept row by design
    (a second identical generated output is removed as `duplicate_output`, the first is kept)."""
    manifest = output.manifest
    record(context, catalog, manifest, output.documents, output.removed)
    kept_ids = set() if output.documents is None else set(output.documents.get_column("doc_id"))
    judged = None if output.removed is None else output.removed.filter(~pl.col("rule").is_in(list(overlap_exempt)))
    both = 0 if judged is None else len(kept_ids.intersection(judged.get_column("doc_id")))
    low, high = keep_rate_bounds
    funnel = dg.MetadataValue.table(
        records=[
            dg.TableRecord({"rule": rule, "removed": count}) for rule, count in output.removed_by_rule.most_common()
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn("rule", "string"), dg.TableColumn("removed", "int")]),
    )
    return materialized(
        store,
        manifest,
        {
            "documents_in": output.rows_in,
            "documents_out": output.rows_out,
            "keep_rate": round(output.keep_rate, 4),
            "removed_by_rule": funnel,
            "seconds": round(output.seconds, 2),
            "docs_per_second": round(output.rows_in / output.seconds, 1) if output.seconds else 0.0,
            "data_version": manifest.data_version,
            **(metadata or {}),
        },
        [
            dg.AssetCheckResult(
                check_name="keep_rate_in_bounds",
                passed=low <= output.keep_rate <= high or output.rows_in == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"keep_rate": output.keep_rate, "low": low, "high": high},
            ),
            dg.AssetCheckResult(
                check_name="no_row_both_kept_and_removed", passed=both == 0, metadata={"rows_in_both": both}
            ),
            *(check_results or []),
        ],
    )


def corpus_model(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    version: OutputVersion,
    build: Callable[[ShardStore, Path], tuple[Path, dict[str, Any], dict[str, str]]],
    publish: Callable[[ShardStore, str, Path, Manifest], Manifest],
    retrain_on_new_data: bool = False,
) -> dg.MaterializeResult:
    """A model trained on the corpus (tokenizer, quality classifier): `build(store, workdir)` returns the
    model's local path, its metadata and the input partitions it read; `publish` stores the file or
    folder. The published model is kept when only new crawl batches arrived (unless
    `retrain_on_new_data`): the same data version, so nothing it feeds goes stale and a new batch is
    processed alone. Changed settings (a new code version) build it again."""
    asset, _ = target(context)
    with writing(context, storage) as store:
        previous = store.read_manifest(asset, None)
        if not retrain_on_new_data and previous is not None and previous.code_version == version.code_version:
            return dg.MaterializeResult(
                data_version=dg.DataVersion(previous.data_version), metadata={**previous.stats, "reused": True}
            )
        with tempfile.TemporaryDirectory() as workdir:
            path, stats, inputs = build(store, Path(workdir))
            manifest = version.manifest(asset, None, context.run_id, inputs=inputs, stats=stats)
            manifest = publish(store, asset, path, manifest)
    return materialized(store, manifest, manifest.stats)
