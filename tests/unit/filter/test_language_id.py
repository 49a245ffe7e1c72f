"""lid.176 language ID: predictions, the keep decision with per-language bars, and the
configuration and input errors a pipeline meets (unknown codes, missing model, empty text)."""

from __future__ import annotations

import time
from pathlib import Path

import fasttext
import pytest
from pydantic import ValidationError

from resources.filter.language_id import (
    LID176_LANGUAGES,
    UNDETERMINED,
    LanguageIdentifier,
    LanguageSettings,
    bundled_model_path,
)
from tests.unit.filter.conftest import sample_pages

SAMPLE = Path(__file__).resolve().parents[3] / "data" / "sample" / "CC-SAMPLE-2024-22-00001.warc.gz"

SENTENCES = {
    "en": "The weather is lovely today, so we are walking to the park after lunch.",
    "de": "Das Wetter ist heute herrlich, deshalb gehen wir nach dem Mittagessen in den Park.",
    "fr": "Il fait très beau aujourd'hui, alors nous allons au parc après le déjeuner.",
    "es": "Hoy hace un tiempo estupendo, así que vamos al parque después de comer.",
    "zh": "今天天气很好，所以我们吃完午饭后去公园散步。",
    "ja": "今日はとても良い天気なので、昼食の後で公園に散歩に行きます。",
    "ru": "Сегодня прекрасная погода, поэтому после обеда мы идём гулять в парк.",
}


@pytest.fixture(scope="module")
def identifier() -> LanguageIdentifier:
    return LanguageIdentifier()


def test_bundled_model_ships_in_the_wheel() -> None:
    path = bundled_model_path()
    assert path.name == "lid.176.ftz" and path.is_file()


def test_predicts_languages_in_one_batch(identifier: LanguageIdentifier) -> None:
    languages, scores = identifier.predict(list(SENTENCES.values()))
    assert languages == list(SENTENCES)
    assert all(0.5 < score <= 1.0 for score in scores)
    singles = [identifier.predict([text]) for text in SENTENCES.values()]
    assert [(lang[0], score[0]) for lang, score in singles] == list(zip(languages, scores, strict=True))


def test_keeps_only_the_target_languages(identifier: LanguageIdentifier) -> None:
    languages, scores = identifier.predict(list(SENTENCES.values()))
    kept = [lang for lang, score in zip(languages, scores, strict=True) if identifier.keep(lang, score)]
    assert kept == ["en", "de", "fr", "es"]
    asian = LanguageIdentifier(LanguageSettings(languages=["zh", "ja"]))
    assert asian.keep("zh", scores[4]) and asian.keep("ja", scores[5]) and not asian.keep("en", scores[0])


def test_per_language_bars(identifier: LanguageIdentifier) -> None:
    settings = LanguageSettings(languages=["en", "de"], min_score=0.65, min_score_by_language={"de": 0.3})
    picky = LanguageIdentifier(settings)
    assert picky.keep("de", 0.4) and not picky.keep("en", 0.4)
    assert picky.keep("en", 0.65)  # the bar itself passes
    assert not identifier.keep("en", 0.64)


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t"])
def test_empty_text_is_undetermined(identifier: LanguageIdentifier, text: str) -> None:
    assert identifier.predict([text, SENTENCES["en"]])[0] == [UNDETERMINED, "en"]
    assert identifier.predict([text])[1] == [0.0]
    assert not identifier.keep(UNDETERMINED, 0.0)
    assert identifier.predict([]) == ([], [])


def test_multiline_text(identifier: LanguageIdentifier) -> None:
    """fastText reads one line per text; newlines must not reach it (it raises on them)."""
    assert identifier.predict(["\n".join(SENTENCES["de"].split(", "))])[0] == ["de"]


def test_a_ten_megabyte_line(identifier: LanguageIdentifier) -> None:
    text = (SENTENCES["fr"] + " ") * 130_000
    started = time.perf_counter()
    languages, scores = identifier.predict([text])
    assert time.perf_counter() - started < 2.0
    assert languages == ["fr"] and scores[0] <= 1.0


@pytest.mark.parametrize("codes", [["en", "xx"], ["english"], ["en", "zz", "qq"]])
def test_unknown_language_codes_fail_at_load(codes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by the settings, before any model is loaded; a custom model's codes when it loads."""
    with monkeypatch.context() as patched:
        patched.setattr(fasttext, "load_model", lambda *_: pytest.fail("the settings loaded a model"))
        with pytest.raises(ValueError, match="unknown language code") as error:
            LanguageSettings(languages=codes)
    custom = LanguageSettings(languages=codes, model_path=str(bundled_model_path()))
    with pytest.raises(ValueError, match="unknown language code") as loaded:
        LanguageIdentifier(custom)
    for code in codes:
        if code != "en":
            assert repr(code) in str(error.value) and repr(code) in str(loaded.value)


def test_the_listed_codes_are_the_bundled_models(identifier: LanguageIdentifier) -> None:
    assert identifier.labels == LID176_LANGUAGES


def test_rejection_keys(identifier: LanguageIdentifier) -> None:
    assert identifier.rejection("en", 0.9) is None
    assert identifier.rejection("en", 0.2) == "language_low_score"
    assert identifier.rejection("ja", 0.99) == identifier.rejection(UNDETERMINED, 0.0) == "language_not_kept"


@pytest.mark.parametrize(
    "config",
    [
        {"languages": []},
        {"min_score": 1.5},
        {"languages": ["en"], "min_score_by_language": {"de": 0.5}},  # an override for a dropped language
        {"languages": ["en"], "min_score_by_language": {"en": -0.1}},
        {"language": ["en"]},  # misspelt key
    ],
)
def test_bad_settings_are_refused(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LanguageSettings.model_validate(config)


def test_missing_or_broken_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        LanguageIdentifier(LanguageSettings(model_path=str(tmp_path / "nope.ftz")))
    broken = tmp_path / "broken.ftz"
    broken.write_bytes(b"not a fastText model")
    with pytest.raises(ValueError, match="cannot load language-ID model"):
        LanguageIdentifier(LanguageSettings(model_path=str(broken)))


def test_real_pages(identifier: LanguageIdentifier) -> None:
    """A real crawl file through our ingest: every page gets a known label and a probability,
    and most of this (mostly European) sample is in the target languages."""
    texts = sample_pages(SAMPLE.name)
    languages, scores = identifier.predict(texts)
    assert len(languages) == len(texts) > 20
    assert set(languages) <= identifier.labels
    assert all(0.0 < score <= 1.0 for score in scores)
    kept = sum(identifier.keep(lang, score) for lang, score in zip(languages, scores, strict=True))
    assert kept > len(texts) / 2
