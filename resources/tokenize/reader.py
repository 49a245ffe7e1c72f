"""Reading token shards back: memory-mapped arrays with their index, checked against their manifest
and tokenizer (training, evaluation)."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from fsspec.implementations.local import LocalFileSystem

from resources.common.schemas import TOKEN_INDEX, TOKENS
from resources.common.storage import Manifest, ShardStore
from resources.tokenize.shards import TokenShardError, shard_dtype

_SHARD_NUMBER = re.compile(r"^[a-z_]+-(\d+)-")


@dataclass(frozen=True)
class TokenShard:
    """A token array (memory-mapped when local) and, when given, its index."""

    tokens: np.ndarray
    index: pl.DataFrame | None = None

    @classmethod
    def open(
        cls, source: str | os.PathLike[str] | bytes, dtype: str | np.dtype, index: pl.DataFrame | None = None
    ) -> TokenShard:
        """A local file (memory-mapped, nothing read up front) or the bytes of one."""
        dtype = np.dtype(dtype).newbyteorder("<")
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if size % dtype.itemsize:
            raise TokenShardError(f"token shard of {size} bytes is not a whole number of {dtype.name} ids: truncated?")
        if isinstance(source, bytes):
            tokens = np.frombuffer(source, dtype=dtype)
        elif size == 0:  # numpy cannot map an empty file
            tokens = np.zeros(0, dtype=dtype)
        else:
            tokens = np.memmap(source, dtype=dtype, mode="r")
        if index is not None:
            _check_index(tokens, index)
        return cls(tokens, index)

    def spans(self, split: str | None = None, *, metadata: bool = True) -> Iterator[np.ndarray]:
        """Each document's tokens with its EOS, in order; only `split`'s documents when given;
        without the MeCo prefix when `metadata` is False (the cool-down and validation)."""
        if self.index is None:
            raise TokenShardError("spans need the shard's index")
        rows = self.index if split is None else self.index.filter(pl.col("split") == split)
        for offset, length, prefix in rows.select("offset", "length", "prefix_length").iter_rows():
            yield self.tokens[offset + (0 if metadata else prefix) : offset + length + 1]


def _check_index(tokens: np.ndarray, index: pl.DataFrame) -> None:
    """The spans must tile the array exactly."""
    span = index.get_column("length") + 1
    expected = span.cum_sum() - span
    if not (index.get_column("offset") == expected).all() or int(span.sum() or 0) != tokens.size:
        raise TokenShardError(f"token index does not match its shard ({tokens.size} tokens, {index.height} documents)")


def read_token_shards(store: ShardStore, manifest: Manifest) -> Iterator[TokenShard]:
    """A partition's token shards with their indexes, in shard order: memory-mapped from local
    storage, read whole from an object store. Checks each file's size against the manifest."""
    dtype = manifest.stats.get("dtype")
    if dtype is None:
        raise TokenShardError(f"{manifest.asset}[{manifest.partition}]: manifest stats record no token dtype")
    directory = store.partition_dir(manifest.asset, manifest.partition)
    indexes = {_shard_number(f.path): f for f in manifest.files if f.table == TOKEN_INDEX}
    for info in (f for f in manifest.files if f.table == TOKENS):
        index_info = indexes.get(_shard_number(info.path))
        if index_info is None:
            raise TokenShardError(f"{manifest.asset}[{manifest.partition}]: {info.path} has no token_index file")
        path = posixpath.join(directory, info.path)
        source: str | bytes = path if isinstance(store.fs, LocalFileSystem) else store.read_bytes(path)
        size = len(source) if isinstance(source, bytes) else store.fs.size(path)
        if size != info.bytes:
            raise TokenShardError(f"{path}: {size} bytes, the manifest says {info.bytes}")
        index = store.read_shard(posixpath.join(directory, index_info.path))
        yield TokenShard.open(source, dtype, index)


def _shard_number(name: str) -> int:
    match = _SHARD_NUMBER.match(name)
    if match is None:
        raise TokenShardError(f"not a token shard file name: {name}")
    return int(match.group(1))


def check_vocab(tokens: np.ndarray, vocab_size: int, recorded_dtype: str | None = None) -> None:
    """Raise TokenShardError when shards cannot have come from a tokenizer of `vocab_size`:
    an id at or above it, or a dtype other than the one recorded when they were written
    (`recorded_dtype`, from the manifest stats) or than this vocabulary needs."""
    expected = shard_dtype(vocab_size)
    if recorded_dtype is not None:
        if np.dtype(recorded_dtype).name != tokens.dtype.name:
            raise TokenShardError(f"token shards were written as {recorded_dtype} but are read as {tokens.dtype.name}")
        if np.dtype(recorded_dtype).itemsize != expected.itemsize:
            raise TokenShardError(
                f"token shards hold {recorded_dtype} ids but a vocabulary of {vocab_size} needs {expected.name}: "
                "they were written with another tokenizer; re-tokenize"
            )
    if tokens.size:
        highest = int(tokens.max())
        if highest >= vocab_size:
            raise TokenShardError(
                f"token id {highest} is outside the tokenizer's vocabulary of {vocab_size}: "
                "the shards were written with another tokenizer; re-tokenize"
            )
