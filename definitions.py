"""The code location: one `Definitions` built from the settings file (see resources/settings.py)."""

from __future__ import annotations

import dagster as dg

from assets.dedup import DEDUPED, build_deduplicated_documents
from assets.evaluate import build_evaluation, build_model_comparison, build_reference_evaluation
from assets.filter import (
    FILTERED,
    QUALITY_CLASSIFIER,
    SCORED,
    build_filtered_documents,
    build_quality_classifier,
    build_scored_documents,
)
from assets.ingest import build_raw_documents
from assets.reports import build_takedown_report, crawl_summary, decontamination_report, report
from assets.rewrite import REWRITER_MODEL, SYNTHETIC, build_rewriter_model, build_synthetic_documents
from assets.takedown import takedown_requests
from assets.tokenize import TOKEN_SHARDS, TOKENIZER, build_token_shards, build_tokenizer
from assets.train import build_checkpoint, build_training_mixture
from jobs.automation import automate, automation_sensor
from jobs.sensors import build_crawl_sensor, build_takedown_sensor
from resources.resources import CatalogResource, ExecutorResource, StorageResource
from resources.settings import Settings, load_settings

SYNTHETIC_TOKEN_SHARDS = "synthetic_token_shards"


def build_definitions(settings: Settings) -> dg.Definitions:
    token_assets = {"crawl": TOKEN_SHARDS}
    rewriting: list[dg.AssetsDefinition] = []
    outputs = [FILTERED, SCORED, DEDUPED, TOKEN_SHARDS]  # what a takedown must empty
    if settings.rewrite is not None:  # synthetic rewriting needs a model: off until one is configured
        token_assets["synthetic"] = SYNTHETIC_TOKEN_SHARDS
        outputs += [SYNTHETIC, SYNTHETIC_TOKEN_SHARDS]
        rewriting = [
            build_rewriter_model(settings.rewrite.model),
            build_synthetic_documents(settings.rewrite, settings.quality.classifier),
            build_token_shards(settings.token_shards, SYNTHETIC_TOKEN_SHARDS, SYNTHETIC),
        ]
    reference = (
        [
            build_reference_evaluation(
                settings.evaluation,
                settings.token_shards.validation_fraction,
                REWRITER_MODEL if settings.rewrite is not None else None,
            )
        ]
        if settings.evaluation.reference is not None
        else []
    )
    assets = [
        build_raw_documents(settings.ingest, settings.source),
        build_filtered_documents(settings.filter, settings.decontamination),
        build_quality_classifier(settings.quality),
        build_scored_documents(settings.quality),
        build_deduplicated_documents(settings.dedup),
        *rewriting,
        build_tokenizer(settings.tokenizer, settings.retrain_tokenizer_on_new_data),
        build_token_shards(settings.token_shards),
        build_training_mixture(settings.mixture, token_assets),
        build_checkpoint(settings.training, settings.takedown),
        build_evaluation(settings.evaluation, settings.token_shards.validation_fraction),
        *reference,
        build_model_comparison(with_reference=bool(reference)),
        crawl_summary,
        decontamination_report,
        report,
        build_takedown_report(outputs),
    ]
    models = {
        QUALITY_CLASSIFIER: settings.quality.retrain_on_new_data,
        TOKENIZER: settings.retrain_tokenizer_on_new_data,
    }
    return dg.Definitions(
        assets=[*automate(assets, settings.automation, models, outputs), takedown_requests],
        sensors=[
            build_crawl_sensor(settings.source),
            build_takedown_sensor(settings.takedown, settings.dedup.near),
            automation_sensor(settings.automation),
        ],
        executor=dg.in_process_executor if settings.executor == "in_process" else dg.multiprocess_executor,
        resources={
            "storage": StorageResource.from_settings(settings.storage),
            "catalog": CatalogResource.from_settings(settings.catalog),
            "executor": ExecutorResource.of(settings.shard_executor, settings.ray),
        },
    )


defs = build_definitions(load_settings())
