"""The evaluation engine: eval sets (encodings, bad files), checkpoint loading (damaged ones),
bits-per-byte scoring checked exactly against hand-made models, the unigram baseline,
generation samples and regression checks. Real files, a real tokenizer and a real (tiny,
two-step) checkpoint from our own training loop; hand-made torch modules where a test needs
exact expected numbers."""

from __future__ import annotations

import codecs
import gzip
import itertools
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from resources.common.schemas import VALIDATION, doc_id_of
from resources.common.storage import Manifest, ShardStore
from resources.evaluate import scoring
from resources.evaluate.history import is_finite_result, regressions
from resources.evaluate.scoring import (
    CheckpointLoadError,
    EvalSetError,
    EvalTexts,
    EvaluationError,
    LoadedCheckpoint,
    generate_samples,
    held_out_texts,
    load_checkpoint,
    load_eval_set,
    score_texts,
    token_counts,
    unigram_log2_probs,
)
from resources.evaluate.settings import EvalSetSpec, EvaluationSettings, GenerationSettings
from resources.filter.text_sources import read_documents
from resources.llm.tiny_model import train_tiny_checkpoint
from resources.settings import PROJECT_ROOT
from resources.tokenize.shards import split_of
from resources.tokenize.tokenizer import TrainedTokenizer
from resources.train.checkpoints import MANIFEST_FILE, MODEL_FILE, STATE_FILE

REFERENCE = PROJECT_ROOT / "data" / "reference" / "wikitext2_reference.txt"
TRAIN_SEQ_LEN = 32
DOCUMENTS = [
    "Crème brûlée is a dessert of rich custard topped with hard caramel.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "A short one.",
    "The history of the city begins in the third century, when a Roman camp was built on the river.",
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of our training loop: a tokenizer trained here (written into every step
    directory) and two optimizer steps of the tiny preset; a few seconds on CPU."""
    root = tmp_path_factory.mktemp("eval_checkpoint")
    texts = read_documents(str(REFERENCE))[:200]
    checkpoint = train_tiny_checkpoint(
        texts, root, vocab_size=320, seq_len=TRAIN_SEQ_LEN, micro_batch_size=2, steps=2, device="cpu"
    )
    return checkpoint.parent


@pytest.fixture(scope="module")
def step_dir(run_dir: Path) -> Path:
    (step,) = sorted(run_dir.glob("step-*"))
    return step


@pytest.fixture(scope="module")
def loaded(run_dir: Path) -> LoadedCheckpoint:
    return load_checkpoint(run_dir, device="cpu")


@pytest.fixture(scope="module")
def tokenizer(loaded: LoadedCheckpoint) -> TrainedTokenizer:
    return loaded.tokenizer


class UniformLM(torch.nn.Module):
    """All-zero logits: every one of `vocab` ids has probability 1/vocab, whatever the context."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


class BigramLM(torch.nn.Module):
    """Logits of the next token from the current token alone (a random table): the exact NLL of
    a document is a sum over its adjacent pairs, whatever the windows or batches."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=generator) * 3)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])

    def expected_nll(self, sequences: list[list[int]]) -> float:
        table = self.table.detach().double().numpy()
        top = table.max(1, keepdims=True)
        log_probs = table - top - np.log(np.exp(table - top).sum(1, keepdims=True))
        return -sum(log_probs[a, b] for seq in sequences for a, b in itertools.pairwise(seq))


def hand_made(model: torch.nn.Module, tokenizer: TrainedTokenizer, seq_len: int = 16) -> LoadedCheckpoint:
    return LoadedCheckpoint(Path("hand-made"), model.eval(), tokenizer, seq_len, torch.device("cpu"), {})


def texts(documents: list[str], name: str = "set") -> EvalTexts:
    return EvalTexts(name, documents, "memory", "utf-8")


def token_ids(tokenizer: TrainedTokenizer, document: str) -> list[int]:
    return tokenizer.tokenizer.encode(document, add_special_tokens=False).ids


def scored_sequences(tokenizer: TrainedTokenizer, documents: list[str]) -> list[list[int]]:
    """How training packs a document: after an EOS, closed by one."""
    eos = tokenizer.eos_id
    return [[eos, *token_ids(tokenizer, d), eos] for d in documents]


# --------------------------------------------------------------------------- bits-per-byte


def test_uniform_model_gives_ln_v_per_token_and_log2_v_bits_per_token(tokenizer: TrainedTokenizer) -> None:
    vocab = tokenizer.vocab_size
    score = score_texts(hand_made(UniformLM(vocab), tokenizer), texts(DOCUMENTS), max_tokens=10**6)

    expected_tokens = sum(len(token_ids(tokenizer, d)) + 1 for d in DOCUMENTS)
    expected_bytes = sum(len(d.encode("utf-8")) for d in DOCUMENTS)
    assert expected_bytes > sum(len(d) for d in DOCUMENTS), "the documents have multi-byte characters"
    assert score.documents == len(DOCUMENTS)
    assert score.tokens == expected_tokens
    assert score.bytes == expected_bytes
    assert score.loss == pytest.approx(math.log(vocab), rel=1e-6)
    assert score.perplexity == pytest.approx(vocab, rel=1e-5)
    assert score.bits_per_byte == pytest.approx(expected_tokens * math.log2(vocab) / expected_bytes, rel=1e-6)
    assert score.unigram_bits is None and score.unigram_bits_per_byte is None
    row = score.row()
    assert row["tokens"] == expected_tokens and row["bits_per_byte"] == score.bits_per_byte
    assert row["encoding"] == "utf-8" and row["unigram_bits_per_byte"] is None


def test_model_vocabulary_larger_than_the_tokenizer_is_what_the_loss_is_over(tokenizer: TrainedTokenizer) -> None:
    vocab = tokenizer.vocab_size + 64  # models often pad the embedding
    score = score_texts(hand_made(UniformLM(vocab), tokenizer), texts(DOCUMENTS[:1]), max_tokens=10**6)
    assert score.loss == pytest.approx(math.log(vocab), rel=1e-6)


@pytest.mark.parametrize("seq_len", [1, 2, 3, 7, 16, 64, 10_000])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_every_token_is_predicted_once_however_windows_are_cut(
    tokenizer: TrainedTokenizer, seq_len: int, batch_size: int
) -> None:
    sequences = scored_sequences(tokenizer, DOCUMENTS)
    expected_tokens = sum(len(s) - 1 for s in sequences)
    vocab = tokenizer.vocab_size

    uniform = score_texts(
        hand_made(UniformLM(vocab), tokenizer),
        texts(DOCUMENTS),
        max_tokens=10**6,
        seq_len=seq_len,
        batch_size=batch_size,
    )
    assert uniform.tokens == expected_tokens
    assert uniform.nll_nats == pytest.approx(expected_tokens * math.log(vocab), rel=1e-6)

    # A bigram model conditions on the previous token only, so a window that starts on the token
    # before its first prediction scores exactly like the whole document: any misaligned label,
    # dropped or doubled prediction or leaking pad changes the sum.
    bigram = BigramLM(vocab)
    score = score_texts(
        hand_made(bigram, tokenizer), texts(DOCUMENTS), max_tokens=10**6, seq_len=seq_len, batch_size=batch_size
    )
    assert score.tokens == expected_tokens
    assert score.nll_nats == pytest.approx(bigram.expected_nll(sequences), rel=1e-5)


def test_seq_len_defaults_to_the_checkpoints(tokenizer: TrainedTokenizer) -> None:
    bigram = BigramLM(tokenizer.vocab_size, seed=1)
    short = score_texts(hand_made(bigram, tokenizer, seq_len=2), texts(DOCUMENTS), max_tokens=10**6)
    explicit = score_texts(hand_made(bigram, tokenizer, seq_len=500), texts(DOCUMENTS), max_tokens=10**6, seq_len=2)
    assert short.nll_nats == pytest.approx(explicit.nll_nats, rel=1e-6)
    assert short.nll_nats == pytest.approx(bigram.expected_nll(scored_sequences(tokenizer, DOCUMENTS)), rel=1e-5)


def test_max_tokens_keeps_whole_documents_in_file_order(tokenizer: TrainedTokenizer) -> None:
    model = hand_made(UniformLM(tokenizer.vocab_size), tokenizer)
    costs = [len(token_ids(tokenizer, d)) + 1 for d in DOCUMENTS]
    sizes = [len(d.encode("utf-8")) for d in DOCUMENTS]

    for kept in range(1, len(DOCUMENTS) + 1):
        exact = score_texts(model, texts(DOCUMENTS), max_tokens=sum(costs[:kept]))
        assert (exact.documents, exact.tokens, exact.bytes) == (kept, sum(costs[:kept]), sum(sizes[:kept]))
        if kept < len(DOCUMENTS):  # one token short of the next document: it is left out whole
            short = score_texts(model, texts(DOCUMENTS), max_tokens=sum(costs[: kept + 1]) - 1)
            assert (short.documents, short.tokens, short.bytes) == (kept, sum(costs[:kept]), sum(sizes[:kept]))

    # File order: once a document does not fit, a later, smaller one is not taken instead.
    assert costs[2] < costs[1]
    prefix = score_texts(model, texts(DOCUMENTS), max_tokens=costs[0] + costs[2])
    assert (prefix.documents, prefix.tokens, prefix.bytes) == (1, costs[0], sizes[0])

    # The first document is scored whole even when it alone exceeds the budget.
    first = score_texts(model, texts(DOCUMENTS), max_tokens=1)
    assert (first.documents, first.tokens, first.bytes) == (1, costs[0], sizes[0])


def test_the_held_out_split_is_read_only_as_far_as_the_budget(
    tokenizer: TrainedTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "_ENCODE_CHUNK", 8)  # documents are read at most one chunk past the budget
    store = ShardStore(str(tmp_path))
    held = [d for d in read_documents(str(REFERENCE)) if split_of(doc_id_of(d), 0.5) == VALIDATION]
    for index, part in enumerate((held[:15], held[15:30])):
        frame = pl.DataFrame({"doc_id": [doc_id_of(d) for d in part], "text": part})
        store.commit(Manifest("docs", f"b{index}", [store.write_parquet_shard("docs", f"b{index}", 0, frame)]))
    split = held_out_texts(store, "docs", ["b0", "b1", "never-materialized"], 0.5)
    model = hand_made(UniformLM(tokenizer.vocab_size), tokenizer)
    costs = [len(token_ids(tokenizer, d)) + 1 for d in held[:30]]

    score = score_texts(model, split, max_tokens=sum(costs[:18]))  # stops inside b1: the missing one is never read
    assert (score.documents, score.tokens) == (18, sum(costs[:18]))
    assert score_texts(model, split, max_tokens=sum(costs[:18])).bits_per_byte == score.bits_per_byte  # re-iterable
    with pytest.raises(EvaluationError, match="never-materialized"):
        score_texts(model, split, max_tokens=10**9)


def test_a_set_without_any_token_is_an_error(tokenizer: TrainedTokenizer) -> None:
    model = hand_made(UniformLM(tokenizer.vocab_size), tokenizer)
    with pytest.raises(EvalSetError, match="'blank'"):
        score_texts(model, texts(["", ""], name="blank"), max_tokens=100)


# --------------------------------------------------------------------------- unigram baseline


def test_unigram_log2_probs_are_add_one_smoothed_probabilities() -> None:
    counts = np.array([0, 5, 0, 10, 1, 0], dtype=np.int64)
    log2p = unigram_log2_probs(counts)
    assert log2p.shape == counts.shape and np.isfinite(log2p).all()
    assert float(np.sum(2.0**log2p)) == pytest.approx(1.0, abs=1e-12)
    expected = np.log2((counts + 1) / (counts.sum() + counts.size))
    np.testing.assert_allclose(log2p, expected, rtol=1e-12)
    assert log2p[0] == log2p[2] == log2p[5] < log2p[4] < log2p[1] < log2p[3]
    # No training data at all: uniform.
    np.testing.assert_allclose(unigram_log2_probs(np.zeros(8, dtype=np.int64)), np.full(8, -3.0))


def test_token_counts() -> None:
    spans = [np.array([1, 2, 2]), np.array([], dtype=np.int64), np.array([4, 2], dtype=np.uint16)]
    assert token_counts(spans, 6).tolist() == [0, 1, 3, 0, 1, 0]
    assert token_counts([], 4).tolist() == [0, 0, 0, 0]


def test_unigram_bits_per_byte_is_the_hand_computed_sum(tokenizer: TrainedTokenizer) -> None:
    vocab = tokenizer.vocab_size
    counts = np.random.default_rng(0).integers(0, 50, size=vocab)
    counts[: vocab // 3] = 0  # many ids never seen in training: they must cost a finite amount
    log2p = unigram_log2_probs(counts)
    score = score_texts(hand_made(UniformLM(vocab), tokenizer), texts(DOCUMENTS), max_tokens=10**6, unigram=log2p)

    probabilities = (counts + 1.0) / (counts.sum() + vocab)
    targets = [t for seq in scored_sequences(tokenizer, DOCUMENTS) for t in seq[1:]]
    expected_bits = -sum(math.log2(probabilities[t]) for t in targets)
    expected_bytes = sum(len(d.encode("utf-8")) for d in DOCUMENTS)
    assert score.unigram_bits == pytest.approx(expected_bits, rel=1e-9)
    assert score.unigram_bits_per_byte == pytest.approx(expected_bits / expected_bytes, rel=1e-9)
    assert math.isfinite(score.unigram_bits_per_byte)
    assert score.row()["unigram_bits_per_byte"] == score.unigram_bits_per_byte
    # The uniform model pays log2(V) per token; the unigram baseline, fitted to counts, differs.
    assert score.bits_per_byte == pytest.approx(len(targets) * math.log2(vocab) / expected_bytes, rel=1e-6)


# --------------------------------------------------------------------------- eval sets


def test_missing_eval_set_names_set_and_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "valid.txt"
    with pytest.raises(EvalSetError) as caught:
        load_eval_set("wiki_valid", EvalSetSpec(path=str(path)))
    assert "wiki_valid" in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(
    "content", [b"", b"   \n\n\t \r\n  \n", "\n\n".encode("utf-16")], ids=["empty", "whitespace", "utf16_blank"]
)
def test_empty_eval_set_names_set_and_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "valid.txt"
    path.write_bytes(content)
    with pytest.raises(EvalSetError, match="empty") as caught:
        load_eval_set("blank_set", EvalSetSpec(path=str(path)))
    assert "blank_set" in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("line", "reason"),
    [('{"body": "no text field"}', "no string field 'text'"), ('{"text": 12}', "no string field 'text'"),
     ('["text"]', "no string field 'text'"), ("{not json", "not JSON")],
)  # fmt: skip
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(f'{{"text": "first document"}}\n\n{line}\n{{"text": "last"}}\n', encoding="utf-8")
    with pytest.raises(EvalSetError) as caught:
        load_eval_set("json_set", EvalSetSpec(path=str(path)))
    message = str(caught.value)
    assert str(path) in message and "line 3" in message and reason in message and "json_set" in message


def test_jsonl_eval_set_plain_and_gzipped(tmp_path: Path) -> None:
    records = [{"text": "Crème brûlée\nwith two lines", "id": 1}, {"text": "   "}, {"text": "Über"}]
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
    plain = tmp_path / "set.jsonl"
    plain.write_text(body, encoding="utf-8")
    zipped = tmp_path / "set.jsonl.gz"
    zipped.write_bytes(gzip.compress(body.encode("utf-8")))
    for path in (plain, zipped):
        loaded = load_eval_set("j", EvalSetSpec(path=str(path)))
        assert loaded.documents == ["Crème brûlée\nwith two lines", "Über"]
        assert loaded.name == "j" and loaded.source == str(path) and loaded.encoding == "utf-8"


ENCODED_TEXT = "Crème brûlée für alle.\nZweite Zeile.\n\nÜber den Wolken, à la carte."
EXPECTED_DOCUMENTS = ["Crème brûlée für alle.\nZweite Zeile.", "Über den Wolken, à la carte."]


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (ENCODED_TEXT.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + ENCODED_TEXT.encode("utf-8"), "utf-8-sig"),
        (ENCODED_TEXT.encode("utf-16"), "utf-16"),  # with BOM (native order)
        (codecs.BOM_UTF16_LE + ENCODED_TEXT.encode("utf-16-le"), "utf-16"),
        (codecs.BOM_UTF16_BE + ENCODED_TEXT.encode("utf-16-be"), "utf-16"),
        (ENCODED_TEXT.encode("utf-16-le"), "utf-16-le"),  # no BOM: Windows export
        (ENCODED_TEXT.encode("utf-16-be"), "utf-16-be"),
        (ENCODED_TEXT.replace("\n", "\r\n").encode("utf-16-le"), "utf-16-le"),
        (ENCODED_TEXT.replace("\n", "\r\n").encode("utf-8"), "utf-8"),
        (ENCODED_TEXT.replace("\n", "\r").encode("utf-8"), "utf-8"),
        (ENCODED_TEXT.encode("latin-1"), "cp1252"),  # cp1252 decodes latin-1 letters identically
        (ENCODED_TEXT.encode("cp1252"), "cp1252"),
    ],
    ids=["utf8", "utf8_bom", "utf16_bom", "utf16le_bom", "utf16be_bom", "utf16le", "utf16be", "utf16le_crlf",
         "utf8_crlf", "utf8_cr", "latin1", "cp1252"],
)  # fmt: skip
def test_eval_set_encodings_are_detected(tmp_path: Path, data: bytes, encoding: str) -> None:
    path = tmp_path / "valid.txt"
    path.write_bytes(data)
    loaded = load_eval_set("enc", EvalSetSpec(path=str(path)))
    assert loaded.documents == EXPECTED_DOCUMENTS
    assert loaded.encoding == encoding


def test_cp1252_only_characters_and_latin1_fallback(tmp_path: Path) -> None:
    euro = tmp_path / "euro.txt"
    euro.write_bytes("Preis: 5 € – „Angebot“".encode("cp1252"))
    loaded = load_eval_set("euro", EvalSetSpec(path=str(euro)))
    assert (loaded.documents, loaded.encoding) == (["Preis: 5 € – „Angebot“"], "cp1252")

    odd = tmp_path / "odd.txt"  # 0x81 and 0x8d are undefined in cp1252: latin-1 decodes any byte
    odd.write_bytes(b"Caf\xe9 \x81\x8d fin")
    loaded = load_eval_set("odd", EvalSetSpec(path=str(odd)))
    assert (loaded.documents, loaded.encoding) == (["Café \x81\x8d fin"], "latin-1")


def test_explicit_encoding_is_used(tmp_path: Path) -> None:
    text = "Привет, мир.\n\nВторой документ."
    path = tmp_path / "ru.txt"
    path.write_bytes(text.encode("cp1251"))
    guessed = load_eval_set("ru", EvalSetSpec(path=str(path)))
    assert guessed.encoding != "cp1251" and guessed.documents != ["Привет, мир.", "Второй документ."]
    explicit = load_eval_set("ru", EvalSetSpec(path=str(path), encoding="cp1251"))
    assert explicit.documents == ["Привет, мир.", "Второй документ."] and explicit.encoding == "cp1251"


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "no-such-codec"])
def test_wrong_explicit_encoding_is_a_clear_error(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(ENCODED_TEXT.encode("latin-1"))
    with pytest.raises(EvalSetError) as caught:
        load_eval_set("latin_set", EvalSetSpec(path=str(path), encoding=encoding))
    message = str(caught.value)
    assert "latin_set" in message and str(path) in message and encoding in message


def test_shipped_eval_set_loads() -> None:
    loaded = load_eval_set(
        "wikitext2_valid", EvalSetSpec(path=str(PROJECT_ROOT / "data/eval/wikitext2_valid_small.txt"))
    )
    assert loaded.documents and all(d.strip() for d in loaded.documents) and loaded.encoding == "utf-8"


def test_settings_shape_results_by_eval_set_content_not_path(tmp_path: Path) -> None:
    first, moved = tmp_path / "a.txt", tmp_path / "elsewhere" / "a.txt"
    moved.parent.mkdir()
    first.write_text("one document", encoding="utf-8")
    moved.write_text("one document", encoding="utf-8")
    base = EvaluationSettings(eval_sets={"wiki": str(first), "other": {"path": str(first), "encoding": "cp1252"}})
    assert base.specs() == {
        "wiki": EvalSetSpec(path=str(first)),
        "other": EvalSetSpec(path=str(first), encoding="cp1252"),
    }
    shaping = base.output_shaping()
    assert shaping["eval_sets"]["wiki"]["encoding"] is None and shaping["eval_sets"]["other"]["encoding"] == "cp1252"
    elsewhere = EvaluationSettings(eval_sets={"wiki": str(moved), "other": {"path": str(moved), "encoding": "cp1252"}})
    assert elsewhere.output_shaping() == shaping
    execution_only = base.model_copy(update={"batch_size": 3, "device": "cpu", "regression_tolerance": 0.5})
    assert execution_only.output_shaping() == shaping
    assert base.model_copy(update={"seq_len": 64}).output_shaping() != shaping
    first.write_text("an edited document", encoding="utf-8")
    assert base.output_shaping() != shaping
    # A missing set does not fail when definitions load (it fails when the asset runs).
    missing = EvaluationSettings(eval_sets={"gone": str(tmp_path / "gone.txt")}).output_shaping()
    assert missing["eval_sets"]["gone"]["content"] == str(tmp_path / "gone.txt")


# --------------------------------------------------------------------------- checkpoints


def test_missing_checkpoint_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "step-000001"
    with pytest.raises(CheckpointLoadError, match="not found") as caught:
        load_checkpoint(path, device="cpu")
    assert str(path) in str(caught.value)


def test_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(CheckpointLoadError) as caught:
        load_checkpoint(tmp_path, device="cpu")
    assert str(tmp_path) in str(caught.value)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated_weights": lambda d: truncate(d / MODEL_FILE),
    "bit_flipped_weights": lambda d: flip(d / MODEL_FILE),
    "garbage_config": lambda d: (d / "config.json").write_text("{this is not json"),
    "missing_tokenizer": lambda d: (d / "tokenizer.json").unlink(),
    "garbage_manifest": lambda d: (d / MANIFEST_FILE).write_text("[[["),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("given", ["step_dir", "run_dir"])
def test_damaged_checkpoint_does_not_load(step_dir: Path, tmp_path: Path, damage: str, given: str) -> None:
    copy = tmp_path / "run" / step_dir.name
    shutil.copytree(step_dir, copy)
    DAMAGE[damage](copy)
    target = copy if given == "step_dir" else copy.parent
    with pytest.raises(CheckpointLoadError) as caught:
        load_checkpoint(target, device="cpu")
    assert str(target) in str(caught.value)


PLAIN_DAMAGE = {
    "garbage_config": lambda d: (d / "config.json").write_text("{this is not json"),
    "config_of_no_model": lambda d: (d / "config.json").write_text('{"model_type": "no-such-architecture"}'),
    "truncated_weights": lambda d: truncate(d / MODEL_FILE),
    "missing_weights": lambda d: (d / MODEL_FILE).unlink(),
    "missing_tokenizer": lambda d: (d / "tokenizer.json").unlink(),
    "tokenizer_without_eos": lambda d: (d / "tokenizer_config.json").write_text("{}"),
    "vocab_mismatch": lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "vocab_size": 100})
    ),
}


@pytest.mark.parametrize("damage", sorted(PLAIN_DAMAGE))
def test_damaged_plain_hugging_face_directory_does_not_load(step_dir: Path, tmp_path: Path, damage: str) -> None:
    """Without a manifest nothing is verified up front: what transformers or the tokenizer loader
    raise must still come out as CheckpointLoadError naming the directory."""
    plain = tmp_path / "hf"
    shutil.copytree(step_dir, plain, ignore=shutil.ignore_patterns(MANIFEST_FILE, STATE_FILE))
    PLAIN_DAMAGE[damage](plain)
    with pytest.raises(CheckpointLoadError) as caught:
        load_checkpoint(plain, device="cpu")
    assert str(plain) in str(caught.value)


def test_real_checkpoint_loads_from_run_or_step_dir_and_scores(
    run_dir: Path, step_dir: Path, loaded: LoadedCheckpoint
) -> None:
    assert loaded.path == step_dir and loaded.seq_len == TRAIN_SEQ_LEN and loaded.device.type == "cpu"
    assert loaded.manifest["step"] == 2 and loaded.manifest["model"]["seq_len"] == TRAIN_SEQ_LEN
    assert not loaded.model.training
    assert load_checkpoint(step_dir, device="cpu").path == step_dir

    score = score_texts(loaded, texts(DOCUMENTS), max_tokens=10**6)
    row = score.row()
    assert is_finite_result([row])
    assert score.documents == len(DOCUMENTS) and 0 < score.bits_per_byte < 50 and score.perplexity > 1
    expected_tokens = sum(len(token_ids(loaded.tokenizer, d)) + 1 for d in DOCUMENTS)
    assert score.tokens == expected_tokens

    # Right padding without an attention mask changes no prediction: batching is free.
    one_by_one = score_texts(loaded, texts(DOCUMENTS), max_tokens=10**6, batch_size=1, seq_len=8)
    batched = score_texts(loaded, texts(DOCUMENTS), max_tokens=10**6, batch_size=64, seq_len=8)
    assert batched.nll_nats == pytest.approx(one_by_one.nll_nats, rel=1e-5)
    assert batched.tokens == one_by_one.tokens == expected_tokens


def test_plain_hugging_face_directory_loads_without_manifest(step_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "hf"
    shutil.copytree(step_dir, plain, ignore=shutil.ignore_patterns(MANIFEST_FILE, STATE_FILE))
    checkpoint = load_checkpoint(plain, device="cpu")
    assert checkpoint.path == plain and checkpoint.manifest == {}
    assert checkpoint.seq_len == min(checkpoint.model.config.max_position_embeddings, 2048)
    score = score_texts(checkpoint, texts(DOCUMENTS[:2]), max_tokens=10**6, seq_len=TRAIN_SEQ_LEN)
    assert is_finite_result([score.row()])


# --------------------------------------------------------------------------- samples


def test_transformers_samples_are_reproducible(loaded: LoadedCheckpoint) -> None:
    prompts = ["The history of the city", "Crème brûlée is"]
    settings = GenerationSettings(backend="transformers", prompts=prompts, max_tokens=12, seed=7)
    first = generate_samples(loaded, settings)
    torch.manual_seed(12345)  # whatever the global RNG was left at
    again = generate_samples(loaded, settings)
    assert first == again
    assert [s.prompt for s in first] == prompts
    for sample in first:
        assert 1 <= sample.output_tokens <= 12 and sample.finish_reason in ("stop", "length")
        assert sample.finish_reason == "stop" or sample.output_tokens == 12

    # One seed per prompt (seed + position): a prompt's sample does not depend on the others.
    alone = generate_samples(loaded, settings.model_copy(update={"prompts": prompts[1:], "seed": 8}))
    assert alone == first[1:]

    greedy = settings.model_copy(update={"temperature": 0.0})
    assert generate_samples(loaded, greedy) == generate_samples(loaded, greedy.model_copy(update={"seed": 99}))


def test_no_samples_without_a_backend_or_prompts(loaded: LoadedCheckpoint) -> None:
    assert generate_samples(loaded, GenerationSettings(backend="none")) == []
    assert generate_samples(loaded, GenerationSettings(backend="transformers", prompts=[])) == []


# --------------------------------------------------------------------------- results


def test_regressions_beyond_tolerance_only() -> None:
    previous = {"held_out": 2.0, "wiki": 1.0, "gone": 1.0}
    current = {"held_out": 3.0, "wiki": 1.5000001, "new": 9.0}
    # held_out rose exactly 50%: at the boundary, not a regression; wiki by just over 50%.
    assert regressions(current, previous, 0.5) == {"wiki": (1.0, 1.5000001)}
    assert regressions(current, previous, 0.0) == {"held_out": (2.0, 3.0), "wiki": (1.0, 1.5000001)}
    assert regressions(current, previous, 2.0) == {}
    assert regressions({"wiki": 0.5}, previous, 0.0) == {}  # an improvement
    assert regressions({"wiki": 1.0}, previous, 0.0) == {}  # unchanged
    assert regressions({}, previous, 0.0) == {} and regressions(current, {}, 0.0) == {}
    assert regressions({"wiki": math.inf}, previous, 0.02) == {"wiki": (1.0, math.inf)}


def row(loss: object = 2.0, perplexity: object = 7.39, bits_per_byte: object = 1.1) -> dict[str, object]:
    return {"eval_set": "s", "loss": loss, "perplexity": perplexity, "bits_per_byte": bits_per_byte}


def test_is_finite_result() -> None:
    assert is_finite_result([row(), row(loss=0, perplexity=1, bits_per_byte=0.0)])
    assert is_finite_result([row(bits_per_byte=np.float64(1.0))])
    for key in ("loss", "perplexity", "bits_per_byte"):
        for bad in (math.nan, math.inf, -math.inf, None, "1.0"):
            assert not is_finite_result([row(), row(**{key: bad})]), (key, bad)
