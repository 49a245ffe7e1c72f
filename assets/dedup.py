"""Deduplication: exact and MinHash near duplicates, incremental across crawl batches."""

import dagster as dg

from assets.commit import run_stage, stage_check_specs, target
from assets.filter import SCORED
from assets.partitions import crawl_batches
from resources.common.partition_stage import StageOutput, upstream_manifest
from resources.common.versioning import OutputVersion
from resources.dedup.engine import NearDedup
from resources.dedup.index import (
    INDEX,
    EarlierBatchNotDeduplicated,
    earlier_index_version,
    earlier_segments,
    index_input,
)
from resources.dedup.settings import DedupStageSettings
from resources.resources import CatalogResource, ExecutorResource, StorageResource

DEDUPED = "deduplicated_documents"
DEDUP_LOGIC = "2"  # 2: removal keys dedup_exact, dedup_near
EARLIER_INDEX = "earlier_index"  # metadata: what the batch was deduplicated against (earlier_index_version)


def build_deduplicated_documents(settings: DedupStageSettings) -> dg.AssetsDefinition:
    version = OutputVersion(DEDUP_LOGIC, settings.output_shaping())

    @dg.asset(
        name=DEDUPED,
        partitions_def=crawl_batches,
        deps=[SCORED],
        code_version=version.code_version,
        group_name="dedup",
        kinds={"parquet"},
        check_specs=stage_check_specs(DEDUPED, ("dedup_idempotent",)),
        description="Scored documents without exact or near duplicates of anything kept before them "
        "(earlier rows, earlier crawl batches); each removed row names `duplicate_of`.",
    )
    def deduplicated_documents(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        catalog: CatalogResource,
        executor: ExecutorResource,
    ) -> dg.MaterializeResult:
        mapper = executor.mapper()  # first: a Ray cluster that does not answer fails before any work
        store, (_, crawl_batch) = storage.store(), target(context)
        order = context.instance.get_dynamic_partitions(crawl_batches.name)
        earlier = order[: order.index(crawl_batch)]
        try:
            segments, inputs = earlier_segments(store, DEDUPED, earlier)
        except EarlierBatchNotDeduplicated as exc:
            if settings.wait_retries:  # in a backfill the earlier batch is usually just running
                raise dg.RetryRequested(settings.wait_retries, settings.wait_seconds) from exc
            raise
        source = upstream_manifest(store, SCORED, crawl_batch)
        with NearDedup(settings.near, mapper) as engine:
            result = engine.dedup_partition(store.iter_frames(source, ["doc_id", "text"]), segments)

            def idempotent(output: StageOutput) -> list[dg.AssetCheckResult]:
                # The kept documents, deduplicated again against the same history, lose nothing.
                # Anything else means a decision depends on more than its inputs.
                again = engine.dedup_partition(store.iter_frames(output.manifest, ["doc_id", "text"]), segments)
                return [
                    dg.AssetCheckResult(
                        check_name="dedup_idempotent",
                        passed=again.removed.height == 0,
                        metadata={"removed_on_rerun": again.removed.height},
                    )
                ]

            return run_stage(
                context,
                storage,
                catalog,
                version,
                upstream=SCORED,
                process=result.splitter,
                keep_rate_bounds=settings.keep_rate_bounds,
                extra_inputs=inputs,
                finish=lambda: {INDEX: result.segment.to_frame()},
                metadata={
                    "earlier_batches": len(segments),
                    EARLIER_INDEX: earlier_index_version([(k, inputs[index_input(DEDUPED, k)]) for k in earlier]),
                    **{k: v for k, v in result.stats.items() if k != "seconds"},
                },
                check_results=idempotent,
            )

    return deduplicated_documents
