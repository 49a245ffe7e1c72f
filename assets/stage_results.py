"""What every per-crawl-batch stage reports to Dagster after `run_partition_stage`: lineage in
the catalog, the funnel per rule as metadata, and the checks every filtering stage must pass."""

import dagster as dg
import polars as pl

from resources.catalog import DOCUMENT_COLUMNS, REMOVED_COLUMNS, LineageCatalog
from resources.partition_stage import REMOVED, StageOutput
from resources.storage import UNPARTITIONED, Manifest, ShardStore
from resources.versioning import config_hash

STAGE_CHECKS = ("keep_rate_in_bounds", "no_row_both_kept_and_removed")


def stage_check_specs(asset: str, extra: tuple[str, ...] = ()) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset) for name in (*STAGE_CHECKS, *extra)]


def stage_result(
    store: ShardStore,
    catalog: LineageCatalog,
    output: StageOutput,
    keep_rate_bounds: tuple[float, float],
    metadata: dict[str, object] | None = None,
    check_results: list[dg.AssetCheckResult] | None = None,
    overlap_exempt: set[str] | frozenset[str] = frozenset(),
) -> dg.MaterializeResult:
    """`overlap_exempt`: removal rules whose rows share a doc_id with a kept row by design (a
    second identical generated output is removed as `duplicate_output`, the first is kept)."""
    manifest = output.manifest
    documents = _concat(store.iter_frames(manifest, DOCUMENT_COLUMNS))
    removed = _concat(store.iter_frames(manifest, REMOVED_COLUMNS, REMOVED))
    catalog.record_materialization(manifest, documents, removed)
    kept_ids = set() if documents is None else set(documents.get_column("doc_id"))
    judged = None if removed is None else removed.filter(~pl.col("rule").is_in(list(overlap_exempt)))
    both = 0 if judged is None else len(kept_ids.intersection(judged.get_column("doc_id")))
    low, high = keep_rate_bounds
    funnel = dg.MetadataValue.table(
        records=[
            dg.TableRecord({"rule": rule, "removed": count}) for rule, count in output.removed_by_rule.most_common()
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn("rule", "string"), dg.TableColumn("removed", "int")]),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(manifest.data_version),
        metadata={
            "path": dg.MetadataValue.path(store.url(manifest.asset, manifest.partition)),
            "documents_in": output.rows_in,
            "documents_out": output.rows_out,
            "keep_rate": round(output.keep_rate, 4),
            "removed_by_rule": funnel,
            "seconds": round(output.seconds, 2),
            "docs_per_second": round(output.rows_in / output.seconds, 1) if output.seconds else 0.0,
            "data_version": manifest.data_version,
            **(metadata or {}),
        },
        check_results=[
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


def reuse_trained(store: ShardStore, asset: str, code_version: str) -> dg.MaterializeResult | None:
    """A model trained on the corpus (tokenizer, quality classifier) is kept when only new crawl
    batches arrived: the same data version, so nothing it feeds goes stale and a new batch is
    processed alone. Changed settings (a new code version) train it again."""
    previous = store.read_manifest(asset, None)
    if previous is None or previous.code_version != code_version:
        return None
    return dg.MaterializeResult(
        data_version=dg.DataVersion(previous.data_version), metadata={**previous.stats, "reused": True}
    )


def model_manifest(asset: str, shaping: dict[str, object], version: str, run_id: str) -> Manifest:
    """The manifest a corpus-wide model (tokenizer, classifier) is published under; its `stats`
    become the materialization's metadata, and again when the model is reused."""
    return Manifest(
        asset=asset,
        partition=UNPARTITIONED,
        files=[],
        config_hash=config_hash(shaping),
        code_version=version,
        run_id=run_id,
    )


def model_result(store: ShardStore, manifest: Manifest) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        data_version=dg.DataVersion(manifest.data_version),
        metadata={**manifest.stats, "path": dg.MetadataValue.path(store.url(manifest.asset, UNPARTITIONED))},
    )


def _concat(frames) -> pl.DataFrame | None:
    frames = list(frames)
    return pl.concat(frames) if frames else None
