"""One way for an asset to run an engine on its partition and commit what it wrote: a manifest named
after the asset partition, carrying the code version and config hash Dagster was given, the run
id and the input data versions; the catalog fed from what the engine produced; the manifest's hash
returned as the materialization's data version, with the metadata every stage reports."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from resources.common.catalog import LineageCatalog
from resources.common.partition_stage import StageOutput, run_partition_stage
from resources.common.storage import Manifest, ShardInfo, ShardStore
from resources.common.versioning import OutputVersion
from resources.resources import CatalogResource, StorageResource

STAGE_CHECKS = ("keep_rate_in_bounds", "no_row_both_kept_and_removed")


def target(context: dg.AssetExecutionContext) -> tuple[str, str | None]:
    """The asset partition a step writes: the asset's name and its partition key (None if unpartitioned)."""
    return context.asset_key.to_user_string(), context.partition_key if context.has_partition_key else None


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


def stage_check_specs(asset: str, extra: tuple[str, ...] = ()) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset) for name in (*STAGE_CHECKS, *extra)]


def run_stage(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    catalog: CatalogResource,
    version: OutputVersion,
    *,
    upstream: str,
    process: Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]],
    keep_rate_bounds: tuple[float, float],
    extra_inputs: dict[str, str] | None = None,
    columns: list[str] | None = None,
    finish: Callable[[], dict[str, Iterable[pl.DataFrame]]] | None = None,
    metadata: dict[str, object] | None = None,
    check_results: Callable[[StageOutput], list[dg.AssetCheckResult]] | None = None,
    stats: dict[str, object] | None = None,
) -> dg.MaterializeResult:
    """A per-crawl-batch stage after ingest: `process(shard) -> (kept, removed)` over the upstream
    partition, committed, recorded in the catalog and reported; `check_results(output)` adds the
    stage's own checks."""
    store = storage.store()
    asset, partition = target(context)
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
        stats=stats,
    )
    checks = check_results(output) if check_results else None
    return stage_result(store, catalog.catalog(), output, keep_rate_bounds, metadata, checks)


def stage_result(
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
    catalog.record_materialization(manifest, output.documents, output.removed)
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
    store: ShardStore,
    version: OutputVersion,
    build: Callable[[Path], tuple[Path, dict[str, Any], dict[str, str]]],
    publish: Callable[[ShardStore, str, Path, Manifest], Manifest],
    retrain_on_new_data: bool = False,
) -> dg.MaterializeResult:
    """A model trained on the corpus (tokenizer, quality classifier): `build(workdir)` returns the
    model's local path, its metadata and the input partitions it read; `publish` stores the file or
    folder. The published model is kept when only new crawl batches arrived (unless
    `retrain_on_new_data`): the same data version, so nothing it feeds goes stale and a new batch is
    processed alone. Changed settings (a new code version) build it again."""
    asset, _ = target(context)
    previous = store.read_manifest(asset, None)
    if not retrain_on_new_data and previous is not None and previous.code_version == version.code_version:
        return dg.MaterializeResult(
            data_version=dg.DataVersion(previous.data_version), metadata={**previous.stats, "reused": True}
        )
    with tempfile.TemporaryDirectory() as workdir:
        path, stats, inputs = build(Path(workdir))
        manifest = version.manifest(asset, None, context.run_id, inputs=inputs, stats=stats)
        manifest = publish(store, asset, path, manifest)
    return materialized(store, manifest, manifest.stats)
