"""A DCLM-style quality classifier: fastText, reference text against random crawl text.

Positives are documents from a configured reference set (WikiText, a curated jsonl, ...),
negatives are documents sampled from the crawl itself; the score of a document is the
classifier's probability of the positive label.

Determinism: fastText trains with lock-free (Hogwild) SGD, so only `threads=1` gives the same
model bytes, hence the same `model_version`, for the same data and seed. That is the default:
one core trains ~10k web pages (36 MB of text) for 10 epochs in 12-18 s here. More threads can
be faster on idle cores, but then every retraining yields a slightly different model and makes
everything downstream of the scores stale. Scoring is deterministic whatever the thread count.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import fasttext
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from resources.common.storage import sha256_bytes
from resources.filter.fasttext_file import LABEL_PREFIX, check_fasttext_file
from resources.filter.text_sources import read_documents


class QualityDataError(ValueError):
    """Training cannot start: one of the two classes has no examples."""


class QualityModelError(RuntimeError):
    """A quality model cannot be trained, loaded or used."""


class QualitySettings(BaseModel):
    """How the quality classifier is obtained (trained here or loaded) and what it keeps."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["train", "load"] = "train"
    reference_files: list[str] = Field(
        default_factory=list, description="positives: text (blank-line or WikiText-heading separated) or jsonl files"
    )
    model_path: str | None = Field(default=None, description="load mode: an existing fastText .bin or .ftz")
    positive_label: str = Field(default="__label__hq", description="the label whose probability is the score")
    negative_label: str = "__label__cc"
    # fastText training parameters (its own names: wordNgrams, minCount, thread).
    epoch: int = Field(default=10, ge=1)
    lr: float = Field(default=0.5, gt=0)
    word_ngrams: int = Field(default=2, ge=1)
    dim: int = Field(default=32, ge=1)
    min_count: int = Field(default=2, ge=1)
    bucket: int = Field(default=200_000, ge=1, description="hash buckets for word n-grams; model size ~ bucket * dim")
    seed: int = 0
    threads: int = Field(default=1, ge=1, description="1 = bit-identical models for identical data (see module doc)")
    # Data handling.
    max_examples_per_class: int = Field(default=20_000, ge=1)
    balance_classes: bool = Field(default=True, description="downsample the larger class to the smaller one")
    validation_fraction: float = Field(default=0.1, ge=0, le=0.5)
    max_chars: int = Field(
        default=10_000, ge=1, description="text is cut here before training and scoring, for speed; not in the model"
    )
    # What is kept: exactly one of the two.
    keep_threshold: float | None = Field(default=None, ge=0, le=1, description="keep score >= this")
    keep_top_fraction: float | None = Field(default=None, gt=0, le=1, description="keep the best-scored fraction")

    @model_validator(mode="after")
    def _consistent(self) -> QualitySettings:
        if (self.keep_threshold is None) == (self.keep_top_fraction is None):
            raise ValueError("set exactly one of keep_threshold and keep_top_fraction")
        if self.mode == "load" and not self.model_path:
            raise ValueError("mode 'load' needs model_path")
        if self.mode == "train" and not self.reference_files:
            raise ValueError("mode 'train' needs reference_files (the positive examples)")
        for label in (self.positive_label, self.negative_label):
            if not label.startswith(LABEL_PREFIX) or len(label) == len(LABEL_PREFIX) or " " in label:
                raise ValueError(f"labels look like '{LABEL_PREFIX}name', got {label!r}")
        if self.positive_label == self.negative_label:
            raise ValueError("positive_label and negative_label must differ")
        return self

    def keep_mask(self, scores: np.ndarray) -> np.ndarray:
        """Which documents to keep. With `keep_top_fraction` the cut is taken within `scores`
        only (round(fraction * len) documents, ties broken by position), so calling it per
        shard or per crawl batch keeps that fraction of each, not of the whole corpus."""
        scores = np.asarray(scores)
        if self.keep_threshold is not None:
            return scores >= self.keep_threshold
        assert self.keep_top_fraction is not None
        keep = math.floor(self.keep_top_fraction * len(scores) + 0.5)
        mask = np.zeros(len(scores), dtype=bool)
        mask[np.argsort(-scores, kind="stable")[:keep]] = True
        return mask


_TOKEN = re.compile(r"\w+|[^\w\s]")


def preprocess(text: str, max_chars: int) -> str:
    """What fastText sees: the first `max_chars` characters, lowercased, punctuation split off
    words ("word," and WikiText's "word ," give the same tokens), whitespace and newlines
    collapsed to single spaces (fastText reads one example per line), and no word starting
    with `__label__`, which fastText would take for a label (a page about fastText has some)."""
    return " ".join(_TOKEN.findall(text[:max_chars].lower().replace(LABEL_PREFIX, "label ")))


@dataclass(frozen=True)
class ValidationMetrics:
    """Held-out quality of the classifier, predicting positive when the score is >= 0.5."""

    precision: float
    recall: float
    f1: float
    accuracy: float
    examples: int

    @classmethod
    def of(cls, positive_scores: np.ndarray, negative_scores: np.ndarray) -> ValidationMetrics:
        true_pos = int(np.count_nonzero(positive_scores >= 0.5))
        false_pos = int(np.count_nonzero(negative_scores >= 0.5))
        precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
        recall = true_pos / len(positive_scores) if len(positive_scores) else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        examples = len(positive_scores) + len(negative_scores)
        return cls(precision, recall, f1, (true_pos + len(negative_scores) - false_pos) / examples, examples)


@dataclass(frozen=True)
class QualityClassifier:
    """A loaded fastText model that scores documents: P(positive label), in [0, 1]."""

    _model: fasttext.FastText._FastText
    path: Path
    model_version: str
    positive_label: str
    max_chars: int

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, positive_label: str = "__label__hq", max_chars: int = 10_000
    ) -> QualityClassifier:
        """Check the file's structure before fastText sees it (see `check_fasttext_file`), then
        load it. `max_chars` must match the one used in training: it is not stored in the model."""
        path = Path(path)
        try:
            labels = check_fasttext_file(path)
            model = fasttext.load_model(str(path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise QualityModelError(f"cannot load quality model {path}: {exc}") from exc
        if positive_label not in labels:
            raise QualityModelError(
                f"cannot load quality model {path}: its labels are {labels}, without {positive_label!r}"
            )
        return cls(model, path, file_version(path), positive_label, max_chars)

    @property
    def labels(self) -> list[str]:
        return list(self._model.get_labels())

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive label) per text, float32, in input order; deterministic."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        labels, probabilities = self._model.predict([preprocess(t, self.max_chars) for t in texts], k=-1)
        scores = np.zeros(len(texts), dtype=np.float32)
        for row, (row_labels, row_probabilities) in enumerate(zip(labels, probabilities, strict=True)):
            if self.positive_label in row_labels:
                scores[row] = row_probabilities[row_labels.index(self.positive_label)]
        # fastText adds 1e-5 inside its log, so a confident prediction can read 1.00001.
        return np.clip(scores, 0.0, 1.0)


@dataclass(frozen=True)
class TrainedClassifier:
    """A freshly trained classifier, where its file is, and how well it did on held-out data."""

    classifier: QualityClassifier
    model_path: Path
    model_version: str
    metrics: ValidationMetrics | None  # None when validation_fraction is 0
    train_positives: int
    train_negatives: int
    validation_positives: int
    validation_negatives: int
    seconds: float

    def metadata(self) -> dict[str, str | int | float]:
        """Flat values for a Dagster MaterializeResult."""
        metrics = asdict(self.metrics) if self.metrics is not None else {}
        metrics.pop("examples", None)
        return {
            "model_version": self.model_version,
            "train_positives": self.train_positives,
            "train_negatives": self.train_negatives,
            "validation_positives": self.validation_positives,
            "validation_negatives": self.validation_negatives,
            "train_seconds": round(self.seconds, 3),
            **metrics,
        }


def reference_documents(settings: QualitySettings) -> list[str]:
    """All documents of the configured reference files (the positives)."""
    return [doc for path in settings.reference_files for doc in read_documents(path, what="reference file")]


def train_classifier(
    positives: Iterable[str], negatives: Iterable[str], settings: QualitySettings, workdir: str | os.PathLike[str]
) -> TrainedClassifier:
    """Train on (at most `max_examples_per_class` of) each class and write the model to
    `workdir/quality-<model_version>.bin` (content-addressed, so retraining never overwrites
    a model something else was built with).

    Both iterables are consumed once, through a seeded reservoir sample, so memory is bounded
    by `max_examples_per_class` documents of `max_chars` characters whatever their length;
    `negatives` should already be a random sample of the crawl (DCLM uses random crawl pages).
    `workdir` is a local directory; fastText itself runs in a child process (see below).
    """
    started = time.perf_counter()
    rng = random.Random(settings.seed)
    positive = _reservoir(positives, settings.max_examples_per_class, settings.max_chars, rng)
    negative = _reservoir(negatives, settings.max_examples_per_class, settings.max_chars, rng)
    if not positive:
        raise QualityDataError("no positive examples: the reference set is empty")
    if not negative:
        raise QualityDataError("no negative examples: no crawl documents were given")
    if settings.balance_classes:
        positive = positive[: len(negative)]
        negative = negative[: len(positive)]
    train_pos, val_pos = _split(positive, settings.validation_fraction)
    train_neg, val_neg = _split(negative, settings.validation_fraction)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"{settings.positive_label} {preprocess(t, settings.max_chars)}\n" for t in train_pos]
    lines += [f"{settings.negative_label} {preprocess(t, settings.max_chars)}\n" for t in train_neg]
    rng.shuffle(lines)  # SGD over one class then the other would end biased to the last one
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".train-") as scratch:
        train_file = Path(scratch) / "train.txt"
        train_file.write_text("".join(lines), encoding="utf-8")
        scratch_model = Path(scratch) / "model.bin"
        _train_fasttext(train_file, scratch_model, settings)
        version = file_version(scratch_model)
        model_path = workdir / f"quality-{version}.bin"
        os.replace(scratch_model, model_path)  # same filesystem: atomic

    classifier = QualityClassifier.load(
        model_path, positive_label=settings.positive_label, max_chars=settings.max_chars
    )
    metrics = ValidationMetrics.of(classifier.score(val_pos), classifier.score(val_neg)) if val_pos else None
    return TrainedClassifier(
        classifier=classifier,
        model_path=model_path,
        model_version=version,
        metrics=metrics,
        train_positives=len(train_pos),
        train_negatives=len(train_neg),
        validation_positives=len(val_pos),
        validation_negatives=len(val_neg),
        seconds=time.perf_counter() - started,
    )


# fastText-numpy2-wheel allocates the input matrix with aligned_alloc and initialises only part
# of it: the rest is whatever malloc returns. In a fresh process that is zeroed pages, later in the
# same process it is recycled heap (we saw different models, then "Encountered NaN", on the 2nd
# and 3rd training of one process). So every training runs in a new interpreter with glibc's
# MALLOC_PERTURB_=255, which zero-fills allocations: the same data and seed give the same bytes,
# and a crash inside fastText becomes an error here instead of killing the caller.
_TRAIN_SCRIPT = """
import json, sys
import fasttext
job = json.loads(sys.argv[1])
fasttext.train_supervised(**job["args"]).save_model(job["output"])
"""


def _train_fasttext(train_file: Path, output: Path, settings: QualitySettings) -> None:
    args = {
        "input": str(train_file),
        "epoch": settings.epoch,
        "lr": settings.lr,
        "wordNgrams": settings.word_ngrams,
        "dim": settings.dim,
        "minCount": settings.min_count,
        "bucket": settings.bucket,
        "seed": settings.seed,
        "thread": settings.threads,
        "loss": "softmax",
        "verbose": 0,
    }
    done = subprocess.run(
        [sys.executable, "-c", _TRAIN_SCRIPT, json.dumps({"args": args, "output": str(output)})],
        env={**os.environ, "MALLOC_PERTURB_": "255"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        last_line = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise QualityModelError(f"fastText training failed ({how}): {last_line}")


def _reservoir(texts: Iterable[str], size: int, max_chars: int, rng: random.Random) -> list[str]:
    """A uniform sample of `size` non-blank texts (algorithm R), in random order."""
    sample: list[str] = []
    seen = 0
    for text in texts:
        if not text or text.isspace():
            continue
        if seen < size:
            sample.append(text[:max_chars])
        else:
            slot = rng.randrange(seen + 1)
            if slot < size:
                sample[slot] = text[:max_chars]
        seen += 1
    rng.shuffle(sample)
    return sample


def _split(examples: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, validation); training keeps at least one example."""
    held_out = min(round(len(examples) * fraction), len(examples) - 1)
    return examples[held_out:], examples[:held_out]


def file_version(path: Path) -> str:
    """The model's version: the first 16 hex digits of the sha256 of its bytes."""
    return sha256_bytes(path.read_bytes())[:16]
