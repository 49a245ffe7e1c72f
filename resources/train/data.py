"""Training batches from memory-mapped token shards, mixed across sources by weight.

- a **token file** is a flat array of token ids (`uint16`/`uint32`, documents separated by EOS),
  memory-mapped, never read whole; its **train spans** are the `(offset, length)` ranges of its
  train-split documents (from the shard's index Parquet); without spans the whole file is train data;
- a **source** is token files plus a mixture weight; its spans, in file order, form one virtual token
  stream, and a window may cross from one span (or file) into the next;
- a **batch** is `micro_batch_size` windows of `seq_len + 1` tokens (inputs and shifted targets); each
  row picks a source with probability weight / sum(weights) and a uniformly random start in its
  stream, as nanoGPT's `get_batch` does.

Sampling is a pure function of `(seed, step, micro_step, rank)` (ranks draw different windows), so a
run resumed at step k draws exactly the batches an uninterrupted run draws from step k on, with
nothing else to save. Metadata prefixes (MeCo) are read as ordinary tokens, with loss on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

DTYPES: dict[str, type[np.unsignedinteger]] = {"uint16": np.uint16, "uint32": np.uint32}
_SCAN_CHUNK = 1 << 26  # tokens per chunk when scanning a file for its largest id (bounded memory)


class DataError(ValueError):
    """Training data that cannot be trained on: empty, out of the model's vocabulary, malformed."""


@dataclass(frozen=True)
class TokenFile:
    """One token shard. `data_version` (the shard's Dagster DataVersion) is recorded in every
    checkpoint's manifest, so an audit can name the exact bytes a model saw."""

    path: str
    dtype: str = "uint16"
    data_version: str = ""
    spans: np.ndarray | None = field(default=None, compare=False, repr=False)  # (n, 2) int64: offset, length

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise DataError(f"{self.path}: token dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @classmethod
    def from_index(
        cls,
        path: str | Path,
        index_path: str | Path,
        *,
        dtype: str,
        data_version: str = "",
        split: str = "train",
        drop_prefix: bool = False,
    ) -> TokenFile:
        """The documents of one split, from the shard's index Parquet (`offset`, `length`, `split`).

        Each span is extended over the gap to the next document (or the end of the file) when that
        gap is a single token, the EOS separator, whether or not the index counted it in `length`:
        windows that stitch two train documents around a held-out one keep a separator between them.

        `drop_prefix` starts each span after the document's metadata prefix (`prefix_length`, MeCo's
        "URL: ..." line): the spans of the cool-down phase, trained on plain text.
        """
        columns = ["offset", "length", "split", *(["prefix_length"] if drop_prefix else [])]
        table = pq.read_table(index_path, columns=columns)
        offsets = table.column("offset").to_numpy().astype(np.int64)
        lengths = table.column("length").to_numpy().astype(np.int64)
        splits = table.column("split").to_numpy(zero_copy_only=False)
        prefixes = table.column("prefix_length").to_numpy().astype(np.int64) if drop_prefix else 0 * offsets
        order = np.argsort(offsets, kind="stable")
        offsets, lengths, splits, prefixes = offsets[order], lengths[order], splits[order], prefixes[order]
        file_tokens = _token_count(Path(path), dtype)
        ends = offsets + lengths
        next_starts = np.append(offsets[1:], file_tokens)
        ends = np.where(next_starts - ends == 1, next_starts, ends)
        keep = splits == split
        starts = np.minimum(offsets + prefixes, ends)
        spans = np.stack([starts[keep], ends[keep] - starts[keep]], axis=1)
        return cls(str(path), dtype, data_version, spans)

    def open(self) -> np.ndarray:
        """The tokens, memory-mapped read-only (an empty file cannot be mapped: an empty array)."""
        tokens = _token_count(Path(self.path), self.dtype)
        if tokens == 0:
            return np.zeros(0, dtype=DTYPES[self.dtype])
        return np.memmap(self.path, dtype=DTYPES[self.dtype], mode="r", shape=(tokens,))

    def segments(self, file_tokens: int) -> np.ndarray:
        """Train token ranges as (start, end) rows, sorted, with adjacent or overlapping spans merged."""
        if self.spans is None:
            return np.array([[0, file_tokens]], dtype=np.int64) if file_tokens else np.zeros((0, 2), np.int64)
        spans = np.asarray(self.spans, dtype=np.int64).reshape(-1, 2)
        spans = spans[spans[:, 1] > 0]
        if len(spans) == 0:
            return np.zeros((0, 2), np.int64)
        starts, ends = spans[:, 0], spans[:, 0] + spans[:, 1]
        if starts.min() < 0 or ends.max() > file_tokens:
            raise DataError(f"{self.path}: a train span lies outside the file's {file_tokens} tokens")
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], np.maximum.accumulate(ends[order])
        # A span starting past every earlier end opens a new range; ends are running maxima, so a
        # range ends where the last of its spans does.
        new_run = np.append(True, starts[1:] > ends[:-1])
        return np.stack([starts[new_run], ends[np.append(new_run[1:], True)]], axis=1)

    def describe(self, train_tokens: int) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "data_version": self.data_version, "train_tokens": train_tokens}


@dataclass(frozen=True)
class TokenSource:
    """A named group of token files sampled with one mixture weight."""

    name: str
    files: Sequence[TokenFile]
    weight: float = 1.0

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TokenSource:
        """From the JSON of `scripts/train_ddp.py`'s spec (a file's `index` or `spans` selects its train part)."""
        files = []
        for f in spec["files"]:
            common = {"dtype": f.get("dtype", "uint16"), "data_version": f.get("data_version", "")}
            if f.get("index"):
                files.append(TokenFile.from_index(f["path"], f["index"], split=f.get("split", "train"), **common))
            else:
                spans = None if f.get("spans") is None else np.asarray(f["spans"], dtype=np.int64)
                files.append(TokenFile(f["path"], spans=spans, **common))
        return cls(spec["name"], files, float(spec.get("weight", 1.0)))


def with_replay(sources: Sequence[TokenSource], old: Sequence[TokenFile], fraction: float) -> list[TokenSource]:
    """Continual pre-training mix: the new sources keep their relative weights and get 1 - fraction
    of the rows, a source over the `old` shards gets `fraction` (a small replay rate stabilises CPT)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
    total = sum(s.weight for s in sources)
    if total <= 0:
        raise DataError("no new training data to mix replay into")
    mixed = [TokenSource(s.name, s.files, s.weight / total * (1.0 - fraction)) for s in sources]
    if fraction > 0:
        if not old:
            raise DataError("replay requested but no earlier token files given")
        mixed.append(TokenSource("replay", list(old), fraction))
    return mixed


class _Stream:
    """One source's train spans as a single virtual token stream."""

    def __init__(self, source: TokenSource) -> None:
        self.arrays: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        self.file_tokens: list[int] = []
        for i, f in enumerate(source.files):
            array = f.open()
            segments = f.segments(len(array))
            self.arrays.append(array)
            self.file_tokens.append(int((segments[:, 1] - segments[:, 0]).sum()))
            rows.append(np.column_stack([np.full(len(segments), i, np.int64), segments]))
        table = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
        self.file_of, self.start, self.end = table[:, 0], table[:, 1], table[:, 2]
        self.cum = np.concatenate([[0], np.cumsum(self.end - self.start)])
        self.tokens = int(self.cum[-1])

    def read(self, position: int, length: int, out: np.ndarray) -> None:
        """Copy `length` tokens starting at virtual `position` into `out` (usually one slice)."""
        i = int(np.searchsorted(self.cum, position, side="right")) - 1
        done = 0
        while done < length:
            offset = self.start[i] + (position + done - self.cum[i])
            take = min(length - done, int(self.end[i] - offset))
            out[done : done + take] = self.arrays[self.file_of[i]][offset : offset + take]
            done += take
            i += 1


class TrainData:
    """Deterministic batches over weighted token sources; see the module docstring for the model."""

    def __init__(
        self,
        sources: Sequence[TokenSource],
        seq_len: int,
        micro_batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if seq_len < 1 or micro_batch_size < 1:
            raise ValueError("seq_len and micro_batch_size must be positive")
        if any(s.weight < 0 for s in sources):
            raise DataError(f"negative mixture weight in {[(s.name, s.weight) for s in sources]}")
        self.sources = [s for s in sources if s.weight > 0]
        if not self.sources:
            raise DataError("no training tokens: no data source with a positive weight was given")
        self.seq_len, self.micro_batch_size, self.seed, self.rank = seq_len, micro_batch_size, seed, rank
        self.streams = [_Stream(s) for s in self.sources]
        window = seq_len + 1
        short = [
            f"{s.name} ({st.tokens} tokens)"
            for s, st in zip(self.sources, self.streams, strict=True)
            if st.tokens < window
        ]
        if short:
            raise DataError(
                f"no training tokens: source(s) {', '.join(short)} hold fewer train tokens than one window "
                f"of seq_len + 1 = {window}; check the train split and the token files"
            )
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.probs = weights / weights.sum()

    def validate(self, vocab_size: int) -> None:
        """Fail before training when a token id does not fit the model's vocabulary (a shard from
        another tokenizer would otherwise crash deep inside the embedding lookup, or train silently
        on the wrong ids)."""
        for source, stream in zip(self.sources, self.streams, strict=True):
            for f, array in zip(source.files, stream.arrays, strict=True):
                if np.iinfo(array.dtype).max < vocab_size:
                    continue  # every id this dtype can hold fits: no need to read the file
                top = max(
                    (int(array[i : i + _SCAN_CHUNK].max()) for i in range(0, len(array), _SCAN_CHUNK)), default=-1
                )
                if top >= vocab_size:
                    raise DataError(
                        f"vocabulary mismatch: {f.path} (source {source.name!r}) holds token id {top}, but the "
                        f"model's vocab_size is {vocab_size}; were these shards made with another tokenizer?"
                    )

    def batch(self, step: int, micro_step: int = 0) -> np.ndarray:
        """(micro_batch_size, seq_len + 1) int64 token windows for one micro-step on this rank."""
        rng = np.random.default_rng([self.seed, step, micro_step, self.rank])
        picks = rng.choice(len(self.streams), size=self.micro_batch_size, p=self.probs)
        window = self.seq_len + 1
        out = np.empty((self.micro_batch_size, window), dtype=np.int64)
        for row, k in enumerate(picks):
            stream = self.streams[k]
            stream.read(int(rng.integers(0, stream.tokens - window + 1)), window, out[row])
        return out

    def describe(self) -> list[dict[str, Any]]:
        """The mixture as recorded in a checkpoint manifest: every shard with its data version."""
        return [
            {
                "source": s.name,
                "weight": float(p),
                "files": [f.describe(n) for f, n in zip(s.files, st.file_tokens, strict=True)],
            }
            for s, st, p in zip(self.sources, self.streams, self.probs, strict=True)
        ]


def _token_count(path: Path, dtype: str) -> int:
    if not path.is_file():
        raise DataError(f"token file not found: {path}")
    size, itemsize = path.stat().st_size, np.dtype(DTYPES[dtype]).itemsize
    if size % itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} tokens (truncated or wrong dtype?)")
    return size // itemsize
