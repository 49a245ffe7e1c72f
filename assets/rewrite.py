"""Synthetic rewriting with vLLM."""

import dagster as dg

from assets.commit import stage_check_specs, stage_result, target
from assets.dedup import DEDUPED
from assets.filter import QUALITY_CLASSIFIER
from assets.partitions import crawl_batches
from resources.common.model_store import fetch_model
from resources.common.versioning import OutputVersion
from resources.evaluate.report import markdown_table
from resources.filter.quality_classifier import QualityClassifier, QualitySettings
from resources.resources import CatalogResource, StorageResource
from resources.rewrite.metrics import RewriteMetrics
from resources.rewrite.post_filter import DUPLICATE_OUTPUT
from resources.rewrite.resume import rewrite_partition
from resources.rewrite.rewriter import LOGIC_VERSION, Rewriter, RewriteSettings

SYNTHETIC = "synthetic_documents"


def build_synthetic_documents(settings: RewriteSettings, quality: QualitySettings) -> dg.AssetsDefinition:
    version = OutputVersion(LOGIC_VERSION, settings.output_shaping())

    @dg.asset(
        name=SYNTHETIC,
        partitions_def=crawl_batches,
        deps=[DEDUPED, QUALITY_CLASSIFIER],
        code_version=version.code_version,
        group_name="rewrite",
        kinds={"vllm"},
        pool="gpu",
        check_specs=stage_check_specs(SYNTHETIC),
        description="Documents rewritten by the configured recipes with vLLM; every row names its "
        "source_doc_id, recipe and version, model, sampling and seed, and how it compares with its source "
        "(length ratio, 5-gram overlap, quality score). Resumes shard by shard.",
    )
    def synthetic_documents(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store, (_, crawl_batch) = storage.store(), target(context)
        classifier_path, classifier_manifest = fetch_model(store, QUALITY_CLASSIFIER)
        classifier = QualityClassifier.load(
            classifier_path, positive_label=quality.positive_label, max_chars=quality.max_chars
        )
        with Rewriter(settings, quality=classifier) as rewriter:  # shuts the engine down: a vLLM step would hang
            output = rewrite_partition(
                store,
                rewriter,
                version,
                asset=SYNTHETIC,
                upstream=DEDUPED,
                partition=crawl_batch,
                run_id=context.run_id,
                extra_inputs={QUALITY_CLASSIFIER: classifier_manifest.data_version},
                on_shard=lambda i, n, stats: context.log.info(f"shard {i + 1}/{n}: {stats.to_dict()}"),
            )
        # Several recipes write several documents per source: the keep rate may exceed 1.
        return stage_result(
            store,
            catalog.catalog(),
            output,
            (0.0, float(len(settings.recipes)) + 1.0),
            {
                "output_tokens": output.stats.output_tokens,
                "output_tokens_per_s": round(output.stats.output_tokens_per_s, 1),
                "model": rewriter.model_name,
                **metrics_metadata(output.metrics),
            },
            overlap_exempt={DUPLICATE_OUTPUT},
        )

    return synthetic_documents


def metrics_metadata(metrics: RewriteMetrics) -> dict[str, dg.MetadataValue]:
    """What rewriting did, per recipe, and outputs beside their sources to read."""
    return {
        "rewrite_by_recipe": dg.MetadataValue.md(markdown_table(metrics.summary_rows(), metrics.SUMMARY_COLUMNS)),
        "side_by_side": dg.MetadataValue.md(markdown_table(metrics.example_rows(), metrics.EXAMPLE_COLUMNS)),
    }
