"""Deduplication: exact and MinHash near duplicates, incremental across crawl batches."""

import dagster as dg
import polars as pl

from assets.commit import run_stage, stage_check_specs, target
from assets.filter import SCORED
from assets.partitions import crawl_batches
from resources.common.partition_stage import StageOutput, upstream_manifest
from resources.common.versioning import OutputVersion
from resources.dedup.engine import NearDedup
from resources.dedup.index import CHAIN, INDEX, DedupIndex, EarlierBatchNotDeduplicated
from resources.dedup.settings import DedupStageSettings
from resources.resources import CatalogResource, ExecutorResource, StorageResource

DEDUPED = "deduplicated_documents"
DEDUP_LOGIC = "3"  # 2: removal keys dedup_exact, dedup_near; 3: the persisted index and its chain
EARLIER_INDEX = "deduplicated_against"  # metadata: the chain value of the batches before it (chain_link)


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
        try:
            earlier = DedupIndex.for_settings(store, DEDUPED, settings.near).earlier(order[: order.index(crawl_batch)])
        except EarlierBatchNotDeduplicated as exc:
            if settings.wait_retries:  # in a backfill the earlier batch is usually just running
                raise dg.RetryRequested(settings.wait_retries, settings.wait_seconds) from exc
            raise
        source = upstream_manifest(store, SCORED, crawl_batch)
        with earlier, NearDedup(settings.near, mapper) as engine:
            result = engine.dedup_partition(store.iter_frames(source, ["doc_id", "text"]), earlier.runs)

            def idempotent(output: StageOutput) -> list[dg.AssetCheckResult]:
                # What was written is what was kept, and the kept documents, deduplicated again
                # against the same history from their signatures, lose nothing. Anything else
                # means a decision depends on more than its inputs.
                written = [f.get_column("doc_id") for f in store.iter_frames(output.manifest, ["doc_id"])]
                kept = [f.get_column("doc_id") for f in result.segment.frames()]
                same = pl.concat(written).equals(pl.concat(kept), check_names=False) if written else not output.rows_out
                again = engine.recheck(result.segment, earlier.runs)
                return [
                    dg.AssetCheckResult(
                        check_name="dedup_idempotent",
                        passed=same and again.removed.height == 0,
                        metadata={"removed_on_recheck": again.removed.height, "written_as_kept": same},
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
                extra_inputs=earlier.inputs(DEDUPED),
                finish=lambda: {INDEX: result.segment.frames()},
                stats={CHAIN: earlier.record()},
                metadata={
                    "earlier_batches": earlier.batches,
                    "deduplicated_after": earlier.previous or "",
                    EARLIER_INDEX: earlier.against,
                    **{k: v for k, v in result.stats.items() if k != "seconds"},
                    "dedup_seconds": result.stats["seconds"],  # sketching and matching; `seconds` is the split
                },
                check_results=idempotent,
            )

    return deduplicated_documents
