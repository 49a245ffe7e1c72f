"""A DCLM-style quality classifier: fastText, reference text against random crawl text.

Positives are documents from a configured reference set (WikiText, a curated jsonl, ...),
negatives are documents sampled from the crawl itself; the score of a document is the
classifier's probability of the positive label. Also here: reading reference and evaluation
text files (shared with `resources.filter.decontamination`), and a structural check of fastText
model files, because fastText itself crashes (SIGFPE), loops forever or silently builds a
broken model on a truncated file instead of raising.

Determinism: fastText trains with lock-free (Hogwild) SGD, so only `threads=1` gives the same
model bytes, hence the same `model_version`, for the same data and seed. That is the default:
one core trains ~10k web pages (36 MB of text) for 10 epochs in 12-18 s here. More threads can
be faster on idle cores, but then every retraining yields a slightly different model and makes
everything downstream of the scores stale. Scoring is deterministic whatever the thread count.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import mmap
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fasttext
import fsspec
import numpy as np
from fsspec.utils import infer_compression
from pydantic import BaseModel, ConfigDict, Field, model_validator

LABEL_PREFIX = "__label__"


class TextSourceError(ValueError):
    """A reference or evaluation text file is missing, empty or malformed."""


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


# -- reference and evaluation text files ------------------------------------------------------

# WikiText headings: " = Title = ", " = = Section = = ", ...
_WIKITEXT_HEADING = re.compile(r"^ *(=(?: =)*) (.+?) \1 *$")
# WikiText's escapes inside numbers and compounds ("1 @,@ 000", "state @-@ of"), and its OOV marker.
_WIKITEXT_ESCAPE = re.compile(r" @([-,.])@ ")
_WIKITEXT_UNK = re.compile(r"<unk> ?")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


_BOMS = (  # UTF-32 first: its little-endian BOM begins with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def detect_encoding(data: bytes) -> str:
    """A byte-order mark decides; else UTF-16 without one when every other byte is NUL (text
    exported from Windows tools); else UTF-8 when it decodes; else cp1252, else latin-1, which
    decodes any byte, so an odd single-byte encoding costs accents, never a crash."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding
    sample = data[:4096]
    if len(sample) >= 4 and len(sample) % 2 == 0:
        if sample[1::2].count(0) > 0.9 * len(sample) / 2:
            return "utf-16-le"
        if sample[0::2].count(0) > 0.9 * len(sample) / 2:
            return "utf-16-be"
    for encoding in ("utf-8", "cp1252"):
        try:
            data.decode(encoding)
            return encoding
        except UnicodeDecodeError:
            continue
    return "latin-1"


def load_text(path: str, *, what: str = "reference file", encoding: str | None = None) -> tuple[str, str]:
    """A text file's content and the encoding it was read with (`encoding`, or detected).
    Local path or fsspec URL; .gz, .bz2, .xz are read decompressed."""
    try:
        with fsspec.open(path, "rb", compression="infer") as stream:
            data = stream.read()
    except FileNotFoundError as exc:
        raise TextSourceError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise TextSourceError(f"{what} cannot be read: {path}: {exc}") from exc
    encoding = encoding or detect_encoding(data)
    try:
        return data.decode(encoding), encoding
    except (UnicodeDecodeError, LookupError) as exc:
        raise TextSourceError(f"{what} {path} cannot be decoded as {encoding}: {exc}") from exc


def read_documents(path: str, *, what: str = "reference file", encoding: str | None = None) -> list[str]:
    """The documents of a text or jsonl file (see `load_text`).

    - `*.jsonl` / `*.ndjson`: one JSON object per line, its `text` field a document.
    - WikiText (lines like ` = Title = `): one document per section, its heading as the first
      line; `@-@`-style escapes are undone and `<unk>` markers dropped, so the model does not
      learn WikiText's markup as "quality".
    - any other text: documents separated by blank lines.

    Files are read whole: reference and evaluation sets are small. `what` names the file's role
    in error messages (e.g. "eval set 'wikitext'").
    """
    text, _ = load_text(path, what=what, encoding=encoding)
    return split_documents(text, path, what=what)


def split_documents(text: str, path: str, *, what: str = "reference file") -> list[str]:
    name = path.rsplit(".", 1)[0] if infer_compression(path) else path
    documents = _jsonl_documents(text, path, what) if name.endswith(_JSONL_SUFFIXES) else _text_documents(text)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise TextSourceError(f"{what} is empty (no documents): {path}")
    return documents


def _jsonl_documents(text: str, path: str, what: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextSourceError(f"{what} {path} line {number}: not JSON ({exc})") from exc
        value = record.get("text") if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise TextSourceError(f"{what} {path} line {number}: no string field 'text'")
        documents.append(value)
    return documents


def _text_documents(text: str) -> list[str]:
    lines = text.splitlines()
    if any(_WIKITEXT_HEADING.match(line) for line in lines):
        return _wikitext_sections(lines)
    return [block.strip() for block in re.split(r"\n[ \t]*\n", "\n".join(lines))]


def _wikitext_sections(lines: list[str]) -> list[str]:
    """One document per section; a heading directly followed by a subheading has no body
    and yields none."""
    documents: list[str] = []
    heading: list[str] = []  # empty before the first heading
    body: list[str] = []
    for line in lines:
        match = _WIKITEXT_HEADING.match(line)
        if match:
            if body:
                documents.append("\n".join(heading + body))
            heading, body = [_unescape_wikitext(match.group(2))], []
        elif line.strip():
            body.append(_unescape_wikitext(line))
    if body:
        documents.append("\n".join(heading + body))
    return documents


def _unescape_wikitext(line: str) -> str:
    return _WIKITEXT_UNK.sub("", _WIKITEXT_ESCAPE.sub(r"\1", line)).strip()


# -- preprocessing ----------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")


def preprocess(text: str, max_chars: int) -> str:
    """What fastText sees: the first `max_chars` characters, lowercased, punctuation split off
    words ("word," and WikiText's "word ," give the same tokens), whitespace and newlines
    collapsed to single spaces (fastText reads one example per line), and no word starting
    with `__label__`, which fastText would take for a label (a page about fastText has some)."""
    return " ".join(_TOKEN.findall(text[:max_chars].lower().replace(LABEL_PREFIX, "label ")))


# -- the classifier ---------------------------------------------------------------------------


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
        false_neg = len(positive_scores) - true_pos
        true_neg = len(negative_scores) - false_pos
        precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
        recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        examples = len(positive_scores) + len(negative_scores)
        return cls(precision, recall, f1, (true_pos + true_neg) / examples, examples)


class QualityClassifier:
    """A loaded fastText model that scores documents: P(positive label), in [0, 1]."""

    def __init__(
        self, model: fasttext.FastText._FastText, path: Path, model_version: str, positive_label: str, max_chars: int
    ) -> None:
        self._model = model
        self.path = path
        self.model_version = model_version
        self.positive_label = positive_label
        self.max_chars = max_chars

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
        values: dict[str, str | int | float] = {
            "model_version": self.model_version,
            "model_path": str(self.model_path),
            "train_positives": self.train_positives,
            "train_negatives": self.train_negatives,
            "validation_positives": self.validation_positives,
            "validation_negatives": self.validation_negatives,
            "train_seconds": round(self.seconds, 3),
        }
        if self.metrics is not None:
            values.update(
                precision=self.metrics.precision,
                recall=self.metrics.recall,
                f1=self.metrics.f1,
                accuracy=self.metrics.accuracy,
            )
        return values


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
        with train_file.open("w", encoding="utf-8") as stream:
            stream.writelines(lines)
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
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# -- fastText model files ---------------------------------------------------------------------

_MAGIC = 793712314
_SUPERVISED = 3  # fastText's model_name enum: cbow = 1, sg, sup
_HEADER = struct.Struct("<ii")  # magic, version
_ARGS = struct.Struct("<12id")  # dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, t
_DICTIONARY = struct.Struct("<iiiqq")  # size nwords nlabels ntokens pruneidx_size
_ENTRY_TAIL = 9  # after each NUL-terminated word: count (int64), type (int8; 1 = label)
_FLAG = struct.Struct("<?")
_DENSE = struct.Struct("<qq")  # rows, columns; then float32 data
_QUANT = struct.Struct("<?qqi")  # qnorm, rows, columns, codesize; then codes, a product quantizer
_QUANTIZER = struct.Struct("<iiii")  # dim nsubq dsub lastdsub; then dim * 256 float32 centroids


class _Cursor:
    """Reads a memory-mapped model file front to back, refusing to run past its end."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def take(self, layout: struct.Struct) -> tuple[Any, ...]:
        self.skip(layout.size)
        return layout.unpack_from(self.data, self.pos - layout.size)

    def skip(self, size: int) -> None:
        if size < 0 or self.pos + size > len(self.data):
            needed = self.pos + max(size, 1)
            raise ValueError(f"truncated or corrupt fastText file (needs {needed} bytes, has {len(self.data)})")
        self.pos += size

    def word(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ValueError("truncated fastText file (inside the dictionary)")
        word = self.data[self.pos : end]
        self.pos = end + 1
        return word


def check_fasttext_file(path: Path) -> list[str]:
    """Walk a fastText 0.9 model file (.bin, or .ftz quantized) the way fastText loads it and
    return its labels; raise ValueError unless every section is present and consistent and the
    file ends exactly where the last matrix does."""
    size = path.stat().st_size
    if size < _HEADER.size:
        raise ValueError(f"not a fastText model ({size} bytes)")
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data)
        magic, version = cursor.take(_HEADER)
        if magic != _MAGIC:
            raise ValueError("not a fastText model (wrong magic number)")
        if version not in (11, 12):
            raise ValueError(f"unsupported fastText file version {version}")
        dim, *_, model, bucket, _minn, _maxn, _rate, _t = cursor.take(_ARGS)
        if model != _SUPERVISED:
            raise ValueError("not a supervised (classifier) fastText model")
        if dim <= 0 or bucket < 0:
            raise ValueError(f"corrupt fastText header (dim {dim}, bucket {bucket})")
        entries, words, labels, _tokens, pruned = cursor.take(_DICTIONARY)
        if words < 0 or labels <= 0 or entries != words + labels:
            raise ValueError(f"corrupt fastText dictionary header ({entries} entries, {words} words, {labels} labels)")
        names = []
        for index in range(entries):
            name = cursor.word()
            cursor.skip(_ENTRY_TAIL)
            if index >= words:
                names.append(name.decode("utf-8", "replace"))
        cursor.skip(8 * max(pruned, 0))
        (quantized,) = cursor.take(_FLAG)
        _matrix(cursor, quantized, rows=None, columns=dim)
        (quantized_output,) = cursor.take(_FLAG)
        _matrix(cursor, quantized and quantized_output, rows=labels, columns=dim)
        if cursor.pos != size:
            raise ValueError(f"corrupt fastText file ({size - cursor.pos} unexpected bytes after the model)")
    return names


def _matrix(cursor: _Cursor, quantized: bool, rows: int | None, columns: int) -> None:
    if quantized:
        qnorm, m, n, codesize = cursor.take(_QUANT)
        cursor.skip(codesize)
        _quantizer(cursor)
        if qnorm:
            cursor.skip(m)
            _quantizer(cursor)
    else:
        m, n = cursor.take(_DENSE)
        cursor.skip(4 * m * n if m >= 0 and n >= 0 else -1)
    if n != columns or (rows is not None and m != rows):
        raise ValueError(f"corrupt fastText matrix ({m} x {n}, expected {rows or 'any'} x {columns})")


def _quantizer(cursor: _Cursor) -> None:
    dim, *_ = cursor.take(_QUANTIZER)
    cursor.skip(4 * 256 * dim if dim >= 0 else -1)
