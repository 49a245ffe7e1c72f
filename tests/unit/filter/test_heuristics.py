"""The heuristic rules one check at a time, their agreement with the rules' plain definitions
on real pages, and the inputs that break filters: empty, whitespace, no words, a 10 MB line,
scripts without spaces."""

from __future__ import annotations

import base64
import re
import time
from collections import Counter

import pytest
from pydantic import ValidationError

from resources.filter.c4 import C4Lines, C4Settings
from resources.filter.fineweb import FineWebQuality, FineWebSettings
from resources.filter.gopher import (
    GOPHER_SYMBOLS,
    GopherQuality,
    GopherQualitySettings,
    GopherRepetition,
    GopherRepetitionSettings,
)
from resources.filter.heuristics import HeuristicFilter, HeuristicSettings
from resources.filter.rules import Failure
from resources.filter.text_units import DocView, count_sentences, split_words

PROSE = """The old lighthouse stands at the end of the harbour wall, and it has guided ships for two centuries.
Its keeper climbs the spiral stairs every evening to check the lamp and to wind the clockwork.
In winter the storms are fierce, so the light must never fail, even for a single night.
Fishermen say that they can see the beam from twenty miles away when the sky is clear.
The town has decided to restore the tower with money raised by the people who live there.
Visitors will soon be able to climb to the gallery and look out over the grey water of the bay."""

GERMAN = """Der alte Leuchtturm steht am Ende der Hafenmauer und leitet seit zwei Jahrhunderten die Schiffe.
Sein Wärter steigt jeden Abend die Wendeltreppe hinauf, um die Lampe zu prüfen und das Uhrwerk aufzuziehen.
Im Winter sind die Stürme heftig, deshalb darf das Licht niemals ausfallen, nicht einmal für eine Nacht.
Die Fischer sagen, dass sie den Strahl bei klarem Himmel aus zwanzig Meilen Entfernung sehen können.
Die Stadt hat beschlossen, den Turm mit Geld zu restaurieren, das die Bewohner gesammelt haben."""

CHINESE = "北京是中华人民共和国的首都，也是全国的政治和文化中心。这座城市有三千多年的历史。" * 3
JAPANESE = "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。多くの観光客が訪れます。" * 3


# -- the tokenizer ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "words"),
    [  # what spaCy's English tokenizer (datatrove's word splitter) makes of these
        ("state-of-the-art", ["state", "-", "of", "-", "the", "-", "art"]),
        ("COVID-19 costs $5.00 (50%).", ["COVID-19", "costs", "$", "5.00", "(", "50", "%", ")", "."]),
        ("It's 10:30, isn't it?", ["It", "'s", "10:30", ",", "is", "n't", "it", "?"]),
        ("Mr. Smith, e.g. the U.S. and J. Doe.", ["Mr.", "Smith", ",", "e.g.", "the", "U.S.", "and", "J.", "Doe", "."]),
        ("Wow!!! Hmm... ok…yes", ["Wow", "!", "!", "!", "Hmm", "...", "ok", "…", "yes"]),
        ("see https://example.com/a?b=c.", ["see", "https://example.com/a?b=c", "."]),
        ("1,000 a,b a/b 1/2 end.Start", ["1,000", "a", ",", "b", "a", "/", "b", "1/2", "end", ".", "Start"]),
        ("东京。 #tag ©2024", ["东京", "。", "#", "tag", "©", "2024"]),
        ("", []),
        (" \n\t ", []),
    ],
)
def test_split_words_follows_spacy(text: str, words: list[str]) -> None:
    assert split_words(text) == words


def test_count_sentences_skips_abbreviations_and_stops_early() -> None:
    assert count_sentences(split_words("Mr. Smith arrived. He sat down! Did he eat? Yes.")) == 4
    assert count_sentences(split_words("The U.S. economy grew by 3.5 percent in 2023.")) == 1
    assert count_sentences(split_words("A. B. C. D. E. F.")) == 1  # initials, not sentences
    assert count_sentences(split_words("One. Two. Three. Four."), stop_at=2) == 2
    assert count_sentences([]) == 0


# -- Gopher repetition -------------------------------------------------------------------------------
REPETITION_OFF: dict[str, object] = {
    "dup_line_frac": None,
    "dup_para_frac": None,
    "dup_line_char_frac": None,
    "dup_para_char_frac": None,
    "top_n_grams": {},
    "dup_n_grams": {},
}


def repetition(text: str, **checks: object) -> Failure | None:
    """One repetition check alone (all others off)."""
    return GopherRepetition(GopherRepetitionSettings(**{**REPETITION_OFF, **checks}))(DocView(text))


LONG_PARAGRAPH = "This paragraph is long enough to weigh a lot in the character count of the document. " * 3


@pytest.mark.parametrize(
    ("text", "checks", "key", "detail"),
    [
        (
            "\n\n".join(["Same words here."] * 3 + ["Other one.", "Third."]),
            {"dup_para_frac": 0.3},
            "gopher_dup_para_frac",
            "dup_para_frac=0.4>0.3",
        ),
        ("\n\n".join(["Same words here."] * 2 + ["Other one.", "Third.", "Four."]), {"dup_para_frac": 0.3}, None, None),
        (
            "\n".join(["Same words here."] * 3 + ["Other one.", "Third."]),
            {"dup_line_frac": 0.3},
            "gopher_dup_line_frac",
            "dup_line_frac=0.4>0.3",
        ),
        ("\n".join(["Same words here."] * 2 + ["Other one.", "Third.", "Four."]), {"dup_line_frac": 0.3}, None, None),
        (
            "the cat sat on the mat and the cat ran to the cat house",
            {"top_n_grams": {2: 0.2}},
            "gopher_top_2_gram",
            "top_2_gram_char_frac",
        ),
        (PROSE, {"top_n_grams": {2: 0.2, 3: 0.18, 4: 0.16}}, None, None),
        (
            "one two three four five six " * 3 + "end",
            {"dup_n_grams": {5: 0.15}},
            "gopher_duplicated_5_n_grams",
            "dup_5_gram_char_frac",
        ),
        (PROSE, {"dup_n_grams": {5: 0.15, 10: 0.1}}, None, None),
    ],
)
def test_repetition_counts(text: str, checks: dict[str, object], key: str | None, detail: str | None) -> None:
    failure = repetition(text, **checks)
    if detail is None:
        assert failure is None
    else:
        assert failure is not None and failure[:2] == ("gopher_repetition", key)
        assert failure.detail.startswith(detail)


@pytest.mark.parametrize("separator", ["\n\n", "\n"])
def test_repeated_long_block_trips_the_character_fraction(separator: str) -> None:
    """One long block twice among short ones: few duplicates by count, many by characters."""
    text = separator.join([LONG_PARAGRAPH, LONG_PARAGRAPH, "Short one.", "Short two.", "Short three."])
    check = "dup_para_char_frac" if separator == "\n\n" else "dup_line_char_frac"
    assert repetition(text, **{check.replace("char_", ""): 0.3}) is None
    failure = repetition(text, **{check: 0.2})
    assert failure is not None and failure.key == "gopher_" + check and failure.detail.startswith(check + "=0.4")


def _plain_repetition(text: str, words: list[str]) -> dict[str, float]:
    """Gopher's repetition measures, straight from their definitions (slow, obvious)."""
    measures: dict[str, float] = {}
    for name, parts in (("para", re.split(r"\n{2,}", text.strip())), ("line", re.split(r"\n+", text))):
        seen: set[str] = set()
        dups = dup_chars = 0
        for part in parts:
            if part in seen:
                dups, dup_chars = dups + 1, dup_chars + len(part)
            seen.add(part)
        measures[f"dup_{name}_frac"] = dups / len(parts)
        measures[f"dup_{name}_char_frac"] = dup_chars / len(text)
    for n in (2, 3, 4):
        grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        if grams:
            gram, count = Counter(grams).most_common(1)[0]
            measures[f"top_{n}_gram_char_frac"] = len(gram) * count / len(text)
    for n in range(5, 11):
        seen_grams: set[tuple[str, ...]] = set()
        repeated, i = 0, 0
        while i < len(words) - n + 1:
            gram = tuple(words[i : i + n])
            if gram in seen_grams:
                repeated += sum(map(len, gram))
                i += n
            else:
                seen_grams.add(gram)
                i += 1
        measures[f"dup_{n}_gram_char_frac"] = repeated / len(text)
    return measures


def test_repetition_measures_equal_the_definitions_on_real_pages(sample_texts: list[str]) -> None:
    """The compiled n-gram counts (hashed keys, one table pass per size) change nothing: every measure,
    forced into the detail by a limit of -1, equals the plain computation."""
    checked = 0
    for text in sample_texts[:40]:
        expected = _plain_repetition(text, split_words(text))
        for name, value in expected.items():
            n = name.split("_")[1]
            if name.startswith("top_"):
                checks: dict[str, object] = {"top_n_grams": {int(n): -1.0}}
                key = f"gopher_top_{n}_gram"
            elif name.endswith("_gram_char_frac"):
                checks = {"dup_n_grams": {int(n): -1.0}}
                key = f"gopher_duplicated_{n}_n_grams"
            else:
                checks, key = {name: -1.0}, f"gopher_{name}"
            failure = repetition(text, **checks)
            assert failure == ("gopher_repetition", key, f"{name}={value:.4g}>-1"), name
            checked += 1
    assert checked > 500


# -- Gopher quality --------------------------------------------------------------------------------
QUALITY_OFF: dict[str, object] = {
    "min_doc_words": None,
    "max_doc_words": None,
    "min_avg_word_length": None,
    "max_avg_word_length": None,
    "max_symbol_word_ratio": None,
    "max_bullet_lines_ratio": None,
    "max_ellipsis_lines_ratio": None,
    "min_alpha_words_ratio": None,
    "min_stop_words": None,
}


def quality(text: str, **checks: object) -> Failure | None:
    return GopherQuality(GopherQualitySettings(**{**QUALITY_OFF, **checks}))(DocView(text))


@pytest.mark.parametrize(
    ("text", "checks", "key", "detail"),
    [
        ("Too short to count.", {"min_doc_words": 50}, "short_doc", "words=4<50"),
        (PROSE, {"max_doc_words": 20}, "long_doc", "words=107>20"),
        (" ".join("abcdefghij" * 6), {"min_avg_word_length": 3}, "below_avg_threshold", "mean_word_length=1<3"),
        ("extraordinarily " * 60, {"max_avg_word_length": 10}, "above_avg_threshold", "mean_word_length=15>10"),
        (PROSE + " #tag" * 20, {"max_symbol_word_ratio": 0.1}, "too_many_hashes", "hash_word_ratio=0.1282>0.1"),
        (
            PROSE + " wait..." * 20,
            {"max_symbol_word_ratio": 0.1},
            "too_many_ellipsis",
            "ellipsis_word_ratio=0.1282>0.1",
        ),
        (
            "\n".join(f"• item number {i} of the list" for i in range(20)),
            {"max_bullet_lines_ratio": 0.9},
            "too_many_bullets",
            "bullet_",
        ),
        (
            "\n".join(f"and then line {i} trails off..." for i in range(5)),
            {"max_ellipsis_lines_ratio": 0.3},
            "too_many_end_ellipsis",
            "ellipsis_",
        ),
        (
            " ".join(str(n) for n in range(100)),
            {"min_alpha_words_ratio": 0.8},
            "below_alpha_threshold",
            "alpha_words_ratio=0<0.8",
        ),
        (GERMAN, {"min_stop_words": 2}, "enough_stop_words", "stop_words=0<2"),
    ],
)
def test_quality_checks_fire(text: str, checks: dict[str, object], key: str, detail: str) -> None:
    failure = quality(text, **checks)
    assert failure is not None and failure[:2] == ("gopher_quality", "gopher_" + key)
    assert failure.detail.startswith(detail)


def test_no_gopher_symbol_is_a_letter() -> None:
    """The quality rule counts letter-only words without stripping Gopher symbols from them:
    correct only while no symbol is a letter."""
    assert not any(char.isalpha() for char in GOPHER_SYMBOLS)


def test_quality_keeps_prose_with_all_defaults() -> None:
    assert GopherQuality()(DocView(PROSE)) is None


@pytest.mark.parametrize("text", ["", "   \n\t  ", "... --- !!! ###"])
def test_quality_handles_documents_without_words(text: str) -> None:
    """No words, or only symbols: the minimum catches them, and without one no ratio divides by 0."""
    assert GopherQuality()(DocView(text)) == ("gopher_quality", "gopher_short_doc", "words=0<50")
    no_words = ("gopher_quality", "gopher_no_words", "no_words")
    assert quality(text, max_symbol_word_ratio=0.1, min_alpha_words_ratio=0.8) == no_words


# -- C4 ----------------------------------------------------------------------------------------------
def c4(text: str, **settings: object) -> tuple[str, Failure | None]:
    doc = DocView(text)
    failure = C4Lines(C4Settings(**settings))(doc)
    return doc.text, failure


def test_c4_keeps_prose_unchanged() -> None:
    assert c4(PROSE) == (PROSE, None)


@pytest.mark.parametrize(
    "noise",
    [
        "Home About Contact",  # no terminal punctuation
        "Read the rest of this story...",  # ends in an ellipsis
        "Hi there.",  # fewer than 3 words
        "Please enable JavaScript in your browser to continue.",
        "This website uses cookies to improve your experience.",
        "Read our Privacy Policy and our Terms of Use here.",
        "A word " + "x" * 1001 + " too long.",
    ],
)
def test_c4_removes_boilerplate_lines(noise: str) -> None:
    lines = PROSE.splitlines()
    text, failure = c4("\n".join([*lines[:3], noise, *lines[3:]]))
    assert failure is None
    assert text == PROSE


def test_c4_strips_citation_marks() -> None:
    text, failure = c4(PROSE.replace("centuries.", "centuries.[1]").replace("night.", "night.[citation needed]"))
    assert failure is None and text == PROSE


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        ("Lorem ipsum dolor sit amet, consectetur.", "lorem_ipsum"),
        ("The function body is { return 1; }.", "curly_bracket"),
    ],
)
def test_c4_drops_lorem_ipsum_and_code(line: str, detail: str) -> None:
    assert c4(PROSE + "\n" + line)[1] == ("c4", f"c4_{detail}", detail)


def test_c4_ignores_curly_brackets_in_lines_it_removes() -> None:
    assert c4(PROSE + "\nvar x = { a: 1 }")[1] is None  # no terminal punctuation: removed before the check


def test_c4_needs_five_sentences() -> None:
    failure = c4("Only one sentence is here.\nAnd a second one follows it.")[1]
    assert failure == ("c4", "c4_too_few_sentences", "sentences=2<5")
    assert c4("Only one sentence is here.", min_num_sentences=None)[1] is None


# -- FineWeb -----------------------------------------------------------------------------------------
def fineweb(text: str, **settings: object) -> Failure | None:
    return FineWebQuality(FineWebSettings(**settings))(DocView(text))


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("\n".join(f"Navigation entry number {i} without a stop" for i in range(10)), "line_punct_ratio=0<0.12"),
        ("\n".join(f"Short line {i}." for i in range(10)), "short_line_ratio=1>0.67"),
        (PROSE + ("\n" + PROSE.splitlines()[0]) * 2, "char_dup_ratio="),
        ("\n".join(f"Supercalifragilisticexpialidocious{i}." for i in range(10)), "list_ratio=0.45>0.3"),
        ("", "empty"),
        (" \n \n\t", "empty"),
    ],
)
def test_fineweb_checks_fire(text: str, detail: str) -> None:
    failure = fineweb(text)
    key = "fineweb_" + detail.split("=")[0]
    assert failure is not None and failure[:2] == ("fineweb", key) and failure.detail.startswith(detail)


def test_fineweb_keeps_prose_and_can_spare_unpunctuated_pages() -> None:
    assert fineweb(PROSE) is None
    assert fineweb(PROSE.replace(".", ""), line_punct_exclude_zero=True) is None


# -- the whole filter --------------------------------------------------------------------------------
def test_filter_runs_rules_in_order_and_reports_the_first_failure() -> None:
    text = PROSE + "\nSubscribe now"
    assert HeuristicFilter().apply(text) == (PROSE, None)  # C4 removed the last line
    hi = HeuristicFilter().apply("Hi.")[1]  # "Hi ." is a 2-gram bigger than the text
    assert hi is not None and hi[:2] == ("gopher_repetition", "gopher_top_2_gram")
    assert HeuristicFilter(HeuristicSettings(enabled=["fineweb", "c4"])).apply(GERMAN) == (GERMAN, None)
    assert HeuristicFilter().apply(GERMAN)[1] == ("gopher_quality", "gopher_enough_stop_words", "stop_words=0<2")


@pytest.mark.parametrize(
    "config",
    [
        {"enabled": ["gopher_quality", "no_such_rule"]},
        {"enabled": ["c4", "c4"]},
        {"gopher_quality": {"min_words": 3}},
        {"gopher_repetition": {"dup_n_grams": {0: 0.1}}},
        {"fineweb": {"new_line_ratio": "high"}},
    ],
)
def test_bad_settings_are_refused(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HeuristicSettings.model_validate(config)


def test_defaults_are_datatrove_defaults() -> None:
    settings = HeuristicSettings()
    assert settings.enabled == ["gopher_repetition", "gopher_quality", "c4", "fineweb"]
    assert settings.gopher_repetition.top_n_grams == {2: 0.2, 3: 0.18, 4: 0.16}
    assert settings.gopher_repetition.dup_n_grams[10] == 0.1
    assert (settings.gopher_quality.min_doc_words, settings.gopher_quality.max_doc_words) == (50, 100_000)
    assert (settings.c4.min_num_sentences, settings.c4.min_words_per_line) == (5, 3)
    assert (settings.fineweb.line_punct_thr, settings.fineweb.char_duplicates_ratio) == (0.12, 0.01)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ("the quick brown fox jumps over a lazy dog " * 250_000)[:10_000_000],
        lambda: "a" * 10_000_000,
        lambda: base64.b64encode(bytes(range(256)) * 29_300).decode(),  # one 10 MB token with + / =
        lambda: "東京は日本の首都です。" * 1_000_000,
        lambda: "=" * 10_000_000,
    ],
    ids=["prose", "one-token", "base64", "japanese", "symbols"],
)
def test_a_ten_megabyte_line_is_dropped_fast(make) -> None:
    text = make()
    assert len(text) >= 9_900_000 and "\n" not in text
    started = time.perf_counter()
    _, failure = HeuristicFilter().apply(text)
    assert time.perf_counter() - started < 2.0
    assert (
        failure is not None
        and failure.rule == "gopher_quality"
        and failure.key.startswith("gopher_")
        and failure.detail
    )


def test_the_size_guard_only_drops_what_the_quality_rule_drops() -> None:
    text = "the quick brown fox jumps over a lazy dog " * 12_000  # 108,000 words
    assert HeuristicFilter().apply(text)[1] == ("gopher_quality", "gopher_long_doc", "words>=108000>100000")
    assert GopherQuality()(DocView(text)) == ("gopher_quality", "gopher_long_doc", "words=108000>100000")


@pytest.mark.parametrize("text", [CHINESE, JAPANESE, CHINESE + "\n\n" + JAPANESE])
def test_scripts_without_spaces(text: str) -> None:
    """No spaces, so few "words": every rule still gives a clean verdict, and Gopher's
    English-centred word rules drop the page (as they do in datatrove)."""
    for rule in (GopherRepetition(), GopherQuality(), C4Lines(), FineWebQuality()):
        failure = rule(DocView(text))
        assert failure is None or (failure.rule == rule.name and failure.key.startswith(rule.family) and failure.detail)
    failure = HeuristicFilter().apply(text)[1]
    assert failure is not None and failure.rule in ("gopher_repetition", "gopher_quality")


def test_real_pages(sample_texts: list[str]) -> None:
    """Every page of a real crawl file gets a verdict in a known format; C4-kept text is lines
    ending in terminal punctuation; prose-like pages survive."""
    detail_format = re.compile(r"[a-z0-9_]+(=|>=|<=)[-0-9.e+]+[<>][-0-9.e+*]+|[a-z_]+")
    kept = 0
    for text in sample_texts:
        out, failure = HeuristicFilter().apply(text)
        if failure is None:
            kept += 1
            assert all(line.endswith((".", "?", "!", '"', "'")) for line in out.splitlines())
        else:
            assert failure.rule in ("gopher_repetition", "gopher_quality", "c4", "fineweb")
            assert re.fullmatch(r"(gopher|c4|fineweb)_[a-z0-9_]+", failure.key), failure.key
            assert detail_format.fullmatch(failure.detail), failure.detail
    assert 0 < kept < len(sample_texts)
