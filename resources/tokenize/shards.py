"""Documents in, token shards out: the engine behind a tokenized per-crawl-batch asset.

One input shard of documents becomes one token shard, so memory is bounded by one input shard
(plus its tokens), and resume and staleness work per shard like every other stage:

    tokens-00003-<sha16>.bin               table "tokens": the flat token array, raw little-endian
                                           uint16 (vocabulary <= 65536) or uint32; ShardInfo.rows
                                           is its token count
    token_index-00003-<sha16>.parquet      table "token_index": one row per document, in order

The number (00003) is the input shard's position, shared by a tokens file and its index. Empty
input shards write nothing. Index columns:

    doc_id         the document (join to the document tables and the lineage catalog)
    offset         first token of the document's span in this shard's token array
    length         tokens of the span without its EOS: prefix + text; tokens[offset + length] is EOS
    prefix_length  metadata tokens at the start of the span (MeCo, see below); 0 without
    split          "train" or "validation"
    text_bytes     UTF-8 bytes of the text, for bits-per-byte

Spans are back to back: the next document starts at offset + length + 1, so every token belongs
to exactly one document, and `decode(tokens[offset + prefix_length : offset + length]) == text`.
Text is encoded without matching special tokens, so a page that contains the string
"<|endoftext|>" gets ordinary tokens for it: only the appended EOS is an EOS id.

Split: `validation` when blake2b(key) mod 10,000 < validation_fraction * 10,000, where the key
is `source_doc_id` if the row has one (a synthetic rewrite lands in its source's split, so a
paraphrase of a held-out page is never trained on), else `doc_id`. It depends on nothing else:
the same document is held out in every run, shard layout and partition.

Metadata conditioning (MeCo, `metadata_prefix: url|domain`): "URL: <url or domain>\\n\\n" is
encoded on its own and put before the text's tokens, its token count in `prefix_length`
(documents without a URL/domain get none). The loader's contract:
- train split, until the cool-down: feed whole spans, EOS included, and compute no loss on the
  prefix tokens (labels -100 for tokens[offset : offset + prefix_length]), as MeCo does;
- the cool-down (MeCo: the last 10% of training tokens): drop the prefixes, i.e. feed
  tokens[offset + prefix_length : offset + length + 1];
- validation: always without prefixes, so losses compare across runs with and without MeCo.
`TokenShard.spans` yields spans either way.

Speed: HF `tokenizers` encodes a batch on all cores (Rayon) with the GIL released. Batches of
about `batch_chars` characters bound the memory of its per-token Encoding objects; the next
batch is encoded in a helper thread while this one's ids are copied into numpy, so that copy
hides behind the encoding instead of adding to it. Rayon's pool size follows
`RAYON_NUM_THREADS` (default: all cores). `tokenizers` runs on one core when
TOKENIZERS_PARALLELISM=false, or in a process forked after it was used: run stages in spawned
processes (Dagster's multiprocess executor default).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Encoding, Tokenizer

from resources.common.executor import Recipe, ShardMapper
from resources.common.schemas import TOKEN_INDEX, TOKEN_INDEX_SCHEMA, TOKENS, TRAIN, VALIDATION
from resources.common.storage import ShardInfo, ShardStore, sha256_bytes
from resources.tokenize.tokenizer import TrainedTokenizer

SPLIT_BUCKETS = 10_000
PREFIX_TEMPLATE = "URL: {}\n\n"  # MeCo's format, with the full URL or just the domain


class TokenShardError(ValueError):
    """Documents cannot be tokenized, or token shards do not fit their tokenizer or manifest."""


class TokenShardSettings(BaseModel):
    """How documents become token shards."""

    model_config = ConfigDict(extra="forbid")

    validation_fraction: float = Field(default=0.05, ge=0, le=1, description="documents held out, by hash")
    metadata_prefix: Literal["none", "url", "domain"] = Field(
        default="none", description="MeCo: 'URL: <url or domain>\\n\\n' before each document"
    )
    batch_chars: int = Field(
        default=4_000_000, ge=1, description="characters per encode call: memory only (~100 bytes a token in flight)"
    )

    def output_shaping(self) -> dict[str, object]:
        """The settings whose change alters the shards written (not how fast or in what memory)."""
        return self.model_dump(exclude={"batch_chars"})

    @property
    def required_columns(self) -> list[str]:
        """doc_id and text, and the column the metadata prefix is made of."""
        return ["doc_id", "text"] + ([] if self.metadata_prefix == "none" else [self.metadata_prefix])

    def input_columns(self, available: Iterable[str]) -> list[str]:
        """The document columns to read: the required ones, and source_doc_id where the
        documents have one (synthetic rows: it decides their split)."""
        return self.required_columns + [column for column in ("source_doc_id",) if column in set(available)]


def shard_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 while every id fits (ids < 65536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def split_of(key: str, validation_fraction: float) -> str:
    """'validation' for about `validation_fraction` of keys, fixed by the key alone."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % SPLIT_BUCKETS
    return VALIDATION if bucket < round(validation_fraction * SPLIT_BUCKETS) else TRAIN


@dataclass(frozen=True)
class TokenChunk:
    """The tokens of one input shard and their index (TOKEN_INDEX_SCHEMA)."""

    shard: int  # the input shard's position in its partition
    tokens: np.ndarray
    index: pl.DataFrame

    @property
    def documents(self) -> int:
        return self.index.height


@functools.lru_cache(maxsize=4)
def _encoding_copy(spec: str) -> Tokenizer:
    """A private copy of a tokenizer for encoding: the caller's keeps its own truncation, padding
    and special-token matching, which would otherwise cut documents or turn text into EOS ids.
    One per tokenizer and process: tokenizers 0.23 keeps the memory of a BPE word cache after
    the tokenizer is dropped (~3 MB per tokenizer that encoded real text), so a new copy per
    partition grew a process that materializes many partitions by that much each time."""
    copy = Tokenizer.from_str(spec)
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = True
    return copy


class TokenEncoder:
    """Encodes document frames with one tokenizer into TokenChunks."""

    def __init__(self, tokenizer: TrainedTokenizer, settings: TokenShardSettings) -> None:
        self.settings = settings
        self.dtype = shard_dtype(tokenizer.vocab_size)
        self.eos_id = tokenizer.eos_id
        self._tokenizer = _encoding_copy(tokenizer.tokenizer.to_str())

    def encode_frames(self, frames: Iterable[pl.DataFrame], first: int = 0) -> Iterator[TokenChunk]:
        """One chunk per frame, in order, numbered by position from `first`; encoding runs one
        batch ahead."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool:
            for shard, frame in enumerate(frames, first):
                yield self._encode_frame(shard, frame, pool)

    def _encode_frame(self, shard: int, frame: pl.DataFrame, pool: ThreadPoolExecutor) -> TokenChunk:
        self._check(frame)
        texts = frame.get_column("text").to_list()
        prefixes = self._prefixes(frame)
        batches = iter(_batches(frame.get_column("text").str.len_chars().to_list(), self.settings.batch_chars))
        pieces: list[np.ndarray] = []
        lengths: list[int] = []
        prefix_lengths: list[int] = []
        batch = next(batches, None)
        pending = None if batch is None else self._submit(pool, texts, prefixes, batch)
        while pending is not None:
            encodings = pending.result()
            batch = next(batches, None)
            pending = None if batch is None else self._submit(pool, texts, prefixes, batch)
            pieces.append(self._flatten(encodings, lengths, prefix_lengths))
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)
        return TokenChunk(shard, tokens, self._index(frame, lengths, prefix_lengths))

    def _check(self, frame: pl.DataFrame) -> None:
        missing = [c for c in self.settings.required_columns if c not in frame.columns]
        if missing:
            raise TokenShardError(f"documents lack column(s) {missing} (have {frame.columns})")
        for column in ("doc_id", "text"):
            nulls = frame.get_column(column).null_count()
            if nulls:
                raise TokenShardError(f"{nulls} documents have a null {column}")

    def _prefixes(self, frame: pl.DataFrame) -> list[str] | None:
        if self.settings.metadata_prefix == "none":
            return None
        values = frame.get_column(self.settings.metadata_prefix).to_list()
        return [PREFIX_TEMPLATE.format(value) if value else "" for value in values]

    def _submit(
        self, pool: ThreadPoolExecutor, texts: list[str], prefixes: list[str] | None, batch: tuple[int, int]
    ) -> Future[list[Encoding]]:
        """Encode a batch's texts, then their prefixes, in one call (one Rayon fan-out, one tail);
        without character offsets, which nothing here needs."""
        start, stop = batch
        inputs = texts[start:stop] if prefixes is None else texts[start:stop] + prefixes[start:stop]
        return pool.submit(self._tokenizer.encode_batch_fast, inputs, add_special_tokens=False)

    def _flatten(self, encodings: list[Encoding], lengths: list[int], prefix_lengths: list[int]) -> np.ndarray:
        """[prefix] text EOS for each document of a batch, as one array; appends to the lengths.
        Each document's ids become a Python list only while numpy copies them (lazily, through
        the generators): a batch's worth of such lists alive at once costs half again as much."""
        eos = [self.eos_id]
        if self.settings.metadata_prefix == "none":
            texts = [len(encoding) for encoding in encodings]
            prefixes = [0] * len(texts)
            groups: Iterator[tuple[list[int], ...]] = ((encoding.ids, eos) for encoding in encodings)
        else:
            documents = len(encodings) // 2
            texts = [len(encoding) for encoding in encodings[:documents]]
            prefixes = [len(encoding) for encoding in encodings[documents:]]
            pairs = zip(encodings[documents:], encodings[:documents], strict=True)
            groups = ((prefix.ids, text.ids, eos) for prefix, text in pairs)
        spans = [prefix + text for prefix, text in zip(prefixes, texts, strict=True)]
        lengths += spans
        prefix_lengths += prefixes
        ids = itertools.chain.from_iterable(itertools.chain.from_iterable(groups))
        return np.fromiter(ids, dtype=self.dtype, count=sum(spans) + len(spans))

    def _index(self, frame: pl.DataFrame, lengths: list[int], prefix_lengths: list[int]) -> pl.DataFrame:
        span = np.asarray(lengths, dtype=np.int64)
        offsets = np.cumsum(span + 1) - (span + 1)
        keys = frame.get_column("doc_id")
        if "source_doc_id" in frame.columns:
            keys = frame.get_column("source_doc_id").fill_null(keys)
        fraction = self.settings.validation_fraction
        return pl.DataFrame(
            {
                "doc_id": frame.get_column("doc_id"),
                "offset": offsets,
                "length": span,
                "prefix_length": np.asarray(prefix_lengths, dtype=np.int64),
                "split": [split_of(key, fraction) for key in keys.to_list()],
                "text_bytes": frame.get_column("text").str.len_bytes(),
            },
            schema=TOKEN_INDEX_SCHEMA,
        )


def _batches(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of about `budget` characters (a longer text is its own)."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for position, length in enumerate(lengths):
        if size and size + length > budget:
            ranges.append((start, position))
            start, size = position, 0
        size += length
    if start < len(lengths):
        ranges.append((start, len(lengths)))
    return ranges


def encode_partition(
    frames: Iterable[pl.DataFrame], tokenizer: TrainedTokenizer, settings: TokenShardSettings
) -> Iterator[TokenChunk]:
    """One TokenChunk per document frame (columns: `settings.input_columns`), in order."""
    return TokenEncoder(tokenizer, settings).encode_frames(frames)


@dataclass
class TokenShardsResult:
    """What `tokenize_partition` wrote: the files for the manifest and the numbers for its stats.

    `stats` (for Manifest.stats, where readers find the dtype): documents, tokens (all of them:
    prefixes and EOS included), prefix_tokens, validation_documents, validation_tokens (their
    whole spans), dtype, vocab_size, eos_id, tokenizer_version, validation_fraction, metadata_prefix.
    """

    files: list[ShardInfo]
    stats: dict[str, Any]
    seconds: float

    @property
    def tokens(self) -> int:
        return int(self.stats["tokens"])

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


_COUNTS = ("documents", "tokens", "prefix_tokens", "validation_documents", "validation_tokens")


def _write_chunk(
    store: ShardStore, asset: str, partition: str | None, chunk: TokenChunk
) -> tuple[list[ShardInfo], Counter[str]]:
    """A chunk's token file and index (nothing for an empty input shard), and its counts."""
    if not chunk.documents:
        return [], Counter()
    data = chunk.tokens.tobytes()
    digest = sha256_bytes(data)
    name = f"{TOKENS}-{chunk.shard:05d}-{digest[:16]}.bin"
    store.write_bytes(posixpath.join(store.partition_dir(asset, partition), name), data)
    files = [
        ShardInfo(path=name, rows=chunk.tokens.size, bytes=len(data), sha256=digest, table=TOKENS),
        store.write_parquet_shard(asset, partition, chunk.shard, chunk.index, TOKEN_INDEX),
    ]
    validation = chunk.index.filter(pl.col("split") == VALIDATION)
    counts = Counter(
        documents=chunk.documents,
        tokens=chunk.tokens.size,
        prefix_tokens=int(chunk.index.get_column("prefix_length").sum()),
        validation_documents=validation.height,
        validation_tokens=int((validation.get_column("length") + 1).sum()),
    )
    return files, counts


def tokenize_partition(
    store: ShardStore,
    asset: str,
    partition: str | None,
    frames: Iterable[pl.DataFrame],
    tokenizer: TrainedTokenizer,
    settings: TokenShardSettings,
) -> TokenShardsResult:
    """Encode a partition's document frames and write its token shards (not the manifest: the
    caller commits `Manifest(files=result.files, stats=result.stats, ...)`)."""
    started = time.perf_counter()
    written = (_write_chunk(store, asset, partition, chunk) for chunk in encode_partition(frames, tokenizer, settings))
    return _result(written, tokenizer, settings, started)


def token_encoder(store: ShardStore, tokenizer_asset: str, settings: TokenShardSettings) -> TokenEncoder:
    """An encoder with the tokenizer published by `tokenizer_asset` (fetched from the store, so
    a Ray worker on another machine finds it); a recipe for `tokenize_partition_on`."""
    from resources.common.model_store import fetch_model
    from resources.tokenize.tokenizer import load_tokenizer

    directory, _ = fetch_model(store, tokenizer_asset)
    return TokenEncoder(load_tokenizer(directory), settings)


def _tokenize_task(
    job: tuple[int, str], store: ShardStore, target: tuple[str, str | None, list[str]], encoder: Recipe
) -> tuple[list[ShardInfo], Counter[str]]:
    """One input shard on a worker: read, encode (shard number = its position), write."""
    (index, path), (asset, partition, columns) = job, target
    frame = store.read_shard(path, columns)
    return _write_chunk(store, asset, partition, next(encoder.build().encode_frames([frame], first=index)))


def tokenize_partition_on(
    mapper: ShardMapper,
    store: ShardStore,
    asset: str,
    partition: str | None,
    shard_paths: list[str],
    columns: list[str],
    encoder: Callable[[], TokenEncoder],
    tokenizer: TrainedTokenizer,
    settings: TokenShardSettings,
) -> TokenShardsResult:
    """`tokenize_partition` with every input shard a task of `mapper` (Ray): the same files.
    `encoder` is a picklable factory (functools.partial of `token_encoder`)."""
    started = time.perf_counter()
    jobs = list(enumerate(shard_paths))
    written = mapper.map(_tokenize_task, jobs, store, (asset, partition, columns), Recipe.of(encoder))
    return _result(written, tokenizer, settings, started)


def _result(
    written: Iterable[tuple[list[ShardInfo], Counter[str]]],
    tokenizer: TrainedTokenizer,
    settings: TokenShardSettings,
    started: float,
) -> TokenShardsResult:
    files: list[ShardInfo] = []
    counts = Counter(dict.fromkeys(_COUNTS, 0))
    for shard_files, shard_counts in written:
        files += shard_files
        counts.update(shard_counts)
    stats = {
        **{key: counts[key] for key in _COUNTS},
        "dtype": shard_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizer_version": tokenizer.version,
        **settings.output_shaping(),
    }
    return TokenShardsResult(files, stats, time.perf_counter() - started)
