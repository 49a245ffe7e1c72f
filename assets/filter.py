"""Filtering: language, heuristic rules and decontamination, then a trained quality classifier."""

from functools import partial

import dagster as dg

from assets.commit import corpus_model, run_stage, stage_check_specs
from assets.ingest import RAW_DOCUMENTS
from assets.partitions import crawl_batches
from assets.takedown import TAKEDOWN_REQUESTS
from resources.common.model_store import fetch_model, publish_model
from resources.common.versioning import OutputVersion
from resources.filter.decontamination import DecontaminationSettings
from resources.filter.engine import (
    FilterSettings,
    QualityFilter,
    QualityStageSettings,
    document_filter,
    quality_filter,
    quality_model,
)
from resources.lineage.takedown import TakedownFilter
from resources.resources import CatalogResource, ExecutorResource, StorageResource

FILTERED = "filtered_documents"
QUALITY_CLASSIFIER = "quality_classifier"
SCORED = "scored_documents"
FILTER_LOGIC = "2"  # 2: removal keys <filter>_<rule>
QUALITY_LOGIC = "1"
SCORED_LOGIC = "2"  # 2: removal key quality_low_score


def build_filtered_documents(settings: FilterSettings, decontamination: DecontaminationSettings) -> dg.AssetsDefinition:
    version = OutputVersion(FILTER_LOGIC, settings.output_shaping(decontamination))

    @dg.asset(
        name=FILTERED,
        partitions_def=crawl_batches,
        deps=[RAW_DOCUMENTS, TAKEDOWN_REQUESTS],
        code_version=version.code_version,
        group_name="filter",
        kinds={"parquet"},
        check_specs=stage_check_specs(FILTERED),
        description="Documents not taken down, in the target languages, that pass the Gopher, C4 and FineWeb "
        "rules and share no n-gram with a registered evaluation set; the rest, with reasons, in `removed`.",
    )
    def filtered_documents(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        catalog: CatalogResource,
        executor: ExecutorResource,
    ) -> dg.MaterializeResult:
        takedowns = TakedownFilter.load(storage.store())
        return run_stage(
            context,
            storage,
            catalog,
            version,
            upstream=RAW_DOCUMENTS,
            process=partial(document_filter, settings, decontamination, takedowns),
            keep_rate_bounds=settings.keep_rate_bounds,
            extra_inputs={TAKEDOWN_REQUESTS: takedowns.version},
            executor=executor,
        )

    return filtered_documents


def build_quality_classifier(settings: QualityStageSettings) -> dg.AssetsDefinition:
    version = OutputVersion(QUALITY_LOGIC, settings.output_shaping())

    @dg.asset(
        name=QUALITY_CLASSIFIER,
        deps=[FILTERED],
        code_version=version.code_version,
        group_name="filter",
        kinds={"fasttext"},
        description="fastText classifier, reference text vs random crawl documents (DCLM style), "
        "or an existing model file (`quality.classifier.mode: load`).",
    )
    def quality_classifier(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        build = partial(quality_model, settings, filtered=FILTERED)
        return corpus_model(context, storage, version, build, publish_model, settings.retrain_on_new_data)

    return quality_classifier


def build_scored_documents(settings: QualityStageSettings) -> dg.AssetsDefinition:
    version = OutputVersion(SCORED_LOGIC, settings.keep_shaping())

    @dg.asset(
        name=SCORED,
        partitions_def=crawl_batches,
        deps=[FILTERED, QUALITY_CLASSIFIER],
        code_version=version.code_version,
        group_name="filter",
        kinds={"parquet"},
        check_specs=stage_check_specs(SCORED),
        description="Filtered documents with `quality_score`, keeping those above the configured "
        "threshold (or the top fraction of each shard).",
    )
    def scored_documents(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        catalog: CatalogResource,
        executor: ExecutorResource,
    ) -> dg.MaterializeResult:
        executor.mapper()  # first: a Ray cluster that does not answer fails before any work
        store = storage.store()
        path, model_manifest = fetch_model(store, QUALITY_CLASSIFIER)
        scorer = QualityFilter.load(path, settings.classifier)  # a broken model fails here, before any shard
        return run_stage(
            context,
            storage,
            catalog,
            version,
            upstream=FILTERED,
            process=partial(quality_filter, store, QUALITY_CLASSIFIER, settings.classifier),
            keep_rate_bounds=settings.keep_rate_bounds,
            executor=executor,
            extra_inputs={QUALITY_CLASSIFIER: model_manifest.data_version},
            metadata={"model_version": scorer.model.model_version},
        )

    return scored_documents
