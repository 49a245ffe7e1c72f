"""fastText model files read without fastText: a structural check, because fastText itself crashes
(SIGFPE), loops forever or silently builds a broken model on a truncated file instead of raising
(the file is walked the way fastText loads it, refusing to read past its end); and the same walk
keeping the dictionary and the matrices as numpy arrays, for `resources.filter.fasttext_predict`."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LABEL_PREFIX = "__label__"
_MAGIC = 793712314
_SUPERVISED = 3  # fastText's model_name enum: cbow = 1, sg, sup
_HEADER = struct.Struct("<ii")  # magic, version
_ARGS = struct.Struct("<12id")  # dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, t
_DICTIONARY = struct.Struct("<iiiqq")  # size nwords nlabels ntokens pruneidx_size
_ENTRY_TAIL = struct.Struct("<qb")  # after each NUL-terminated word: count, type (1 = label)
_FLAG = struct.Struct("<?")
_DENSE = struct.Struct("<qq")  # rows, columns; then float32 data
_QUANT = struct.Struct("<?qqi")  # qnorm, rows, columns, codesize; then codes, a product quantizer
_QUANTIZER = struct.Struct("<iiii")  # dim nsubq dsub lastdsub; then dim * 256 float32 centroids
_CENTROIDS = 256  # per subquantizer (fastText's ksub)
_HIERARCHICAL_SOFTMAX = 1  # fastText's loss_name enum


class _Cursor:
    """Reads a memory-mapped model file front to back, refusing to run past its end; `array`
    copies a section out only when the walk keeps the model (`keep`), else skips it."""

    def __init__(self, data: mmap.mmap, keep: bool) -> None:
        self.data = data
        self.pos = 0
        self.keep = keep

    def take(self, layout: struct.Struct) -> tuple[Any, ...]:
        self.skip(layout.size)
        return layout.unpack_from(self.data, self.pos - layout.size)

    def skip(self, size: int) -> None:
        if size < 0 or self.pos + size > len(self.data):
            needed = self.pos + max(size, 1)
            raise ValueError(f"truncated or corrupt fastText file (needs {needed} bytes, has {len(self.data)})")
        self.pos += size

    def array(self, dtype: type[np.generic], count: int, always: bool = False) -> np.ndarray | None:
        """`count` items of `dtype` copied out, or None (skipped) when the walk does not keep them."""
        size = np.dtype(dtype).itemsize * count if count >= 0 else -1
        self.skip(size)
        if not (self.keep or always):
            return None
        return np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos - size).copy()

    def word(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ValueError("truncated fastText file (inside the dictionary)")
        word = self.data[self.pos : end]
        self.pos = end + 1
        return word


@dataclass(frozen=True)
class FastTextArrays:
    """A supervised fastText model as prediction needs it (the matrices only when the walk keeps
    them). A quantized input matrix is expanded to the float32 rows fastText adds (each centroid
    times the row's norm, rounded to float32), so sums of rows come out bit for bit the same."""

    dim: int
    word_ngrams: int
    loss: int  # fastText's loss_name enum: hs = 1, ns, softmax, ova
    bucket: int
    minn: int
    maxn: int
    nwords: int
    entries: list[bytes]  # the words, then the labels (prefix included)
    counts: list[int]  # per entry
    pruned: np.ndarray | None  # (bucket id, row after the words) pairs; None: not pruned (every bucket kept)
    quantized_output: bool  # fastText's dot product with a quantized output row is not a float32 dot
    input: np.ndarray | None  # float32 (rows, dim), when kept
    output: np.ndarray | None  # float32 (labels, dim), when kept and not quantized

    @property
    def labels(self) -> list[str]:
        return [entry.decode("utf-8", "replace") for entry in self.entries[self.nwords :]]


def compiled_prediction_supported(model: FastTextArrays) -> bool:
    """Whether `resources.filter.fasttext_predict` reproduces the model: hierarchical softmax
    (lid.176's loss) and a dense output matrix."""
    return model.loss == _HIERARCHICAL_SOFTMAX and not model.quantized_output


def check_fasttext_file(path: Path) -> list[str]:
    """The labels of a fastText 0.9 model file (.bin, or .ftz quantized); see `read_fasttext_file`."""
    return read_fasttext_file(path).labels


def read_fasttext_file(path: Path, keep_matrices: bool = False) -> FastTextArrays:
    """Walk a fastText model file the way fastText loads it, raising ValueError unless every
    section is present and consistent and the file ends exactly where the last matrix does;
    the matrices are read only with `keep_matrices`."""
    size = path.stat().st_size
    if size < _HEADER.size:
        raise ValueError(f"not a fastText model ({size} bytes)")
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data, keep_matrices)
        magic, version = cursor.take(_HEADER)
        if magic != _MAGIC:
            raise ValueError("not a fastText model (wrong magic number)")
        if version not in (11, 12):
            raise ValueError(f"unsupported fastText file version {version}")
        dim, _, _, _, _, word_ngrams, loss, model, bucket, minn, maxn, _, _ = cursor.take(_ARGS)
        if model != _SUPERVISED:
            raise ValueError("not a supervised (classifier) fastText model")
        if dim <= 0 or bucket < 0:
            raise ValueError(f"corrupt fastText header (dim {dim}, bucket {bucket})")
        n_entries, words, labels, _tokens, pruned = cursor.take(_DICTIONARY)
        if words < 0 or labels <= 0 or n_entries != words + labels:
            raise ValueError(
                f"corrupt fastText dictionary header ({n_entries} entries, {words} words, {labels} labels)"
            )
        entries, counts = [], []
        for _ in range(n_entries):
            entries.append(cursor.word())
            counts.append(cursor.take(_ENTRY_TAIL)[0])
        pairs = cursor.array(np.int32, 2 * max(pruned, 0), always=True)
        (quantized,) = cursor.take(_FLAG)
        input_rows = _matrix(cursor, quantized, rows=None, columns=dim)
        (quantized_output,) = cursor.take(_FLAG)
        output_rows = _matrix(cursor, quantized and quantized_output, rows=labels, columns=dim)
        if cursor.pos != size:
            raise ValueError(f"corrupt fastText file ({size - cursor.pos} unexpected bytes after the model)")
    return FastTextArrays(
        dim=dim,
        word_ngrams=word_ngrams,
        loss=loss,
        bucket=bucket,
        minn=minn,
        maxn=maxn,
        nwords=words,
        entries=entries,
        counts=counts,
        pruned=None if pruned < 0 else pairs.reshape(-1, 2),
        quantized_output=quantized and quantized_output,
        input=input_rows,
        output=None if quantized and quantized_output else output_rows,
    )


def _matrix(cursor: _Cursor, quantized: bool, rows: int | None, columns: int) -> np.ndarray | None:
    """A matrix section: float32 rows when the cursor keeps them, else None."""
    if quantized:
        qnorm, m, n, codesize = cursor.take(_QUANT)
        codes = cursor.array(np.uint8, codesize)
        quantizer = _quantizer(cursor)
        norms = None
        if qnorm:
            norm_codes = cursor.array(np.uint8, m)
            norm_quantizer = _quantizer(cursor)
            if norm_quantizer is not None:
                norms = norm_quantizer[-1][norm_codes]  # one-dimensional: a centroid is a norm
    else:
        m, n = cursor.take(_DENSE)
        dense = cursor.array(np.float32, m * n if m >= 0 and n >= 0 else -1)
    if n != columns or (rows is not None and m != rows):
        raise ValueError(f"corrupt fastText matrix ({m} x {n}, expected {rows or 'any'} x {columns})")
    if not cursor.keep:
        return None
    if not quantized:
        return dense.reshape(m, n)
    if codes.size != m * quantizer[1]:
        raise ValueError(f"corrupt fastText matrix ({codes.size} codes for {m} rows)")
    return _expand(codes.reshape(m, quantizer[1]), quantizer, norms)


def _quantizer(cursor: _Cursor) -> tuple[int, int, int, int, np.ndarray] | None:
    dim, subquantizers, sub_dim, last_sub_dim = cursor.take(_QUANTIZER)
    centroids = cursor.array(np.float32, _CENTROIDS * dim if dim >= 0 else -1)
    return None if centroids is None else (dim, subquantizers, sub_dim, last_sub_dim, centroids)


def _expand(
    codes: np.ndarray, quantizer: tuple[int, int, int, int, np.ndarray], norms: np.ndarray | None
) -> np.ndarray:
    """Product-quantized rows as fastText's `addcode` writes them: subquantizer k fills columns
    k * sub_dim onward with its centroid (the last one may be narrower), times the row's norm."""
    dim, subquantizers, sub_dim, last_sub_dim, centroids = quantizer
    rows = np.zeros((codes.shape[0], dim), dtype=np.float32)
    for k in range(subquantizers):
        width = last_sub_dim if k == subquantizers - 1 else sub_dim
        table = centroids[k * _CENTROIDS * sub_dim : k * _CENTROIDS * sub_dim + _CENTROIDS * width]
        block = table.reshape(_CENTROIDS, width)[codes[:, k]]
        rows[:, k * sub_dim : k * sub_dim + width] = block if norms is None else block * norms[:, None]
    return rows
