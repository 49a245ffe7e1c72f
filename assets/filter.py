"""Filtering: language, heuristic rules and decontamination, then a trained quality classifier."""

from pathlib import Path

import dagster as dg
import polars as pl

from assets.commit import corpus_model, run_stage, stage_check_specs
from assets.ingest import RAW_DOCUMENTS
from assets.partitions import crawl_batches
from resources.common.model_store import fetch_model, publish_model
from resources.common.schemas import removed_rows
from resources.common.storage import sha256_bytes
from resources.common.versioning import OutputVersion
from resources.filter.decontamination import DecontaminationSettings, Decontaminator
from resources.filter.engine import DocumentFilter
from resources.filter.heuristics import HeuristicFilter
from resources.filter.language_id import LanguageIdentifier, bundled_model_path
from resources.filter.quality_classifier import QualityClassifier, reference_documents, train_classifier
from resources.resources import CatalogResource, StorageResource
from resources.settings import FilterSettings, QualityStageSettings

FILTERED = "filtered_documents"
QUALITY_CLASSIFIER = "quality_classifier"
SCORED = "scored_documents"
FILTER_LOGIC = "1"
QUALITY_LOGIC = "1"


def _file_hashes(paths: list[str]) -> dict[str, str]:
    """Input files shape outputs as much as thresholds do: their content joins the code version."""
    return {path: sha256_bytes(Path(path).read_bytes())[:16] for path in paths if Path(path).is_file()}


def build_filtered_documents(settings: FilterSettings, decontamination: DecontaminationSettings) -> dg.AssetsDefinition:
    language_model = settings.language.model_path or str(bundled_model_path())
    shaping = {
        "filter": settings.model_dump(exclude={"keep_rate_bounds"}),
        "decontamination": decontamination.model_dump(),
        "files": _file_hashes([language_model, *decontamination.eval_sets.values()]),
    }
    version = OutputVersion(FILTER_LOGIC, shaping)
    # Built when the code location loads, so an unknown language code or a missing eval set is
    # an error there, not deep inside a run.
    engine = DocumentFilter(
        LanguageIdentifier(settings.language), HeuristicFilter(settings.heuristics), Decontaminator(decontamination)
    )

    @dg.asset(
        name=FILTERED,
        partitions_def=crawl_batches,
        deps=[RAW_DOCUMENTS],
        code_version=version.code_version,
        group_name="filter",
        kinds={"parquet"},
        check_specs=stage_check_specs(FILTERED),
        description="Documents in the target languages that pass the Gopher, C4 and FineWeb rules "
        "and share no n-gram with a registered evaluation set; the rest, with reasons, in `removed`.",
    )
    def filtered_documents(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        return run_stage(
            context,
            storage,
            catalog,
            version,
            upstream=RAW_DOCUMENTS,
            process=engine.process,
            keep_rate_bounds=settings.keep_rate_bounds,
        )

    return filtered_documents


def build_quality_classifier(settings: QualityStageSettings) -> dg.AssetsDefinition:
    classifier = settings.classifier
    shaping = {
        "classifier": classifier.model_dump(exclude={"keep_threshold", "keep_top_fraction"}),
        "negatives_per_partition": settings.negatives_per_partition,
        "retrain_on_new_data": settings.retrain_on_new_data,
        "files": _file_hashes(
            [*classifier.reference_files, *([classifier.model_path] if classifier.model_path else [])]
        ),
    }
    version = OutputVersion(QUALITY_LOGIC, shaping)

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
        store = storage.store()

        def build(workdir: Path) -> tuple[Path, dict, dict[str, str]]:
            if classifier.mode == "load":
                loaded = QualityClassifier.load(classifier.model_path, positive_label=classifier.positive_label)
                return Path(loaded.path), {"model_version": loaded.model_version, "mode": "load"}, {}
            negatives, inputs = _crawl_sample(store, settings.negatives_per_partition)
            trained = train_classifier(reference_documents(classifier), negatives, classifier, str(workdir))
            metadata = {**trained.metadata(), "mode": "train"}
            metadata.pop("model_path")
            return Path(trained.model_path), metadata, inputs

        return corpus_model(context, store, version, build, publish_model, settings.retrain_on_new_data)

    return quality_classifier


def _crawl_sample(store, per_partition: int) -> tuple[list[str], dict[str, str]]:
    """The negatives: in each filtered partition, the documents with the smallest doc_id (a hash,
    so a uniform sample that does not depend on shard order or run order)."""
    texts, inputs = [], {}
    for manifest in store.iter_manifests(FILTERED):
        inputs[f"{FILTERED}[{manifest.partition}]"] = manifest.data_version
        frames = [f.sort("doc_id").head(per_partition) for f in store.iter_frames(manifest, ["doc_id", "text"])]
        if frames:
            texts += pl.concat(frames).sort("doc_id").head(per_partition).get_column("text").to_list()
    return texts, inputs


def build_scored_documents(settings: QualityStageSettings) -> dg.AssetsDefinition:
    classifier = settings.classifier
    version = OutputVersion(
        QUALITY_LOGIC, {"keep_threshold": classifier.keep_threshold, "keep_top_fraction": classifier.keep_top_fraction}
    )

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
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        path, model_manifest = fetch_model(storage.store(), QUALITY_CLASSIFIER)
        model = QualityClassifier.load(path, positive_label=classifier.positive_label, max_chars=classifier.max_chars)

        def process(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
            scores = model.score(frame.get_column("text").to_list())
            judged = frame.with_columns(quality_score=pl.Series(scores, dtype=pl.Float32))
            keep = pl.Series(classifier.keep_mask(scores))
            dropped = judged.filter(~keep)
            return judged.filter(keep), removed_rows(
                dropped, "quality", "quality_classifier", pl.col("quality_score").round(4)
            )

        return run_stage(
            context,
            storage,
            catalog,
            version,
            upstream=FILTERED,
            process=process,
            keep_rate_bounds=settings.keep_rate_bounds,
            extra_inputs={QUALITY_CLASSIFIER: model_manifest.data_version},
            metadata={"model_version": model.model_version},
        )

    return scored_documents
