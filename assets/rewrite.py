"""Synthetic rewriting with vLLM: the rewriting model, published as an asset, and the documents it
rewrites per crawl batch."""

import tempfile
from pathlib import Path

import dagster as dg

from assets.commit import materialized, stage_check_specs, stage_result, target
from assets.dedup import DEDUPED
from assets.partitions import crawl_batches
from resources.common.model_store import fetch_model, publish_directory
from resources.common.versioning import OutputVersion
from resources.llm.model_source import RewriterModelSettings, prepare_model
from resources.resources import CatalogResource, StorageResource
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
        "tiny`) or a Hugging Face directory (`source: hf_dir`), verified and published; its data version is the "
        "hash of its files.",
    )
    def rewriter_model(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        store = storage.store()
        with tempfile.TemporaryDirectory() as workdir:
            model = prepare_model(settings, Path(workdir))
            context.log.info(f"verified {model.metadata['model_type']} model in {model.path}")
            manifest = version.manifest(REWRITER_MODEL, None, context.run_id, stats=model.metadata)
            manifest = publish_directory(store, REWRITER_MODEL, model.path, manifest)
        return materialized(store, manifest, {**model.metadata, "bytes": manifest.bytes, "files": len(manifest.files)})

    return rewriter_model


def build_synthetic_documents(settings: RewriteSettings) -> dg.AssetsDefinition:
    version = OutputVersion(LOGIC_VERSION, settings.output_shaping())

    @dg.asset(
        name=SYNTHETIC,
        partitions_def=crawl_batches,
        deps=[DEDUPED, REWRITER_MODEL],
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
        store, (_, crawl_batch) = storage.store(), target(context)
        model_dir, model_manifest = fetch_model(store, REWRITER_MODEL)
        with Rewriter(settings, model_dir) as rewriter:  # shuts the engine down: a vLLM step would hang at exit
            output = rewrite_partition(
                store,
                rewriter,
                version,
                asset=SYNTHETIC,
                upstream=DEDUPED,
                partition=crawl_batch,
                run_id=context.run_id,
                extra_inputs={REWRITER_MODEL: model_manifest.data_version},
                on_shard=lambda i, n, stats: context.log.info(f"shard {i + 1}/{n}: {stats.to_dict()}"),
            )
        # Several recipes write several documents per source: the keep rate may exceed 1.
        return stage_result(
            store,
            catalog.catalog(),
            output,
            (0.0, float(len(settings.recipes)) + 1.0),
            {"output_tokens": output.stats.output_tokens, "model": rewriter.model_name},
            overlap_exempt={DUPLICATE_OUTPUT},
        )

    return synthetic_documents
