"""Token shards: documents of the shipped sample crawl encoded into flat token arrays with an
index, written through a real ShardStore and read back; the contract the training loader
relies on (spans, EOS, split, MeCo prefixes) and clear errors for bad inputs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from resources.common.schemas import TOKEN_INDEX, TOKEN_INDEX_SCHEMA, TOKENS, TRAIN, VALIDATION
from resources.common.storage import Manifest, ShardStore
from resources.tokenize.reader import TokenShard, check_vocab, read_token_shards
from resources.tokenize.shards import (
    TokenShardError,
    TokenShardSettings,
    encode_partition,
    shard_dtype,
    split_of,
    tokenize_partition,
)
from resources.tokenize.tokenizer import (
    EOS_TOKEN,
    TokenizerSettings,
    TrainedTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from tests.conftest import SAMPLE_DIR
from tests.warc_factory import ingest

ASSET = "tokenized_documents"


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """The 242 documents of the shipped sample crawl (doc_id, text, url, domain, ...)."""
    return ingest(tmp_path_factory.mktemp("crawl"), sorted(SAMPLE_DIR.glob("*.warc.gz"))).frame


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory, documents: pl.DataFrame) -> TrainedTokenizer:
    texts = documents.get_column("text").to_list()
    return train_tokenizer(texts, TokenizerSettings(vocab_size=4096), tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def store(tmp_path: Path) -> ShardStore:
    return ShardStore(str(tmp_path / "store"))


def materialize(
    store: ShardStore,
    frames: list[pl.DataFrame],
    tokenizer: TrainedTokenizer,
    settings: TokenShardSettings | None = None,
    partition: str = "batch-0",
) -> tuple[Manifest, list[TokenShard]]:
    """What the asset does: write the shards, commit the manifest; then read them back."""
    result = tokenize_partition(store, ASSET, partition, frames, tokenizer, settings or TokenShardSettings())
    manifest = store.commit(Manifest(asset=ASSET, partition=partition, files=result.files, stats=result.stats))
    return manifest, list(read_token_shards(store, manifest))


def decode(tokenizer: TrainedTokenizer, ids: np.ndarray) -> str:
    return tokenizer.tokenizer.decode(ids.tolist(), skip_special_tokens=False)


def assert_spans_tile(shard: TokenShard, eos_id: int) -> None:
    """Every token belongs to one document; each document's span ends in its EOS, and that is
    the only EOS in it."""
    assert shard.index is not None
    offsets, lengths = shard.index.get_column("offset").to_numpy(), shard.index.get_column("length").to_numpy()
    assert offsets[0] == 0 and (offsets[1:] == offsets[:-1] + lengths[:-1] + 1).all()
    assert offsets[-1] + lengths[-1] + 1 == shard.tokens.size
    assert (shard.tokens[offsets + lengths] == eos_id).all()
    assert np.count_nonzero(shard.tokens == eos_id) == shard.index.height


def test_every_token_traces_back_to_its_document(
    store: ShardStore, documents: pl.DataFrame, tokenizer: TrainedTokenizer
):
    frames = [documents.slice(0, 100), documents.slice(100, 0), documents.slice(100)]
    manifest, shards = materialize(store, frames, tokenizer)
    names = [(f.table, f.path.split("-")[-2]) for f in manifest.files]
    assert names == [(TOKENS, "00000"), (TOKEN_INDEX, "00000"), (TOKENS, "00002"), (TOKEN_INDEX, "00002")]
    assert manifest.files[0].path.endswith(".bin") and manifest.files[1].path.endswith(".parquet")
    stats = manifest.stats
    assert stats["documents"] == manifest.rows_of(TOKEN_INDEX) == documents.height
    assert stats["tokens"] == manifest.rows_of(TOKENS) == sum(s.tokens.size for s in shards)
    assert (stats["dtype"], stats["vocab_size"], stats["eos_id"]) == ("uint16", 4096, tokenizer.eos_id)
    assert stats["tokenizer_version"] == tokenizer.version
    assert not tokenizer.tokenizer.encode_special_tokens  # the caller's tokenizer is left alone

    for shard, frame in zip(shards, [frames[0], frames[2]], strict=True):
        assert isinstance(shard.tokens, np.memmap) and shard.tokens.dtype == np.dtype("<u2")
        assert shard.index is not None and shard.index.schema == pl.Schema(TOKEN_INDEX_SCHEMA)
        assert shard.index.get_column("doc_id").to_list() == frame.get_column("doc_id").to_list()
        assert shard.index.get_column("text_bytes").to_list() == frame.get_column("text").str.len_bytes().to_list()
        assert (shard.index.get_column("prefix_length") == 0).all()
        assert_spans_tile(shard, tokenizer.eos_id)
        texts = frame.get_column("text").to_list()
        for (offset, length), text in zip(shard.index.select("offset", "length").iter_rows(), texts, strict=True):
            assert decode(tokenizer, shard.tokens[offset : offset + length]) == text
        check_vocab(shard.tokens, tokenizer.vocab_size, stats["dtype"])


def test_output_is_deterministic_and_does_not_depend_on_batch_size(
    tmp_path: Path, documents: pl.DataFrame, tokenizer: TrainedTokenizer
):
    first, _ = materialize(ShardStore(str(tmp_path / "a")), [documents], tokenizer)
    again, _ = materialize(ShardStore(str(tmp_path / "b")), [documents], tokenizer)
    small_batches = TokenShardSettings(batch_chars=5_000)  # dozens of encode calls, pipelined
    batched, _ = materialize(ShardStore(str(tmp_path / "c")), [documents], tokenizer, small_batches)
    assert first.files == again.files == batched.files
    assert first.data_version == again.data_version == batched.data_version
    assert "batch_chars" not in first.stats  # a speed setting, not part of what the shards are


def test_page_text_that_spells_a_special_token_gets_ordinary_tokens(store: ShardStore, tokenizer: TrainedTokenizer):
    texts = [f"before {EOS_TOKEN} after", f"{EOS_TOKEN}", "<|pad|> and more"]
    frame = pl.DataFrame({"doc_id": ["a", "b", "c"], "text": texts})
    _, [shard] = materialize(store, [frame], tokenizer)
    assert_spans_tile(shard, tokenizer.eos_id)
    assert tokenizer.pad_id not in shard.tokens
    assert [decode(tokenizer, span[:-1]) for span in shard.spans()] == texts


def test_uint16_up_to_65536_ids_then_uint32(store: ShardStore, documents: pl.DataFrame, tokenizer: TrainedTokenizer):
    assert shard_dtype(4096) == shard_dtype(65_536) == np.dtype("<u2")
    assert shard_dtype(65_537) == shard_dtype(200_000) == np.dtype("<u4")
    frame = documents.slice(0, 30)
    big = dataclasses.replace(tokenizer, vocab_size=70_000)  # as a large vocabulary would report
    narrow, [small_shard] = materialize(store, [frame], tokenizer, partition="narrow")
    wide, [wide_shard] = materialize(store, [frame], big, partition="wide")
    assert (narrow.stats["dtype"], wide.stats["dtype"]) == ("uint16", "uint32")
    assert wide_shard.tokens.dtype == np.dtype("<u4")
    assert wide.files[0].bytes == 4 * wide.files[0].rows == 2 * narrow.files[0].bytes
    assert np.array_equal(wide_shard.tokens, small_shard.tokens)


def test_split_is_fixed_by_the_document_and_near_the_fraction():
    keys = [f"{i:064x}" for i in range(20_000)]
    for fraction in (0.05, 0.2):
        held_out = sum(split_of(key, fraction) == VALIDATION for key in keys) / len(keys)
        assert abs(held_out - fraction) < 0.01
    assert {split_of(key, 0.0) for key in keys[:500]} == {TRAIN}
    assert {split_of(key, 1.0) for key in keys[:500]} == {VALIDATION}
    assert [split_of(key, 0.05) for key in keys[:500]] == [split_of(key, 0.05) for key in keys[:500]]


def test_split_is_the_same_in_any_shard_layout_and_follows_the_source_document(
    tmp_path: Path, documents: pl.DataFrame, tokenizer: TrainedTokenizer
):
    settings = TokenShardSettings(validation_fraction=0.3)
    frames = [documents.slice(start, 50) for start in range(0, documents.height, 50)]
    whole, whole_shards = materialize(ShardStore(str(tmp_path / "a")), [documents], tokenizer, settings)
    split, split_shards = materialize(ShardStore(str(tmp_path / "b")), frames, tokenizer, settings)

    def splits(shards: list[TokenShard]) -> dict[str, str]:
        indexes = [shard.index for shard in shards if shard.index is not None]
        return dict(pl.concat(indexes).select("doc_id", "split").iter_rows())

    assert splits(whole_shards) == splits(split_shards)
    held_out = sum(s == VALIDATION for s in splits(whole_shards).values())
    assert whole.stats["validation_documents"] == split.stats["validation_documents"] == held_out
    assert 0.15 < held_out / documents.height < 0.45
    [shard] = whole_shards
    assert whole.stats["validation_tokens"] == sum(span.size for span in shard.spans(VALIDATION))

    rewrites = documents.select(
        doc_id=pl.lit("rewrite-") + pl.col("doc_id"),
        text=pl.col("text").str.to_uppercase(),
        source_doc_id=pl.col("doc_id"),
    )
    assert settings.input_columns(rewrites.columns) == ["doc_id", "text", "source_doc_id"]
    _, rewritten = materialize(ShardStore(str(tmp_path / "c")), [rewrites], tokenizer, settings)
    assert {doc.removeprefix("rewrite-"): s for doc, s in splits(rewritten).items()} == splits(whole_shards)


@pytest.mark.parametrize("mode", ["url", "domain"])
def test_meco_prefix_lengths_let_the_loader_drop_the_metadata(
    tmp_path: Path, documents: pl.DataFrame, tokenizer: TrainedTokenizer, mode: str
):
    frame = documents.slice(0, 40).with_columns(
        pl.when(pl.int_range(pl.len()) % 10 == 3).then(None).otherwise(pl.col(mode)).alias(mode)
    )
    settings = TokenShardSettings(metadata_prefix=mode)
    assert settings.input_columns(frame.columns) == ["doc_id", "text", mode]
    meco, [shard] = materialize(ShardStore(str(tmp_path / "meco")), [frame], tokenizer, settings)
    _, [plain] = materialize(ShardStore(str(tmp_path / "plain")), [frame], tokenizer)
    assert shard.index is not None
    assert_spans_tile(shard, tokenizer.eos_id)
    rows = shard.index.select("offset", "length", "prefix_length").iter_rows()
    for (offset, length, prefix), value, text in zip(rows, frame[mode], frame["text"], strict=True):
        assert decode(tokenizer, shard.tokens[offset : offset + prefix]) == (f"URL: {value}\n\n" if value else "")
        assert decode(tokenizer, shard.tokens[offset + prefix : offset + length]) == text
    assert meco.stats["prefix_tokens"] == shard.index.get_column("prefix_length").sum() > 0
    assert meco.stats["tokens"] == plain.tokens.size + meco.stats["prefix_tokens"]
    # The cool-down view of a MeCo shard is exactly the plain shard.
    assert np.array_equal(np.concatenate(list(shard.spans(metadata=False))), plain.tokens)
    assert np.array_equal(np.concatenate(list(shard.spans())), shard.tokens)

    without = frame.drop(mode)
    with pytest.raises(TokenShardError, match=f"lack column.*{mode}"):
        list(encode_partition([without], tokenizer, settings))


def resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_process_that_tokenizes_many_partitions_does_not_grow(
    tmp_path: Path, documents: pl.DataFrame, tokenizer: TrainedTokenizer
):
    """As a long-lived process (the scale benchmark, an in-process materialization loop) does: the
    tokenizer loaded again for every partition. A new encoding copy per partition kept ~3 MB of
    word cache each time (tokenizers 0.23): 166 MB over these 20 partitions on the 2-core VM."""
    store = ShardStore(str(tmp_path / "store"))

    def one(number: int) -> None:
        materialize(store, [documents], load_tokenizer(tokenizer.path), partition=f"batch-{number}")

    one(0)
    before = resident_mib()
    for number in range(1, 21):
        one(number)
    assert resident_mib() - before < 20


def test_an_empty_partition_writes_no_tokens(store: ShardStore, documents: pl.DataFrame, tokenizer: TrainedTokenizer):
    for frames in ([], [documents.clear()], [documents.clear(), documents.clear()]):
        manifest, shards = materialize(store, frames, tokenizer)
        assert manifest.files == [] and shards == []
        assert (manifest.stats["documents"], manifest.stats["tokens"]) == (0, 0)
    empty = TokenShard.open(b"", "uint16", pl.DataFrame(schema=TOKEN_INDEX_SCHEMA))
    assert empty.tokens.size == 0 and list(empty.spans()) == []


def test_a_ten_megabyte_document(store: ShardStore, documents: pl.DataFrame, tokenizer: TrainedTokenizer):
    paragraph = documents.get_column("text")[0][:3000]
    huge = (paragraph * (10_000_000 // len(paragraph) + 1))[:10_000_000]
    frame = pl.DataFrame({"doc_id": ["small-1", "huge", "small-2"], "text": ["first", huge, "last"]})
    manifest, [shard] = materialize(store, [frame], tokenizer)  # batch_chars 4M: the huge one alone
    assert_spans_tile(shard, tokenizer.eos_id)
    assert manifest.stats["tokens"] > 1_000_000
    spans = list(shard.spans())
    assert decode(tokenizer, spans[1][:-1]) == huge
    assert [decode(tokenizer, spans[0][:-1]), decode(tokenizer, spans[2][:-1])] == ["first", "last"]


def test_bad_documents_are_clear_errors(tokenizer: TrainedTokenizer):
    settings = TokenShardSettings()
    with pytest.raises(TokenShardError, match=r"lack column.*text"):
        list(encode_partition([pl.DataFrame({"doc_id": ["a"]})], tokenizer, settings))
    nulls = pl.DataFrame({"doc_id": ["a", "b"], "text": ["fine", None]})
    with pytest.raises(TokenShardError, match="1 documents have a null text"):
        list(encode_partition([nulls], tokenizer, settings))


def test_vocabulary_mismatch_is_a_clear_error(tokenizer: TrainedTokenizer):
    tokens = np.array([0, 5, 4095, 0], dtype="<u2")
    check_vocab(tokens, 4096, "uint16")
    check_vocab(np.zeros(0, dtype="<u2"), 4096)
    with pytest.raises(TokenShardError, match="token id 4095 is outside the tokenizer's vocabulary of 4000"):
        check_vocab(tokens, 4000)
    with pytest.raises(TokenShardError, match="written as uint32 but are read as uint16"):
        check_vocab(tokens, 4096, "uint32")
    with pytest.raises(TokenShardError, match="hold uint16 ids but a vocabulary of 70000 needs uint32"):
        check_vocab(tokens, 70_000, "uint16")


def test_reading_refuses_shards_that_do_not_fit(
    store: ShardStore, tmp_path: Path, documents: pl.DataFrame, tokenizer: TrainedTokenizer
):
    manifest, [shard] = materialize(store, [documents.slice(0, 20)], tokenizer)
    data = shard.tokens.tobytes()
    assert np.array_equal(TokenShard.open(data, "uint16").tokens, shard.tokens)
    with pytest.raises(TokenShardError, match="not a whole number of uint16 ids"):
        TokenShard.open(data[:-1], "uint16")
    assert shard.index is not None
    shifted = shard.index.with_columns(pl.col("offset") + 1)
    with pytest.raises(TokenShardError, match="token index does not match its shard"):
        TokenShard.open(data, "uint16", shifted)
    empty_file = tmp_path / "empty.bin"
    empty_file.write_bytes(b"")
    assert TokenShard.open(empty_file, "uint16").tokens.size == 0
    with pytest.raises(TokenShardError, match="spans need the shard's index"):
        list(TokenShard.open(data, "uint16").spans())

    [path] = store.shard_paths(manifest, TOKENS)
    os.truncate(path, len(data) - 2)
    with pytest.raises(TokenShardError, match="the manifest says"):
        list(read_token_shards(store, manifest))
    with pytest.raises(TokenShardError, match="record no token dtype"):
        list(read_token_shards(store, dataclasses.replace(manifest, stats={})))
