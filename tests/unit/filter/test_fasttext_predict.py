"""The compiled fastText prediction gives fastText's own labels and float32 probabilities, bit for
bit: on lid.176 and on small models trained here to reach the paths lid.176 does not (word
n-grams, an unpruned dense matrix, no subwords, pruned buckets); and tokens fastText treats
specially (labels, a literal "</s>", NUL and other separators, broken-looking UTF-8 text)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fasttext
import numpy as np
import pytest

from resources.filter.fasttext_file import compiled_prediction_supported, read_fasttext_file
from resources.filter.fasttext_predict import FastTextPredictor
from resources.filter.language_id import LanguageIdentifier, LanguageSettings, bundled_model_path
from tests.unit.filter.conftest import sample_pages
from tests.unit.filter.test_language_id import SAMPLE, SENTENCES

TRICKY = [
    "__label__de Das ist ein Satz __label__xx mit Etiketten",
    "only </s> the start counts: der die das und ist nicht",
    "tabs\tand\rcarriage\x0breturns\x0cand\x00nul separate tokens",
    "non-breaking\u00a0space and em\u2003space are inside tokens",
    "emoji 😀🎉 and CJK 今日はとても良い天気 mixed with English words",
    "a" * 5000 + " one very long token",
    "__label__en",
    "</s>",
    "x",
]

_TRAIN = """
import json, sys
import fasttext
job = json.loads(sys.argv[1])
model = fasttext.train_supervised(**job["args"])
model.save_model(job["output"])
if job.get("quantized"):
    model.quantize(input=job["args"]["input"], qnorm=True, retrain=False, cutoff=300)
    model.save_model(job["quantized"])
"""


def _train(tmp_path: Path, name: str, quantize: bool = False, **args: object) -> list[Path]:
    """A small language classifier trained in its own interpreter (see quality_classifier's
    _TRAIN_SCRIPT for why)."""
    lines = [f"__label__{lang} {text}" for lang, text in SENTENCES.items()]
    words = {lang: text.split() for lang, text in SENTENCES.items()}
    lines += [f"__label__{lang} {' '.join(w[i:] + w[:i])}" for lang, w in words.items() for i in range(len(w))]
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = {
        "args": {"input": str(train), "epoch": 5, "dim": 8, "thread": 1, "seed": 1, "minCount": 1, **args},
        "output": str(tmp_path / f"{name}.bin"),
    }
    if quantize:
        job["quantized"] = str(tmp_path / f"{name}.ftz")
    env = {"MALLOC_PERTURB_": "255"}
    subprocess.run([sys.executable, "-c", _TRAIN, json.dumps(job)], check=True, env=env, capture_output=True)
    return [Path(job["output"]), *([Path(job["quantized"])] if quantize else [])]


def _assert_same_as_fasttext(path: Path, texts: list[str]) -> None:
    arrays = read_fasttext_file(path, keep_matrices=True)
    assert compiled_prediction_supported(arrays)
    predictor = FastTextPredictor.build(arrays)
    indices, probabilities = predictor.predict(texts)
    labels, expected = fasttext.load_model(str(path)).predict([t.replace("\n", " ") for t in texts], k=1)
    assert [predictor.labels[i] for i in indices] == [label[0] for label in labels]
    assert probabilities.dtype == np.float32
    assert probabilities.tolist() == [float(p[0]) for p in expected]  # exact, not approximately


def test_lid176_bit_for_bit_on_real_pages_and_odd_tokens() -> None:
    texts = [*sample_pages(SAMPLE.name), *SENTENCES.values(), *TRICKY]
    _assert_same_as_fasttext(bundled_model_path(), texts)


@pytest.mark.parametrize(
    "variant",
    [
        {"loss": "hs", "wordNgrams": 2, "minn": 2, "maxn": 4, "bucket": 5000},
        {"loss": "hs", "wordNgrams": 3, "minn": 0, "maxn": 0, "bucket": 5000},  # no subwords
        {"loss": "hs", "wordNgrams": 1, "minn": 1, "maxn": 3, "bucket": 5000, "quantize": True},
    ],
    ids=["word-bigrams", "no-subwords", "quantized-pruned"],
)
def test_trained_models_bit_for_bit(tmp_path: Path, variant: dict[str, object]) -> None:
    texts = [*SENTENCES.values(), *TRICKY, "wetter park the lunch nous allons 天气"]
    for path in _train(tmp_path, "model", **variant):
        _assert_same_as_fasttext(path, texts)


def test_other_losses_run_in_fasttext(tmp_path: Path) -> None:
    """A softmax model is not reproduced by the kernel: the language identifier hands it to
    fastText, with the same results as fastText's own predict."""
    (path,) = _train(tmp_path, "softmax", loss="softmax")
    assert not compiled_prediction_supported(read_fasttext_file(path))
    with pytest.raises(ValueError, match="hierarchical-softmax"):
        FastTextPredictor.build(read_fasttext_file(path, keep_matrices=True))
    identifier = LanguageIdentifier(LanguageSettings(languages=["en", "de"], model_path=str(path)))
    languages, scores = identifier.predict(list(SENTENCES.values()))
    labels, expected = fasttext.load_model(str(path)).predict(list(SENTENCES.values()), k=1)
    assert languages == [label[0].removeprefix("__label__") for label in labels]
    assert scores == [min(float(p[0]), 1.0) for p in expected]
