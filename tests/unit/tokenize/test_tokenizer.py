"""The tokenizer engine: byte-level BPE trained on the shipped sample crawl and reference text,
loaded back by transformers' AutoTokenizer, deterministic, and clear errors for bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from resources.filter.text_sources import read_documents
from resources.settings import PROJECT_ROOT
from resources.tokenize.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    TokenizerError,
    TokenizerSettings,
    TrainedTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from tests.conftest import SAMPLE_DIR
from tests.warc_factory import ingest

REFERENCE = PROJECT_ROOT / "data" / "reference" / "wikitext2_reference.txt"
SETTINGS = TokenizerSettings(vocab_size=4096)
ROUND_TRIP = [
    "Hello, world!",
    "  leading spaces, trailing newline\n",
    "Ünïcödé: Grüße aus Köln — 日本語のテキスト, emoji 🎉, tabs\tand\r\nCRLF",
    "a literal <|endoftext|> and <|pad|> inside a page",
    "",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The 242 documents of the shipped sample crawl, then the 88 reference (WikiText) sections."""
    crawl = ingest(tmp_path_factory.mktemp("crawl"), sorted(SAMPLE_DIR.glob("*.warc.gz"))).frame
    return crawl.get_column("text").to_list() + read_documents(str(REFERENCE))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> TrainedTokenizer:
    return train_tokenizer(corpus, SETTINGS, tmp_path_factory.mktemp("tokenizer"))


def test_trained_tokenizer_loads_with_autotokenizer_and_round_trips(trained: TrainedTokenizer, corpus: list[str]):
    assert (trained.vocab_size, trained.documents) == (4096, len(corpus))
    assert (trained.eos_token, trained.eos_id, trained.pad_token, trained.pad_id) == (EOS_TOKEN, 0, PAD_TOKEN, 1)
    auto = AutoTokenizer.from_pretrained(trained.path)
    assert isinstance(auto, PreTrainedTokenizerFast)
    assert (auto.eos_token, auto.eos_token_id, auto.pad_token, auto.pad_token_id) == (EOS_TOKEN, 0, PAD_TOKEN, 1)
    assert len(auto) == trained.vocab_size
    for text in [*ROUND_TRIP, *corpus[:50], corpus[-1]]:
        ids = auto(text, add_special_tokens=False)["input_ids"]
        assert auto.decode(ids) == text
        assert max(ids, default=0) < trained.vocab_size
    # BPE did learn something: web text takes far fewer tokens than bytes.
    sample = "\n\n".join(corpus[:20])
    assert len(auto(sample)["input_ids"]) < len(sample.encode()) / 2.5


def test_training_is_deterministic_and_order_independent(tmp_path: Path, corpus: list[str], trained: TrainedTokenizer):
    again = train_tokenizer(iter(reversed(corpus)), SETTINGS, tmp_path / "again")
    assert again.version == trained.version
    assert (again.path / "tokenizer.json").read_bytes() == (trained.path / "tokenizer.json").read_bytes()
    other = train_tokenizer(corpus[:100], SETTINGS, tmp_path / "other")
    assert other.version != trained.version


def test_loaded_tokenizer_matches_the_trained_one(trained: TrainedTokenizer):
    loaded = load_tokenizer(trained.path)
    assert (loaded.version, loaded.vocab_size, loaded.eos_id, loaded.pad_id) == (
        trained.version,
        trained.vocab_size,
        trained.eos_id,
        trained.pad_id,
    )
    assert loaded.documents == 0
    assert loaded.metadata()["tokenizer_version"] == trained.version
    assert trained.metadata()["training_documents"] == trained.documents


def test_a_small_corpus_gives_a_smaller_vocabulary(tmp_path: Path):
    tiny = train_tokenizer(["just a few words, a few words"], SETTINGS, tmp_path)
    assert 256 + 2 <= tiny.vocab_size < SETTINGS.vocab_size
    assert tiny.tokenizer.decode(tiny.tokenizer.encode("zebra ß").ids) == "zebra ß"  # every byte is in


@pytest.mark.parametrize("texts", [[], ["", "   ", "\n\t"]], ids=["no documents", "blank documents"])
def test_an_empty_corpus_is_a_clear_error(tmp_path: Path, texts: list[str]):
    with pytest.raises(TokenizerError, match="no training text"):
        train_tokenizer(texts, SETTINGS, tmp_path)


def test_loading_a_missing_or_corrupt_directory_is_a_clear_error(tmp_path: Path, trained: TrainedTokenizer):
    with pytest.raises(TokenizerError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match=r"has no tokenizer\.json"):
        load_tokenizer(empty)

    def broken(name: str, file: str, content: bytes) -> Path:
        directory = tmp_path / name
        shutil.copytree(trained.path, directory)
        (directory / file).write_bytes(content)
        return directory

    whole = (trained.path / "tokenizer.json").read_bytes()
    corrupt = {"truncated": whole[: len(whole) // 2], "garbage": b"\x00\xff not json", "wrong": b"{}"}
    for name, content in corrupt.items():
        with pytest.raises(TokenizerError, match=r"corrupt .*tokenizer\.json"):
            load_tokenizer(broken(name, "tokenizer.json", content))
    with pytest.raises(TokenizerError, match=r"corrupt .*tokenizer_config\.json"):
        load_tokenizer(broken("bad-config", "tokenizer_config.json", b"{not json"))
    with pytest.raises(TokenizerError, match="no eos_token"):
        load_tokenizer(broken("no-eos", "tokenizer_config.json", json.dumps({"pad_token": PAD_TOKEN}).encode()))
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        load_tokenizer(broken("unknown-eos", "tokenizer_config.json", json.dumps({"eos_token": "</s>"}).encode()))


def test_an_older_special_tokens_map_names_eos(tmp_path: Path, trained: TrainedTokenizer):
    directory = tmp_path / "old"
    directory.mkdir()
    shutil.copy(trained.path / "tokenizer.json", directory)
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": EOS_TOKEN}}))
    loaded = load_tokenizer(directory)
    assert (loaded.eos_id, loaded.pad_token, loaded.pad_id) == (0, None, None)
    assert loaded.version != trained.version  # the pad token is part of what the version covers


def test_settings_are_checked():
    assert TokenizerSettings(mode="load", path="/some/dir").path == "/some/dir"
    bad = [
        {"mode": "load"},
        {"eos_token": "</s>"},
        {"pad_token": EOS_TOKEN},
        {"special_tokens": [EOS_TOKEN, PAD_TOKEN, EOS_TOKEN]},
        {"vocab_size": 257},
        {"vocab_size": 1 << 32},
        {"vocab": 100},  # a typo is an error, not a silent default
    ]
    for fields in bad:
        with pytest.raises(ValidationError):
            TokenizerSettings.model_validate(fields)
    with pytest.raises(TokenizerError, match="use load_tokenizer"):
        train_tokenizer(["text"], TokenizerSettings(mode="load", path="/some/dir"), "/tmp/unused")
