"""The code location: one `Definitions` built from the settings file (see resources/settings.py)."""

from __future__ import annotations

import dagster as dg

from assets.dedup import build_deduplicated_documents
from assets.evaluate import build_evaluation, model_comparison
from assets.filter import build_filtered_documents, build_quality_classifier, build_scored_documents
from assets.ingest import build_raw_documents
from assets.reports import crawl_summary, decontamination_report, report
from assets.rewrite import SYNTHETIC, build_rewriter_model, build_synthetic_documents
from assets.tokenize import TOKEN_SHARDS, build_token_shards, build_tokenizer
from assets.train import build_checkpoint, build_training_mixture
from jobs.ingest import ingest_job
from jobs.sensors import build_crawl_sensor
from resources.resources import CatalogResource, ExecutorResource, StorageResource
from resources.settings import Settings, load_settings

SYNTHETIC_TOKEN_SHARDS = "synthetic_token_shards"


def build_definitions(settings: Settings) -> dg.Definitions:
    token_assets = {"crawl": TOKEN_SHARDS}
    rewriting: list[dg.AssetsDefinition] = []
    if settings.rewrite is not None:  # synthetic rewriting: off until the settings have a `rewrite` section
        token_assets["synthetic"] = SYNTHETIC_TOKEN_SHARDS
        rewriting = [
            build_rewriter_model(settings.rewrite.model),
            build_synthetic_documents(settings.rewrite),
            build_token_shards(settings.token_shards, SYNTHETIC_TOKEN_SHARDS, SYNTHETIC),
        ]
    return dg.Definitions(
        assets=[
            build_raw_documents(settings.ingest, settings.source.storage_options),
            build_filtered_documents(settings.filter, settings.decontamination),
            build_quality_classifier(settings.quality),
            build_scored_documents(settings.quality),
            build_deduplicated_documents(settings.dedup),
            *rewriting,
            build_tokenizer(settings.tokenizer, settings.retrain_tokenizer_on_new_data),
            build_token_shards(settings.token_shards),
            build_training_mixture(settings.mixture, token_assets),
            build_checkpoint(settings.training),
            build_evaluation(settings.evaluation, settings.token_shards.validation_fraction),
            model_comparison,
            crawl_summary,
            decontamination_report,
            report,
        ],
        jobs=[ingest_job],
        sensors=[build_crawl_sensor(settings.source, ingest_job)],
        resources={
            "storage": StorageResource(root=settings.storage.root, storage_options=settings.storage.storage_options),
            "catalog": CatalogResource(path=settings.catalog.path),
            "executor": ExecutorResource.of(settings.executor, settings.ray),
        },
    )


defs = build_definitions(load_settings())
