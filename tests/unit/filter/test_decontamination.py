"""N-gram decontamination against WikiText-2 valid and small hand-made evaluation sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from resources.filter.decontamination import Contamination, DecontaminationSettings, Decontaminator, words_of
from resources.filter.text_sources import TextSourceError
from tests.conftest import SAMPLE_DIR, SHARED_CORPORA
from tests.warc_factory import ingest

WIKITEXT = SHARED_CORPORA / "wikitext-2" / "valid.txt"
# Raw WikiText-2 valid, line 13, as it is in the file: tokenized punctuation, "@-@" escapes.
WIKI_SENTENCE = (
    "The spines on the claws of H. americanus are red or red @-@ tipped , while those of H. gammarus are "
    "white or white @-@ tipped ."
)
SHORT_SET = [
    "What is the boiling point of water at sea level in degrees Celsius?",  # 13 words: an n-gram
    "Name the largest planet of the solar system.",  # 8 words: matched whole
    "Who wrote Hamlet?",  # 3 words: ignored
]


@pytest.fixture(scope="module")
def wikitext() -> Decontaminator:
    return Decontaminator(DecontaminationSettings(eval_sets={"wikitext-2": str(WIKITEXT)}))


@pytest.fixture(scope="module")
def crawl_texts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    files = sorted(SAMPLE_DIR.glob("*.warc.gz"))
    return ingest(tmp_path_factory.mktemp("crawl"), files).frame["text"].to_list()


@pytest.fixture
def quiz(tmp_path: Path) -> Decontaminator:
    """Two eval sets: short benchmark-style items (jsonl) and a paragraph file."""
    items = tmp_path / "quiz.jsonl"
    items.write_text("".join(json.dumps({"text": t}) + "\n" for t in SHORT_SET))
    essays = tmp_path / "essays.txt"
    essays.write_text(
        "The committee met on a cold Tuesday morning to decide the fate of the old harbour bridge.\n\n"
        "Nobody expected the vote to be unanimous, yet every hand went up at once."
    )
    return Decontaminator(DecontaminationSettings(eval_sets={"quiz": str(items), "essays": str(essays)}))


def test_words_ignore_case_punctuation_and_wikitext_tokenization() -> None:
    assert words_of("State-of-the-art, 0.7 kg; DON'T") == words_of("state @-@ of @-@ the @-@ art , 0 @.@ 7 kg ; don 't")
    assert words_of("Straße ＡＢＣ") == ["strasse", "abc"]  # casefold, NFKC


def test_document_holding_a_wikitext_13_gram_is_flagged(wikitext: Decontaminator, crawl_texts: list[str]) -> None:
    page = crawl_texts[0]
    assert wikitext.check(page) is None
    copied = " ".join(words_of(WIKI_SENTENCE)[:13])
    assert wikitext.check(f"{page}\n{copied}\n{page}") == Contamination("wikitext-2", 1)


def test_punctuation_and_case_differences_still_match(wikitext: Decontaminator) -> None:
    rewritten = (
        "THE SPINES on the claws of H.americanus are red or red-tipped, while those of H. gammarus are "
        "white (or white-tipped)!"
    )
    assert len(words_of(rewritten)) == 23
    assert wikitext.check(f"From our blog: {rewritten} Subscribe for more.") == Contamination("wikitext-2", 11)
    assert wikitext.check(rewritten.replace("red", "blue").replace("while", "whereas")) is None


def test_sample_crawl_is_clean(wikitext: Decontaminator, crawl_texts: list[str]) -> None:
    assert wikitext.check_batch(crawl_texts) == [None] * len(crawl_texts)


def test_short_documents_are_matched_whole_from_min_words(wikitext: Decontaminator) -> None:
    eight = "known as the European lobster or common lobster"
    assert len(words_of(eight)) == 8
    assert wikitext.check(eight.title() + "!") == Contamination("wikitext-2", 1)
    assert wikitext.check("the European lobster or common") is None  # 5 words: too common to tell
    assert wikitext.check("known as the European lobster or purple lobster") is None
    assert wikitext.check("") is None


def test_short_eval_items_are_found_inside_long_documents(quiz: Decontaminator) -> None:
    page = "Welcome to the trivia night recap. " * 3
    assert quiz.check(page) is None
    assert quiz.check(page + "Q7: name the LARGEST planet of the solar system. " + page) == Contamination("quiz", 1)
    assert quiz.check(page + "who wrote hamlet? " + page) is None  # 3 words: never indexed
    assert quiz.stats["quiz"].short_documents == 1 and quiz.stats["quiz"].ignored_documents == 1


def test_matches_are_attributed_to_the_eval_set_sharing_most(quiz: Decontaminator) -> None:
    essay = "Nobody expected the vote to be unanimous, yet every hand went up at once."
    question = "What is the boiling point of water at sea level in degrees Celsius?"
    assert quiz.check(f"Minutes: {essay}") == Contamination("essays", 2)
    assert quiz.check(f"{question} {essay}") == Contamination("essays", 2)
    assert quiz.check(f"Quiz time. {question} Answer: 100.") == Contamination("quiz", 1)


def test_min_matches(tmp_path: Path) -> None:
    source = tmp_path / "eval.txt"
    source.write_text(WIKI_SENTENCE)
    settings = DecontaminationSettings(eval_sets={"e": str(source)}, min_matches=5)
    strict = Decontaminator(settings)
    words = words_of(WIKI_SENTENCE)
    assert strict.check("intro " + " ".join(words[:16]) + " outro") is None  # 4 shared 13-grams
    assert strict.check("intro " + " ".join(words[:17]) + " outro") == Contamination("e", 5)
    assert strict.check(" ".join(words[:9])) == Contamination("e", 1)  # a whole short doc ignores min_matches
    off = Decontaminator(settings.model_copy(update={"min_words": 13}))
    assert off.check(" ".join(words[:12])) is None
    assert off.index_bytes < strict.index_bytes


def test_latin1_eval_file_is_decoded(tmp_path: Path) -> None:
    text = "Le garçon mangea une crème brûlée très sucrée à côté de la fenêtre ouverte près du château"
    path = tmp_path / "french.txt"
    path.write_bytes(text.encode("latin-1"))
    decontaminator = Decontaminator(DecontaminationSettings(eval_sets={"french": str(path)}))
    assert decontaminator.check(f"Souvenir: {text.upper()}.") == Contamination("french", 5)


def test_missing_or_empty_eval_set_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone.txt"
    settings = DecontaminationSettings(eval_sets={"wikitext-2": str(WIKITEXT), "gone": str(missing)})
    with pytest.raises(TextSourceError, match=rf"eval set 'gone' not found: {missing}"):
        Decontaminator(settings)
    with pytest.raises(TextSourceError, match=rf"eval set 'gone' not found: {missing}"):
        settings.eval_set_files()  # checked when the code location loads, before any set is read
    remote = DecontaminationSettings(eval_sets={"remote": "s3://bucket/eval.txt"})
    assert remote.eval_set_files() == ["s3://bucket/eval.txt"]  # read (and refused if missing) when run
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TextSourceError, match=rf"eval set 'hollow' is empty \(no documents\): {empty}"):
        Decontaminator(DecontaminationSettings(eval_sets={"hollow": str(empty)}))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Too short.\n\nAlso short.")
    with pytest.raises(TextSourceError, match=r"eval set 'tiny' has no document of at least 8 words"):
        Decontaminator(DecontaminationSettings(eval_sets={"tiny": str(tiny)}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"eval_sets": {}}, "at least 1 item"),
        ({"eval_sets": {"a": "x"}, "ngram": 5}, r"min_words \(8\) cannot exceed ngram \(5\)"),
        ({"eval_sets": {f"s{i}": "x" for i in range(65)}}, "at most 64 eval sets"),
        ({"eval_sets": {" ": "x"}}, "names cannot be blank"),
        ({"eval_sets": {"a": "x"}, "n": 13}, "Extra inputs are not permitted"),
    ],
)
def test_settings_are_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DecontaminationSettings.model_validate(fields)


def test_many_eval_sets_keep_their_own_bits(tmp_path: Path) -> None:
    """More than 8 sets widen the per-hash mask; attribution stays exact."""
    sets = {}
    for i in range(10):
        path = tmp_path / f"set{i}.txt"
        path.write_text(f"item number {i} talks about topic {i} in a sentence of its very own words here")
        sets[f"set{i}"] = str(path)
    decontaminator = Decontaminator(DecontaminationSettings(eval_sets=sets))
    assert decontaminator.check("see: item number 9 talks about topic 9 in a sentence of its very own words here") == (
        Contamination("set9", 4)
    )
