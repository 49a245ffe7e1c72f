"""A structural check of fastText model files, because fastText itself crashes (SIGFPE), loops
forever or silently builds a broken model on a truncated file instead of raising: the file is
walked the way fastText loads it, refusing to read past its end."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

LABEL_PREFIX = "__label__"
_MAGIC = 793712314
_SUPERVISED = 3  # fastText's model_name enum: cbow = 1, sg, sup
_HEADER = struct.Struct("<ii")  # magic, version
_ARGS = struct.Struct("<12id")  # dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, t
_DICTIONARY = struct.Struct("<iiiqq")  # size nwords nlabels ntokens pruneidx_size
_ENTRY_TAIL = 9  # after each NUL-terminated word: count (int64), type (int8; 1 = label)
_FLAG = struct.Struct("<?")
_DENSE = struct.Struct("<qq")  # rows, columns; then float32 data
_QUANT = struct.Struct("<?qqi")  # qnorm, rows, columns, codesize; then codes, a product quantizer
_QUANTIZER = struct.Struct("<iiii")  # dim nsubq dsub lastdsub; then dim * 256 float32 centroids


class _Cursor:
    """Reads a memory-mapped model file front to back, refusing to run past its end."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def take(self, layout: struct.Struct) -> tuple[Any, ...]:
        self.skip(layout.size)
        return layout.unpack_from(self.data, self.pos - layout.size)

    def skip(self, size: int) -> None:
        if size < 0 or self.pos + size > len(self.data):
            needed = self.pos + max(size, 1)
            raise ValueError(f"truncated or corrupt fastText file (needs {needed} bytes, has {len(self.data)})")
        self.pos += size

    def word(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ValueError("truncated fastText file (inside the dictionary)")
        word = self.data[self.pos : end]
        self.pos = end + 1
        return word


def check_fasttext_file(path: Path) -> list[str]:
    """Walk a fastText 0.9 model file (.bin, or .ftz quantized) the way fastText loads it and
    return its labels; raise ValueError unless every section is present and consistent and the
    file ends exactly where the last matrix does."""
    size = path.stat().st_size
    if size < _HEADER.size:
        raise ValueError(f"not a fastText model ({size} bytes)")
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data)
        magic, version = cursor.take(_HEADER)
        if magic != _MAGIC:
            raise ValueError("not a fastText model (wrong magic number)")
        if version not in (11, 12):
            raise ValueError(f"unsupported fastText file version {version}")
        dim, *_, model, bucket, _minn, _maxn, _rate, _t = cursor.take(_ARGS)
        if model != _SUPERVISED:
            raise ValueError("not a supervised (classifier) fastText model")
        if dim <= 0 or bucket < 0:
            raise ValueError(f"corrupt fastText header (dim {dim}, bucket {bucket})")
        entries, words, labels, _tokens, pruned = cursor.take(_DICTIONARY)
        if words < 0 or labels <= 0 or entries != words + labels:
            raise ValueError(f"corrupt fastText dictionary header ({entries} entries, {words} words, {labels} labels)")
        names = []
        for index in range(entries):
            name = cursor.word()
            cursor.skip(_ENTRY_TAIL)
            if index >= words:
                names.append(name.decode("utf-8", "replace"))
        cursor.skip(8 * max(pruned, 0))
        (quantized,) = cursor.take(_FLAG)
        _matrix(cursor, quantized, rows=None, columns=dim)
        (quantized_output,) = cursor.take(_FLAG)
        _matrix(cursor, quantized and quantized_output, rows=labels, columns=dim)
        if cursor.pos != size:
            raise ValueError(f"corrupt fastText file ({size - cursor.pos} unexpected bytes after the model)")
    return names


def _matrix(cursor: _Cursor, quantized: bool, rows: int | None, columns: int) -> None:
    if quantized:
        qnorm, m, n, codesize = cursor.take(_QUANT)
        cursor.skip(codesize)
        _quantizer(cursor)
        if qnorm:
            cursor.skip(m)
            _quantizer(cursor)
    else:
        m, n = cursor.take(_DENSE)
        cursor.skip(4 * m * n if m >= 0 and n >= 0 else -1)
    if n != columns or (rows is not None and m != rows):
        raise ValueError(f"corrupt fastText matrix ({m} x {n}, expected {rows or 'any'} x {columns})")


def _quantizer(cursor: _Cursor) -> None:
    dim, *_ = cursor.take(_QUANTIZER)
    cursor.skip(4 * 256 * dim if dim >= 0 else -1)
