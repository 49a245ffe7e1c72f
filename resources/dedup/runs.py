"""Sorted runs: the unit of the persisted dedup index, looked up by band key and doc_id.

A run holds the kept documents of a range of crawl batches in their canonical order (registration
order of the batches, then each batch's own order), and two sorted tables pointing into them:

- the **band table**: every LSH band key of every document with words, sorted by (key, document),
  so the members of a bucket come out first-seen first;
- the **id table**: a 64-bit hash of every `doc_id`, sorted the same way, for exact matches (the
  doc_id itself is compared before a match counts).

Why this shape: a batch of n documents probes n x bands keys, so a lookup must cost per probe, not
per indexed document. Each table has a fence (every 512th key, one 4 KB page of keys) held in
memory; a probe finds its page through the fence and bisects inside it, so it touches one or two
pages of a memory-mapped file. Probes run in sorted chunks and the pages they touched are handed
back to the kernel after each chunk (`madvise(DONTNEED)`), so the resident memory of a lookup is
bounded by the chunk, not by the run, however large the run grows. Merging runs streams key
ranges (keys are uniform hashes, so equal slices of the key space hold about equal numbers of
entries) and writes the output sequentially: memory is bounded by `piece_entries`.

Files: one `.npy` per column (`numpy.load` opens any of them) and `run.json`, written last: a run
directory without it is incomplete and is never read.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.lib.format as npy
import xxhash

RUN_FILE = "run.json"
FENCE_STRIDE = 512  # keys per fence entry: one 4 KB page of uint64
PROBE_CHUNK = 4096  # probes between two releases of the pages they touched
_MAPPED = ("doc_ids", "signatures", "band_keys", "band_docs", "id_keys", "id_docs")  # one .npy each
_FENCES = ("band_fence", "id_fence")  # small: read whole


def id_keys(doc_ids: np.ndarray) -> np.ndarray:
    """The id table's key of each doc_id (bytes): xxh3, a specified format, so keys persisted today
    match probes computed by any later release."""
    return np.fromiter((xxhash.xxh3_64_intdigest(d) for d in doc_ids.tolist()), np.uint64, len(doc_ids))


def as_doc_id_bytes(doc_ids: Sequence[str]) -> np.ndarray:
    return np.array([d.encode() for d in doc_ids], dtype=np.bytes_) if len(doc_ids) else np.zeros(0, "S1")


class _Mapped:
    """A read-only memory map of one `.npy` file whose touched pages can be handed back."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            self._map = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size > offset else None
        count = int(np.prod(shape))
        if self._map is None:
            self.array = np.zeros(shape, dtype)
        else:
            self.array = np.frombuffer(self._map, dtype, count, offset).reshape(shape)

    def release(self) -> None:
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Unmap now, unless a view of the array is still held somewhere: then when it is collected."""
        if self._map is not None:
            self.array = np.zeros(0, self.array.dtype)
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None


class _NpyWriter:
    """Appends rows to a `.npy` file whose final shape is known up front (streamed, never in memory)."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape, self.rows = path, np.dtype(dtype), shape, 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        npy.write_array_header_2_0(
            self._file, {"descr": npy.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        )

    def write(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self._file.close()
        if self.rows != self.shape[0]:
            raise AssertionError(f"{self.path}: wrote {self.rows} rows of {self.shape[0]}")


@dataclass
class SortedRun:
    """Kept documents (canonical order) with their band and id tables; see the module docstring."""

    doc_ids: np.ndarray  # (n,) bytes
    signatures: np.ndarray  # (n, num_perm) uint32; zeros for documents without words
    band_keys: np.ndarray  # (m,) uint64, ascending; a bucket's members by ascending document
    band_docs: np.ndarray  # (m,) uint32
    id_keys: np.ndarray  # (n,) uint64, ascending
    id_docs: np.ndarray  # (n,) uint32
    band_fence: np.ndarray | None = None  # every FENCE_STRIDE-th band key, in memory
    id_fence: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _maps: list[_Mapped] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.band_fence is None:
            self.band_fence = np.array(self.band_keys[::FENCE_STRIDE])
        if self.id_fence is None:
            self.id_fence = np.array(self.id_keys[::FENCE_STRIDE])

    @property
    def documents(self) -> int:
        return len(self.doc_ids)

    # -- building --------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        doc_ids: np.ndarray,
        signatures: np.ndarray,
        band_keys: np.ndarray,
        has_shingles: np.ndarray,
        meta: dict[str, Any] | None = None,
    ) -> SortedRun:
        """A run in memory from documents in canonical order (`band_keys`: documents x bands)."""
        n = len(doc_ids)
        if n >= 1 << 32:
            raise ValueError(f"a run holds at most 2**32 - 1 documents, not {n}")
        rows = np.flatnonzero(has_shingles).astype(np.uint32)
        keys = band_keys[rows].ravel()
        docs = np.repeat(rows, band_keys.shape[1])
        order = np.lexsort((docs, keys))
        ids = id_keys(doc_ids)
        id_order = np.lexsort((np.arange(n, dtype=np.uint32), ids))
        return cls(
            doc_ids,
            np.where(has_shingles[:, None], signatures, 0).astype(np.uint32),
            keys[order],
            docs[order],
            ids[id_order],
            id_order.astype(np.uint32),
            meta=meta or {},
        )

    def write(self, directory: Path) -> None:
        """Column files, then `run.json` (the commit point)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in (*_MAPPED, *_FENCES):
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)
        _write_meta(directory, self.meta, self.documents, len(self.band_keys))

    @classmethod
    def open(cls, directory: Path) -> SortedRun:
        """Memory-mapped: opening reads the fences only; lookups touch the pages they need."""
        meta = json.loads((directory / RUN_FILE).read_text())
        maps = {name: _Mapped(directory / f"{name}.npy") for name in _MAPPED}
        fences = {name: np.load(directory / f"{name}.npy") for name in _FENCES}
        return cls(**{name: m.array for name, m in maps.items()}, **fences, meta=meta, _maps=list(maps.values()))

    def __enter__(self) -> SortedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._maps:
            for name in _MAPPED:
                setattr(self, name, getattr(self, name)[:0].copy())
            for mapped in self._maps:
                mapped.close()
            self._maps = []

    def release(self) -> None:
        """Hand the pages lookups touched back to the kernel (they stay in the page cache)."""
        for mapped in self._maps:
            mapped.release()

    # -- lookups ---------------------------------------------------------------------------
    def contains(self, doc_ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Which probe doc_ids (bytes, with their `id_keys`) this run holds."""
        found = np.zeros(len(doc_ids), bool)
        for chunk in _chunks(np.argsort(keys, kind="stable")):
            lo, hi = self._range(self.id_keys, self.id_fence, keys[chunk])
            count = hi - lo
            probe = np.repeat(chunk, count)
            position = _expand(lo, count)
            same = self.doc_ids[self.id_docs[position]] == doc_ids[probe]
            found[probe[same]] = True
            self.release()
        return found

    def bucket_members(self, probe_keys: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (probe index, document) for every probe key: the first `cap` documents of the
        bucket, first seen first; sorted by probe index, then document."""
        probes, documents = [], []
        for chunk in _chunks(np.argsort(probe_keys, kind="stable")):
            lo, hi = self._range(self.band_keys, self.band_fence, probe_keys[chunk])
            count = np.minimum(hi - lo, cap)
            probes.append(np.repeat(chunk, count))
            documents.append(self.band_docs[_expand(lo, count)].astype(np.int64))
            self.release()
        probe, document = _concat(probes), _concat(documents)
        order = np.lexsort((document, probe))
        return probe[order], document[order]

    def gather(self, documents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """doc_ids and signatures of some documents (copied out of the map)."""
        order = np.argsort(documents, kind="stable")
        doc_ids = np.empty(len(documents), self.doc_ids.dtype)
        signatures = np.empty((len(documents), self.signatures.shape[1]), np.uint32)
        doc_ids[order] = self.doc_ids[documents[order]]
        signatures[order] = self.signatures[documents[order]]
        self.release()
        return doc_ids, signatures

    @staticmethod
    def _range(keys: np.ndarray, fence: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of each probe key in `keys`, through the fence: one or two pages per probe."""
        return _bisect(keys, fence, probes, right=False), _bisect(keys, fence, probes, right=True)


def merge_runs(runs: Sequence[SortedRun], directory: Path, meta: dict[str, Any], piece_entries: int) -> None:
    """Write the runs, in the given (canonical) order, as one run: documents concatenated, band and
    id tables merged key range by key range (`piece_entries` entries at a time)."""
    directory.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0, *(r.documents for r in runs)])
    total = int(offsets[-1])
    if total >= 1 << 32:
        raise ValueError(f"merged run would hold {total} documents (at most 2**32 - 1): lower index_max_level")
    width = max([r.doc_ids.dtype.itemsize for r in runs] + [1])
    num_perm = runs[0].signatures.shape[1] if runs else 0
    for name, dtype, shape in (("doc_ids", f"S{width}", (total,)), ("signatures", np.uint32, (total, num_perm))):
        writer = _NpyWriter(directory / f"{name}.npy", np.dtype(dtype), shape)
        rows = max(1, piece_entries * 8 // (np.dtype(dtype).itemsize * max(1, int(np.prod(shape[1:])))))
        for run in runs:
            column = getattr(run, name)
            for start in range(0, len(column), rows):
                writer.write(column[start : start + rows])
                run.release()
        writer.close()
    entries = sum(len(r.band_keys) for r in runs)
    for table in ("band", "id"):
        size = entries if table == "band" else total
        keys_out = _NpyWriter(directory / f"{table}_keys.npy", np.dtype(np.uint64), (size,))
        docs_out = _NpyWriter(directory / f"{table}_docs.npy", np.dtype(np.uint32), (size,))
        fence: list[np.ndarray] = []
        pieces = max(1, -(-size // piece_entries))
        bounds = [np.uint64((k << 64) // pieces) for k in range(1, pieces)]
        starts = [0] * len(runs)
        for piece in range(pieces):
            keys, docs = [], []
            for r, run in enumerate(runs):
                run_keys = getattr(run, f"{table}_keys")
                run_fence = getattr(run, f"{table}_fence")
                last = piece == pieces - 1
                stop = len(run_keys) if last else int(_bisect(run_keys, run_fence, np.array([bounds[piece]]), False)[0])
                keys.append(run_keys[starts[r] : stop])
                docs.append(getattr(run, f"{table}_docs")[starts[r] : stop].astype(np.uint64) + np.uint64(offsets[r]))
                starts[r] = stop
            merged_keys, merged_docs = _concat(keys, np.uint64), _concat(docs, np.uint64)
            order = np.argsort(merged_keys, kind="stable")  # runs in canonical order: ties stay first seen first
            fence.append(merged_keys[order][(-keys_out.rows) % FENCE_STRIDE :: FENCE_STRIDE])
            keys_out.write(merged_keys[order])
            docs_out.write(merged_docs[order].astype(np.uint32))
            for run in runs:
                run.release()
        keys_out.close()
        docs_out.close()
        np.save(directory / f"{table}_fence.npy", _concat(fence, np.uint64).astype(np.uint64))
    _write_meta(directory, meta, total, entries)


def publish_dir(staging: Path, final: Path) -> bool:
    """Move a complete run directory into place; False (and the staging copy dropped) when another
    process published the same run first (runs are content-addressed: its copy is identical)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, final)
        return True
    except OSError:
        if not (final / RUN_FILE).exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return False


def _write_meta(directory: Path, meta: dict[str, Any], documents: int, entries: int) -> None:
    body = json.dumps({**meta, "documents": documents, "band_entries": entries}, indent=2, sort_keys=True)
    tmp = directory / f".{RUN_FILE}.tmp"
    tmp.write_text(body)
    tmp.replace(directory / RUN_FILE)


def _bisect(keys: np.ndarray, fence: np.ndarray, probes: np.ndarray, right: bool) -> np.ndarray:
    """numpy.searchsorted(keys, probes, side) that reads one fence page per probe, then bisects
    inside that page (vectorized over the probes)."""
    side = "right" if right else "left"
    if not len(keys) or not len(probes):
        return np.zeros(len(probes), np.int64)
    page = np.maximum(np.searchsorted(fence, probes, side) - 1, 0)
    lo = page * FENCE_STRIDE
    hi = np.minimum(lo + FENCE_STRIDE, len(keys))
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        value = keys[np.minimum(mid, len(keys) - 1)]
        below = (value <= probes) if right else (value < probes)
        lo = np.where(open_ & below, mid + 1, lo)
        hi = np.where(open_ & ~below, mid, hi)


def _chunks(order: np.ndarray) -> list[np.ndarray]:
    return [order[start : start + PROBE_CHUNK] for start in range(0, len(order), PROBE_CHUNK)]


def _expand(lo: np.ndarray, count: np.ndarray) -> np.ndarray:
    """lo[0], lo[0]+1, ..., lo[0]+count[0]-1, lo[1], ...: the positions of each probe's matches."""
    total = int(count.sum())
    return np.repeat(lo, count) + np.arange(total) - np.repeat(np.cumsum(count) - count, count)


def _concat(parts: list[np.ndarray], dtype: Any = np.int64) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)
