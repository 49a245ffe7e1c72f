"""Deduplication: exact and MinHash near duplicates, incremental across crawl batches."""

import dagster as dg
import polars as pl

from assets.filtering import SCORED
from assets.stage_results import stage_check_specs, stage_result
from jobs.partitions import crawl_batches
from resources.dagster_resources import CatalogResource, StorageResource
from resources.dedup import IndexSegment, NearDedup
from resources.partition_stage import removed_rows, run_partition_stage, upstream_manifest
from resources.settings import DedupStageSettings
from resources.storage import ShardStore
from resources.versioning import code_version, config_hash

DEDUPED = "deduplicated_documents"
INDEX = "index"
DEDUP_LOGIC = "1"


class EarlierBatchNotDeduplicated(RuntimeError):
    """Deduplicating a batch needs every batch registered before it deduplicated first."""


def earlier_segments(store: ShardStore, earlier_keys: list[str]) -> tuple[list[IndexSegment], dict[str, str]]:
    """The index segments of every crawl batch registered before this one, in registration order:
    first-seen wins across batches, whatever order their runs happen in."""
    segments, inputs = [], {}
    for key in earlier_keys:
        manifest = store.read_manifest(DEDUPED, key)
        if manifest is None or INDEX not in manifest.tables():
            raise EarlierBatchNotDeduplicated(
                f"crawl batch {key!r}, registered earlier, is not deduplicated yet: it must be first "
                "(this step is retried; or materialize the batches in registration order)"
            )
        segments.append(IndexSegment.from_frame(store.scan(manifest, INDEX)))
        inputs[f"{DEDUPED}[{key}].{INDEX}"] = manifest.data_version
    return segments, inputs


def build_deduplicated_documents(settings: DedupStageSettings) -> dg.AssetsDefinition:
    shaping = settings.near.output_shaping()
    version = code_version(DEDUP_LOGIC, shaping)

    @dg.asset(
        name=DEDUPED,
        partitions_def=crawl_batches,
        deps=[SCORED],
        code_version=version,
        group_name="dedup",
        kinds={"parquet"},
        check_specs=stage_check_specs(DEDUPED, ("dedup_idempotent",)),
        description="Scored documents without exact or near duplicates of anything kept before them "
        "(earlier rows, earlier crawl batches); each removed row names `duplicate_of`.",
    )
    def deduplicated_documents(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store, key = storage.store(), context.partition_key
        order = context.instance.get_dynamic_partitions(crawl_batches.name)
        try:
            segments, inputs = earlier_segments(store, order[: order.index(key)])
        except EarlierBatchNotDeduplicated as exc:
            if settings.wait_retries:  # in a backfill the earlier batch is usually just running
                raise dg.RetryRequested(settings.wait_retries, settings.wait_seconds) from exc
            raise
        source = upstream_manifest(store, SCORED, key)
        with NearDedup(settings.near) as engine:
            result = engine.dedup_partition(store.iter_frames(source, ["doc_id", "text"]), segments)
            split = result.splitter()

            def process(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
                kept, dropped = split(frame)
                detail = pl.col("detail").round(4)
                return kept, removed_rows(dropped, "dedup", pl.col("rule"), detail)

            output = run_partition_stage(
                store,
                asset=DEDUPED,
                upstream=SCORED,
                partition=key,
                process=process,
                code_version=version,
                config_hash=config_hash(shaping),
                run_id=context.run_id,
                extra_inputs=inputs,
                finish=lambda: {INDEX: result.segment.to_frame()},
            )
            # Idempotence: the kept documents, deduplicated again against the same history,
            # lose nothing. Anything else means a decision depends on more than its inputs.
            again = engine.dedup_partition(store.iter_frames(output.manifest, ["doc_id", "text"]), segments)
        idempotent = again.removed.height == 0
        return stage_result(
            store,
            catalog.catalog(),
            output,
            settings.keep_rate_bounds,
            {"earlier_batches": len(segments), **{k: v for k, v in result.stats.items() if k != "seconds"}},
            [
                dg.AssetCheckResult(
                    check_name="dedup_idempotent",
                    passed=idempotent,
                    metadata={"removed_on_rerun": again.removed.height},
                )
            ],
        )

    return deduplicated_documents
