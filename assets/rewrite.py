"""Synthetic rewriting with vLLM."""

import dagster as dg

from assets.commit import stage_check_specs, stage_result, target, writing
from assets.dedup import DEDUPED
from assets.partitions import crawl_batches
from resources.common.versioning import OutputVersion
from resources.resources import CatalogResource, StorageResource
from resources.rewrite.post_filter import DUPLICATE_OUTPUT
from resources.rewrite.resume import rewrite_partition
from resources.rewrite.rewriter import LOGIC_VERSION, Rewriter, RewriteSettings

SYNTHETIC = "synthetic_documents"


def build_synthetic_documents(settings: RewriteSettings) -> dg.AssetsDefinition:
    version = OutputVersion(LOGIC_VERSION, settings.output_shaping())

    @dg.asset(
        name=SYNTHETIC,
        partitions_def=crawl_batches,
        deps=[DEDUPED],
        code_version=version.code_version,
        group_name="rewrite",
        kinds={"vllm"},
        pool="gpu",
        check_specs=stage_check_specs(SYNTHETIC),
        description="Documents rewritten by the configured recipes with vLLM; every row names its "
        "source_doc_id, recipe and version, model, sampling and seed. Resumes shard by shard.",
    )
    def synthetic_documents(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        _, crawl_batch = target(context)
        with writing(context, storage) as store:
            with Rewriter(settings) as rewriter:  # shuts the engine down: a vLLM step would hang at exit
                output = rewrite_partition(
                    store,
                    rewriter,
                    version,
                    asset=SYNTHETIC,
                    upstream=DEDUPED,
                    partition=crawl_batch,
                    run_id=context.run_id,
                    on_shard=lambda i, n, stats: context.log.info(f"shard {i + 1}/{n}: {stats.to_dict()}"),
                )
            # Several recipes write several documents per source: the keep rate may exceed 1.
            return stage_result(
                context,
                store,
                catalog.catalog(),
                output,
                (0.0, float(len(settings.recipes)) + 1.0),
                {"output_tokens": output.stats.output_tokens, "model": rewriter.model_name},
                overlap_exempt={DUPLICATE_OUTPUT},
            )

    return synthetic_documents
