"""The fastText quality classifier: training on WikiText-2 (positives)
against the shipped sample crawl (negatives), scoring, keeping, loading, and refusing broken
model files before fastText can crash or hang on them."""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
from pathlib import Path

import fasttext
import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from resources.filter import quality_classifier
from resources.filter.engine import QualityFilter
from resources.filter.quality_classifier import (
    QualityClassifier,
    QualityDataError,
    QualityModelError,
    QualitySettings,
    TrainedClassifier,
    preprocess,
    reference_documents,
    train_classifier,
)
from resources.filter.text_sources import TextSourceError, read_documents
from tests.conftest import SAMPLE_DIR, SHARED_CORPORA
from tests.warc_factory import ingest

WIKITEXT = SHARED_CORPORA / "wikitext-2" / "valid.txt"


@pytest.fixture(scope="module")
def crawl_texts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The 242 documents of the shipped sample crawl (mostly German and English web pages)."""
    files = sorted(SAMPLE_DIR.glob("*.warc.gz"))
    return ingest(tmp_path_factory.mktemp("crawl"), files).frame["text"].to_list()


@pytest.fixture(scope="module")
def wiki_docs() -> list[str]:
    return read_documents(str(WIKITEXT))


@pytest.fixture(scope="module")
def settings() -> QualitySettings:
    return QualitySettings(reference_files=[str(WIKITEXT)], keep_threshold=0.5)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, wiki_docs: list[str], crawl_texts: list[str], settings: QualitySettings
) -> TrainedClassifier:
    return train_classifier(wiki_docs, crawl_texts, settings, tmp_path_factory.mktemp("models"))


def test_an_empty_reference_file_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n \n\t\n")
    settings = QualitySettings(reference_files=[str(WIKITEXT), str(empty)], keep_threshold=0.5)
    with pytest.raises(TextSourceError, match=r"empty\.txt"):
        reference_documents(settings)


def test_preprocessing_normalizes_and_never_emits_a_label() -> None:
    text = "Hello,\n\tWORLD!  It's __LABEL__hq text"
    assert preprocess(text, max_chars=1000) == "hello , world ! it ' s label hq text"
    assert preprocess("abcdef ghi", max_chars=5) == "abcde"


# -- settings and keep_mask -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reference_files": ["r.txt"]}, "exactly one of keep_threshold and keep_top_fraction"),
        ({"reference_files": ["r.txt"], "keep_threshold": 0.5, "keep_top_fraction": 0.5}, "exactly one"),
        ({"mode": "load", "keep_threshold": 0.5}, "mode 'load' needs model_path"),
        ({"keep_threshold": 0.5}, "mode 'train' needs reference_files"),
        ({"reference_files": ["r.txt"], "keep_top_fraction": 0.0}, "greater than 0"),
        ({"reference_files": ["r.txt"], "keep_threshold": 0.5, "positive_label": "hq"}, "labels look like"),
        ({"reference_files": ["r.txt"], "keep_threshold": 0.5, "negative_label": "__label__hq"}, "must differ"),
        ({"reference_files": ["r.txt"], "keep_threshold": 0.5, "thresh": 1}, "Extra inputs are not permitted"),
    ],
)
def test_settings_are_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QualitySettings.model_validate(fields)


def test_keep_mask_by_threshold() -> None:
    settings = QualitySettings(reference_files=["r.txt"], keep_threshold=0.5)
    assert settings.keep_mask(np.array([0.2, 0.5, 0.9, 0.49999])).tolist() == [False, True, True, False]


def test_keep_mask_by_top_fraction_within_the_given_scores() -> None:
    settings = QualitySettings(reference_files=["r.txt"], keep_top_fraction=0.4)
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3], dtype=np.float32)
    assert settings.keep_mask(scores).tolist() == [False, True, False, True, False]
    half = settings.model_copy(update={"keep_top_fraction": 0.5})  # 2.5 rounds up; ties by position
    assert half.keep_mask(np.array([0.7, 0.7, 0.7, 0.7, 0.1])).tolist() == [True, True, True, False, False]
    everything = settings.model_copy(update={"keep_top_fraction": 1.0})
    assert everything.keep_mask(scores).all()
    assert settings.keep_mask(np.array([], dtype=np.float32)).tolist() == []


# -- training and scoring -------------------------------------------------------------------------


def test_trains_a_classifier_that_separates_reference_from_crawl(trained: TrainedClassifier) -> None:
    metrics = trained.metrics
    assert metrics is not None
    assert metrics.precision > 0.8 and metrics.recall > 0.8 and metrics.f1 > 0.8 and metrics.accuracy > 0.8
    assert trained.train_positives == trained.train_negatives > 200  # balanced to the 242 crawl docs
    assert trained.validation_positives == trained.validation_negatives == metrics.examples // 2 > 0
    assert trained.model_path.name == f"quality-{trained.model_version}.bin"
    assert trained.model_version == hashlib.sha256(trained.model_path.read_bytes()).hexdigest()[:16]
    assert trained.classifier.model_version == trained.model_version
    assert not [p for p in trained.model_path.parent.iterdir() if p != trained.model_path]  # no scratch left
    assert {"model_version", "precision", "recall", "train_seconds"} <= trained.metadata().keys()


def test_training_is_reproducible(
    trained: TrainedClassifier, wiki_docs: list[str], crawl_texts: list[str], settings: QualitySettings, tmp_path: Path
) -> None:
    """One thread and a fixed seed give the same model bytes, even for a second training in the
    same process (fastText-numpy2-wheel leaves part of its matrix uninitialised in-process)."""
    again = train_classifier(iter(wiki_docs), iter(crawl_texts), settings, tmp_path)
    assert again.model_version == trained.model_version
    assert again.model_path.read_bytes() == trained.model_path.read_bytes()


def test_scores_are_probabilities_deterministic_and_batch_independent(
    trained: TrainedClassifier, wiki_docs: list[str], crawl_texts: list[str]
) -> None:
    texts = wiki_docs[-20:] + crawl_texts[-20:]
    scores = trained.classifier.score(texts)
    assert scores.dtype == np.float32 and scores.shape == (40,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert np.array_equal(scores, trained.classifier.score(texts))
    assert np.array_equal(scores, np.concatenate([trained.classifier.score([t]) for t in texts]))
    assert scores[:20].mean() > 0.7 > 0.3 > scores[20:].mean()
    text = wiki_docs[3]
    assert trained.classifier.score([text.replace("\n", "\r\n   ").upper()])[0] == trained.classifier.score([text])[0]
    assert trained.classifier.score([]).shape == (0,)
    assert 0 <= trained.classifier.score([""])[0] <= 1


def test_the_scoring_stage_keeps_the_best_and_names_the_rest(
    trained: TrainedClassifier, wiki_docs: list[str], crawl_texts: list[str]
) -> None:
    texts = wiki_docs[:5] + crawl_texts[:5]
    frame = pl.DataFrame({"doc_id": [str(i) for i in range(10)], "url": "u", "crawl_batch": "b", "text": texts})
    settings = QualitySettings(reference_files=[str(WIKITEXT)], keep_top_fraction=0.5)
    kept, removed = QualityFilter(trained.classifier, settings).process(frame)
    scores = trained.classifier.score(texts)
    assert kept.get_column("doc_id").to_list() == [str(i) for i in np.flatnonzero(settings.keep_mask(scores))]
    assert removed.height == 5 and set(removed.get_column("stage")) == {"quality"}
    assert set(removed.get_column("rule")) == {"quality_low_score"}
    assert [float(d) for d in removed.get_column("detail")] == [
        round(float(scores[int(i)]), 4) for i in removed.get_column("doc_id")
    ]


def test_samples_at_most_max_examples_per_class(
    wiki_docs: list[str], crawl_texts: list[str], settings: QualitySettings, tmp_path: Path
) -> None:
    small = settings.model_copy(update={"max_examples_per_class": 40, "validation_fraction": 0.25})
    result = train_classifier(wiki_docs, crawl_texts, small, tmp_path)
    assert (result.train_positives, result.validation_positives) == (30, 10)
    assert (result.train_negatives, result.validation_negatives) == (30, 10)


def test_empty_reference_set_or_crawl_sample_is_refused(
    crawl_texts: list[str], settings: QualitySettings, tmp_path: Path
) -> None:
    with pytest.raises(QualityDataError, match="no positive examples: the reference set is empty"):
        train_classifier([], crawl_texts, settings, tmp_path)
    with pytest.raises(QualityDataError, match="no positive examples"):
        train_classifier(["", "  \n"], crawl_texts, settings, tmp_path)
    with pytest.raises(QualityDataError, match="no negative examples"):
        train_classifier(["a reference document"], [], settings, tmp_path)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("raise SystemExit('Empty vocabulary. Try a smaller -minCount value.')", r"\(exit status 1\): Empty vocab"),
        ("import os; os.abort()", r"\(killed by signal 6\)"),
    ],
)
def test_fasttext_training_failure_is_reported(
    crawl_texts: list[str],
    settings: QualitySettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: str,
    message: str,
) -> None:
    """fastText runs in a child process, so its errors and crashes both arrive as a clear error."""
    monkeypatch.setattr(quality_classifier, "_TRAIN_SCRIPT", script)
    with pytest.raises(QualityModelError, match=rf"fastText training failed {message}"):
        train_classifier(["a reference document"], crawl_texts, settings, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no scratch files left


# -- loading --------------------------------------------------------------------------------------


def test_load_mode_gives_the_trained_model(trained: TrainedClassifier, wiki_docs: list[str]) -> None:
    settings = QualitySettings(mode="load", model_path=str(trained.model_path), keep_top_fraction=0.3)
    assert settings.model_path is not None
    loaded = QualityClassifier.load(settings.model_path, positive_label=settings.positive_label)
    assert loaded.model_version == trained.model_version
    assert set(loaded.labels) == {"__label__hq", "__label__cc"}
    assert np.array_equal(loaded.score(wiki_docs[:10]), trained.classifier.score(wiki_docs[:10]))


def test_quantized_model_loads(trained: TrainedClassifier, tmp_path: Path, wiki_docs: list[str]) -> None:
    """A pruned, quantized .ftz (qnorm on) passes the structural check and still scores sensibly."""
    model = fasttext.load_model(str(trained.model_path))
    model.quantize(cutoff=2000, qnorm=True, retrain=False)
    path = tmp_path / "quality.ftz"
    model.save_model(str(path))
    loaded = QualityClassifier.load(path)
    assert path.stat().st_size < trained.model_path.stat().st_size / 10
    assert loaded.score(wiki_docs[:20]).mean() > 0.5


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(QualityModelError, match=r"cannot load quality model .*absent\.bin: .*No such file"):
        QualityClassifier.load(tmp_path / "absent.bin")


def test_garbage_model_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(QualityModelError, match=r"cannot load quality model .*garbage\.bin: not a fastText model"):
        QualityClassifier.load(path)


@pytest.mark.timeout(60)  # fastText itself loops forever on some of these
@pytest.mark.parametrize("keep", [0, 4, 8, 60, 100, 300, 2000, 0.5, -1])
def test_truncated_model_file(trained: TrainedClassifier, tmp_path: Path, keep: float) -> None:
    """Cut in the header, the arguments, the dictionary, the input matrix, the output matrix:
    where fastText would die of SIGFPE, spin, or load zeros, we raise."""
    data = trained.model_path.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path = tmp_path / "truncated.bin"
    path.write_bytes(data[:size])
    with pytest.raises(QualityModelError, match=r"cannot load quality model .*truncated\.bin: "):
        QualityClassifier.load(path)


def test_trailing_bytes_and_flipped_header_fields_are_refused(trained: TrainedClassifier, tmp_path: Path) -> None:
    data = trained.model_path.read_bytes()
    path = tmp_path / "bad.bin"
    path.write_bytes(data + b"\0" * 16)
    with pytest.raises(QualityModelError, match="16 unexpected bytes after the model"):
        QualityClassifier.load(path)
    model_field, dim_field = 8 + 7 * 4, 8  # after magic and version: dim, ws, epoch, ... model (8th int)
    path.write_bytes(data[:model_field] + struct.pack("<i", 2) + data[model_field + 4 :])
    with pytest.raises(QualityModelError, match="not a supervised"):
        QualityClassifier.load(path)
    path.write_bytes(data[:dim_field] + struct.pack("<i", 0) + data[dim_field + 4 :])
    with pytest.raises(QualityModelError, match=r"corrupt fastText header \(dim 0"):
        QualityClassifier.load(path)


def test_model_without_the_positive_label_is_refused(trained: TrainedClassifier, tmp_path: Path) -> None:
    path = tmp_path / "copy.bin"
    shutil.copyfile(trained.model_path, path)
    with pytest.raises(QualityModelError, match=r"without '__label__good'"):
        QualityClassifier.load(path, positive_label="__label__good")
