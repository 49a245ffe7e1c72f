"""The filtering stages and their settings: per shard, language ID, the heuristic rules, then
decontamination (the first failure is the reason recorded); the quality classifier, trained on
reference text against a sample of the filtered crawl, or loaded; per shard, its scores and the
documents it keeps.

The settings refuse configuration errors when the code location loads (an unknown language code,
a missing local eval set) and `output_shaping` hashes the files an output depends on, but no
model is loaded and no eval set read until an asset builds its engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import polars as pl
from pydantic import Field

from resources.common.config import Section
from resources.common.model_store import fetch_model
from resources.common.partition_stage import Process
from resources.common.sampling import sample_texts
from resources.common.schemas import removed_rows
from resources.common.storage import ShardStore
from resources.common.versioning import file_digest
from resources.filter.decontamination import OVERLAP, DecontaminationSettings, Decontaminator
from resources.filter.heuristics import HeuristicFilter, HeuristicSettings
from resources.filter.language_id import LanguageIdentifier, LanguageSettings, bundled_model_path
from resources.filter.quality_classifier import (
    QualityClassifier,
    QualitySettings,
    reference_documents,
    train_classifier,
)

if TYPE_CHECKING:
    from resources.lineage.takedown import TakedownFilter

STAGE = "filter"
QUALITY_STAGE = "quality"
LOW_QUALITY = "quality_low_score"


def _file_digests(paths: list[str | None]) -> dict[str, str]:
    """Input files shape outputs as much as thresholds do: their content joins the code version, by
    file name and not by path, so that moving the checkout (or the virtualenv) restales nothing."""
    return {Path(path).name: digest for path in paths if path and (digest := file_digest(path)) is not None}


class FilterSettings(Section):
    language: LanguageSettings = Field(default_factory=LanguageSettings)
    heuristics: HeuristicSettings = Field(default_factory=HeuristicSettings)
    keep_rate_bounds: tuple[float, float] = (0.05, 1.0)

    def output_shaping(self, decontamination: DecontaminationSettings) -> dict[str, object]:
        """Every setting but the keep-rate check's bounds, and the language model and eval sets
        by content."""
        model = self.language.model_path or str(bundled_model_path())
        return {
            "filter": self.model_dump(exclude={"keep_rate_bounds": True, "language": {"model_path"}}),
            "decontamination": {**decontamination.model_dump(), "eval_sets": sorted(decontamination.eval_sets)},
            "files": _file_digests([model, *decontamination.eval_set_files()]),
        }


class QualityStageSettings(Section):
    classifier: QualitySettings = Field(
        default_factory=lambda: QualitySettings(
            reference_files=["data/reference/wikitext2_reference.txt"], keep_top_fraction=0.8
        )
    )
    sample_partitions: int = Field(
        default=32, ge=1, description="crawl batches the negatives are drawn from (picked by key hash)"
    )
    retrain_on_new_data: bool = Field(
        default=False, description="off: trained once; new crawl batches are scored by the same model"
    )
    keep_rate_bounds: tuple[float, float] = (0.05, 1.0)

    def output_shaping(self) -> dict[str, object]:
        """What makes the classifier: its training settings and data (reference files, or the
        model loaded, by content), not what is kept."""
        classifier = self.classifier
        return {
            "classifier": classifier.model_dump(
                exclude={"keep_threshold", "keep_top_fraction", "reference_files", "model_path"}
            ),
            **self.model_dump(include={"sample_partitions", "retrain_on_new_data"}),
            "files": _file_digests([*classifier.reference_files, classifier.model_path]),
        }

    def keep_shaping(self) -> dict[str, object]:
        """What decides which scored documents are kept (the scores come with the model)."""
        return self.classifier.model_dump(include={"keep_threshold", "keep_top_fraction"})


@dataclass
class DocumentFilter:
    language: LanguageIdentifier
    heuristics: HeuristicFilter
    decontaminator: Decontaminator

    @classmethod
    def build(cls, settings: FilterSettings, decontamination: DecontaminationSettings) -> Self:
        """Loads lid.176 and reads every eval set: call it when the stage runs."""
        return cls(
            LanguageIdentifier(settings.language), HeuristicFilter(settings.heuristics), Decontaminator(decontamination)
        )

    def process(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        texts = frame.get_column("text").to_list()
        languages, scores = self.language.predict(texts)
        rules: list[str | None] = []
        details: list[str | None] = []
        out_texts: list[str] = []
        for text, language, score in zip(texts, languages, scores, strict=True):
            rule, detail = self.language.rejection(language, score), None
            if rule is not None:
                detail = f"{language}:{score:.3f}"
            else:
                text, failure = self.heuristics.apply(text)
                if failure is not None:
                    rule, detail = failure.key, failure.detail
                elif (hit := self.decontaminator.check(text)) is not None:
                    rule, detail = OVERLAP, f"{hit.eval_set}:{hit.matches}"
            rules.append(rule)
            details.append(detail)
            out_texts.append(text)
        judged = frame.with_columns(
            text=pl.Series(out_texts, dtype=pl.String),
            language=pl.Series(languages, dtype=pl.String),
            language_score=pl.Series(scores, dtype=pl.Float32),
            _rule=pl.Series(rules, dtype=pl.String),
            _detail=pl.Series(details, dtype=pl.String),
        )
        kept = judged.filter(pl.col("_rule").is_null()).drop("_rule", "_detail")
        dropped = judged.filter(pl.col("_rule").is_not_null())
        return kept, removed_rows(dropped, STAGE, pl.col("_rule"), pl.col("_detail"))


def document_filter(
    settings: FilterSettings, decontamination: DecontaminationSettings, takedowns: TakedownFilter | None = None
) -> Process:
    """The filter stage's shard function, after the recorded takedowns when given;
    `functools.partial(document_filter, ...)` is its picklable recipe (a Ray worker builds it once)."""
    process = DocumentFilter.build(settings, decontamination).process
    return takedowns.then(process) if takedowns is not None else process


def quality_filter(store: ShardStore, classifier_asset: str, settings: QualitySettings) -> Process:
    """The scoring stage's shard function, with the classifier fetched from the store (so a
    Ray worker on another machine finds it)."""
    path, _ = fetch_model(store, classifier_asset)
    return QualityFilter.load(path, settings).process


def quality_model(
    settings: QualityStageSettings, store: ShardStore, workdir: Path, *, filtered: str
) -> tuple[Path, dict[str, object], dict[str, str]]:
    """The classifier's file, its metadata and the partitions it was trained on: the configured
    model (load mode), or one trained in `workdir` on the reference files against a sample of
    the `filtered` documents."""
    classifier = settings.classifier
    if classifier.mode == "load":
        loaded = QualityClassifier.load(classifier.model_path, positive_label=classifier.positive_label)
        return Path(loaded.path), {"model_version": loaded.model_version, "mode": "load"}, {}
    positives = reference_documents(classifier)
    # Training uses at most max_examples_per_class negatives, as many as positives when balanced:
    # the classifier's negatives are the crawl documents with the smallest doc_id (a uniform sample).
    needed = classifier.max_examples_per_class
    if classifier.balance_classes:
        needed = max(1, min(needed, len(positives)))
    negatives, inputs = sample_texts(store, filtered, needed, settings.sample_partitions)
    trained = train_classifier(positives, negatives, classifier, str(workdir))
    return trained.model_path, {**trained.metadata(), "mode": "train"}, inputs


@dataclass
class QualityFilter:
    """Scores a shard's documents (`quality_score`) and keeps the best (see `QualitySettings.keep_mask`)."""

    model: QualityClassifier
    settings: QualitySettings

    @classmethod
    def load(cls, path: str | Path, settings: QualitySettings) -> Self:
        return cls(
            QualityClassifier.load(path, positive_label=settings.positive_label, max_chars=settings.max_chars), settings
        )

    def process(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        scores = self.model.score(frame.get_column("text").to_list())
        judged = frame.with_columns(quality_score=pl.Series(scores, dtype=pl.Float32))
        keep = pl.Series(self.settings.keep_mask(scores))
        dropped = judged.filter(~keep)
        return judged.filter(keep), removed_rows(dropped, QUALITY_STAGE, LOW_QUALITY, pl.col("quality_score").round(4))
