"""Exact and near-duplicate removal for one crawl-batch partition, incremental across partitions.

The contract, and why:

- Partitions have a canonical order (the registration order of crawl batches). A partition is
  deduplicated against the *index segments* of the partitions before it, each holding the
  documents that partition kept, and against itself in row order: the first-seen document wins.
- A document is an **exact duplicate** when its `doc_id` (the hash of its normalized text) is that
  of a document kept earlier, or of an earlier row of the partition. It is a **near duplicate**
  when its estimated Jaccard similarity (word n-gram MinHash) to a document kept before it reaches
  `min_similarity`, among the candidates MinHash LSH proposes (at least one band bucket shared).
  Exact matching runs first; near matching only sees what it leaves.
- `duplicate_of` names the first-seen match: the earliest segment in the given order, then the
  earliest row of that partition; within the partition, the earliest kept row.
- Because segments hold kept documents only, a result depends on the partition's rows and the
  segments' contents, not on when partitions ran, on the order of a segment's shards or rows,
  or on the number of workers; re-running a partition against the same segments gives the same
  removed rows and a byte-identical segment, so its data version does not move and nothing
  downstream goes stale. The order of the segments only decides `duplicate_of` when a document
  matches kept documents of several earlier partitions.

Memory is bounded by the partition (a crawl batch), never by the corpus: documents are read
once (`doc_id` and `text` only), text is dropped as soon as a batch is sketched (~800 bytes per
document stay: signature and band keys), and the earlier segments are read in one streaming
pass that keeps only the rows sharing a band bucket or a `doc_id` with this partition (on lazy
Parquet scans the filter runs inside the reader). Kept rows are produced in a second pass over
the partition's shards, by `DedupResult.splitter()`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from resources.common.executor import ShardMapper
from resources.common.schemas import removed_rows
from resources.dedup.index import IndexSegment, band_column, segment_schema
from resources.dedup.minhash import Sketches, similarity, sketch
from resources.dedup.settings import DedupSettings
from resources.dedup.sketcher import Sketcher

STAGE = "dedup"
EXACT = "dedup_exact"
NEAR = "dedup_near"
DECISION_SCHEMA: dict[str, pl.DataType] = {
    "doc_id": pl.String(),
    "rule": pl.String(),
    "duplicate_of": pl.String(),
    "similarity": pl.Float64(),  # to duplicate_of: 1.0 for exact duplicates
}


@dataclass
class DedupResult:
    """What one partition's deduplication decided, row-aligned with the frames it was given."""

    removed: pl.DataFrame  # DECISION_SCHEMA, in row order
    segment: IndexSegment  # this partition's kept documents, to persist for later partitions
    stats: dict[str, float | int] = field(default_factory=dict)
    _doc_ids: pl.Series = field(default_factory=lambda: pl.Series("doc_id", [], pl.String), repr=False)
    _removed_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def splitter(self) -> Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]:
        """`split(frame) -> (kept, removed)` for the partition's frames, called in the order they
        were deduplicated in (e.g. as `run_partition_stage`'s `process`). `removed` holds removed
        rows (REMOVED_SCHEMA: the rule, `duplicate_of`, the similarity as `detail`). Each call of
        `splitter()` starts again at the first frame."""
        cursor = 0

        def split(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
            nonlocal cursor
            start, stop = cursor, cursor + frame.height
            if stop > len(self._doc_ids) or not frame.get_column("doc_id").cast(pl.String).equals(
                self._doc_ids.slice(start, frame.height), check_names=False
            ):
                raise ValueError(f"frame at rows {start}:{stop} is not the one that was deduplicated there")
            cursor = stop
            lo, hi = np.searchsorted(self._removed_rows, [start, stop])
            drop = np.zeros(frame.height, bool)
            drop[self._removed_rows[lo:hi] - start] = True
            reasons = self.removed.slice(int(lo), int(hi - lo)).drop("doc_id")
            dropped = pl.concat([frame.filter(pl.Series(drop)), reasons], how="horizontal")
            return frame.filter(~pl.Series(drop)), removed_rows(
                dropped, STAGE, pl.col("rule"), pl.col("similarity").round(4)
            )

        return split


class NearDedup:
    """The engine: `dedup_partition(frames, earlier)` for each partition, in any order of runs.

    Owns the helper processes that compute signatures beside this one (started by the first
    partition of more than one batch), or sketches as tasks of `mapper` (Ray); use it as a context
    manager, or `close()` it, to stop the helpers."""

    def __init__(self, settings: DedupSettings | None = None, mapper: ShardMapper | None = None) -> None:
        self.settings = settings or DedupSettings()
        self.spec = self.settings.spec
        self._sketcher = Sketcher(self.spec, self.settings.workers or os.cpu_count() or 1, mapper)

    def __enter__(self) -> NearDedup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sketcher.close()

    def signatures(self, frame: pl.DataFrame) -> Sketches:
        """MinHash signatures and LSH band keys of a frame's `text`, in this process."""
        return sketch(frame.get_column("text"), self.spec)

    def dedup_partition(self, frames: Iterable[pl.DataFrame], earlier: Iterable[IndexSegment]) -> DedupResult:
        """Deduplicate one partition's documents (its shards, in order; `doc_id` and `text` are
        all that is read) against the segments of the partitions before it, in canonical order."""
        started = time.perf_counter()
        doc_ids: list[pl.Series] = []
        sketches = Sketches.concat(list(self._sketcher.map(self._batches(frames, doc_ids))), self.spec)
        ids = pl.concat(doc_ids) if doc_ids else pl.Series("doc_id", [], pl.String)
        sketched = time.perf_counter()

        decisions = _Decisions(ids)
        first = ids.is_first_distinct().to_numpy() if len(ids) else np.zeros(0, bool)
        decisions.set(np.flatnonzero(~first), EXACT, ids.filter(~pl.Series(first)).to_list(), 1.0)
        segments, matched_earlier = self._match_earlier(ids, first, sketches, earlier, decisions)
        pairs, verified = self._match_within(sketches, first & sketches.has_shingles & decisions.kept, decisions)

        kept = decisions.kept
        removed_rows = np.flatnonzero(~kept)
        removed = pl.DataFrame(
            {
                "doc_id": ids.gather(removed_rows),
                "rule": decisions.rule[removed_rows],
                "duplicate_of": decisions.duplicate_of[removed_rows],
                "similarity": decisions.similarity[removed_rows],
            },
            schema=DECISION_SCHEMA,
        )
        segment = IndexSegment.from_frame(self._segment(ids, sketches, kept))
        rules = removed.get_column("rule")
        stats: dict[str, float | int] = {
            "documents": len(ids),
            "kept": int(kept.sum()),
            "exact_duplicates": int((rules == EXACT).sum()),
            "near_duplicates": int((rules == NEAR).sum()),
            "without_words": int((~sketches.has_shingles).sum()),
            "earlier_segments": segments,
            "earlier_documents_matched": matched_earlier,
            "candidate_pairs": pairs,
            "verified_pairs": verified,
            "sketch_seconds": round(sketched - started, 3),
            "seconds": round(time.perf_counter() - started, 3),
        }
        return DedupResult(removed, segment, stats, ids, removed_rows)

    # -- reading ------------------------------------------------------------------------
    def _batches(self, frames: Iterable[pl.DataFrame], doc_ids: list[pl.Series]) -> Iterator[pl.Series]:
        """Texts in batches of about `batch_bytes`, across frame boundaries (a document larger
        than a batch goes alone); the frames' doc_ids are collected on the way."""
        pending: list[pl.Series] = []
        size = 0
        for frame in frames:
            missing = {"doc_id", "text"} - set(frame.columns)
            if missing:
                raise ValueError(f"documents need columns doc_id and text; missing {sorted(missing)}")
            ids = frame.get_column("doc_id").cast(pl.String)
            if ids.null_count():
                raise ValueError(f"{ids.null_count()} documents have no doc_id")
            doc_ids.append(ids)
            texts = frame.get_column("text").cast(pl.String)
            ends = texts.str.len_bytes().fill_null(0).cast(pl.Int64).cum_sum().to_numpy()
            start = 0
            while start < frame.height:
                before = int(ends[start - 1]) if start else 0
                fits = int(np.searchsorted(ends, before + self.settings.batch_bytes - size, "right"))
                stop = max(fits, start + (not pending))
                if stop > start:
                    pending.append(texts.slice(start, stop - start))
                    size += int(ends[stop - 1]) - before
                if stop < frame.height:  # the next document does not fit: the batch is full
                    yield pl.concat(pending)
                    pending, size = [], 0
                start = stop
        if pending:
            yield pl.concat(pending)

    # -- matching -----------------------------------------------------------------------
    def _match_earlier(
        self,
        ids: pl.Series,
        first: np.ndarray,
        sketches: Sketches,
        earlier: Iterable[IndexSegment],
        decisions: _Decisions,
    ) -> tuple[int, int]:
        """Exact, then near matches against the earlier segments, read in one filtered pass over
        all of them (only rows sharing a doc_id or a band bucket with this partition come back).
        Returns (segments read, earlier documents matched)."""
        segments = list(earlier)
        for index, segment in enumerate(segments):
            self._check_sketch(segment, index)
        rows = np.flatnonzero(first)
        if not segments or not len(rows):
            return len(segments), 0
        keys = sketches.band_keys[rows[sketches.has_shingles[rows]]]
        wanted = pl.col("doc_id").is_in(ids.gather(rows).implode())
        for b in range(self.spec.bands):
            wanted |= pl.col(band_column(b)).is_in(pl.Series(keys[:, b]).implode())
        hits = (
            pl.concat(
                [s.frame.filter(wanted).with_columns(segment=pl.lit(k, pl.UInt32)) for k, s in enumerate(segments)]
            )
            .collect(engine="streaming")  # bounded memory however many segments
            .sort("segment", "seq")  # canonical order: the first hit is the first seen
        )
        matched = hits.height
        exact = rows[ids.gather(rows).is_in(hits.get_column("doc_id").implode()).to_numpy()]
        decisions.set(exact, EXACT, ids.gather(exact).to_list(), 1.0)
        near_rows = rows[sketches.has_shingles[rows] & decisions.kept[rows]]
        hits = hits.filter(pl.col("signature").is_not_null())
        if len(near_rows) and hits.height:
            theirs = hits.select(band_column(b) for b in range(self.spec.bands)).to_numpy()
            row, hit = _shared_buckets(sketches.band_keys[near_rows], theirs, self.settings.max_bucket_candidates)
            row = near_rows[row]
            sims = similarity(sketches.signatures[row], hits.get_column("signature").to_numpy()[hit])
            ok = sims >= self.settings.min_similarity
            found, first_ok = np.unique(row[ok], return_index=True)  # pairs are sorted by row, then hit
            targets = hits.get_column("doc_id").gather(hit[ok][first_ok]).to_list()
            for one, target, sim in zip(found.tolist(), targets, sims[ok][first_ok].tolist(), strict=True):
                decisions.set(np.array([one]), NEAR, [target], sim)
        return len(segments), matched

    def _match_within(self, sketches: Sketches, open_rows: np.ndarray, decisions: _Decisions) -> tuple[int, int]:
        """Greedy first-seen-wins inside the partition: a row is removed when it near-matches a
        row before it that was kept. Returns (candidate pairs, verified pairs)."""
        rows = np.flatnonzero(open_rows)
        i, j = _earlier_in_bucket(sketches.band_keys[rows], self.settings.max_bucket_candidates)
        i, j = rows[i], rows[j]
        sims = similarity(sketches.signatures[i], sketches.signatures[j])
        ok = sims >= self.settings.min_similarity
        for a, b, sim in zip(i[ok].tolist(), j[ok].tolist(), sims[ok].tolist(), strict=True):
            if decisions.kept[a] and decisions.kept[b]:  # pairs come by j, then i: the earliest kept i wins
                decisions.set(np.array([b]), NEAR, [decisions.ids[a]], sim)
        return len(i), int(ok.sum())

    def _check_sketch(self, segment: IndexSegment, index: int) -> None:
        schema = segment.frame.collect_schema()
        expected = segment_schema(self.spec)
        if dict(schema) != expected:
            raise ValueError(
                f"earlier segment #{index} does not match these dedup settings ({self.spec.sketch_id}): "
                f"columns {dict(schema)}; rematerialize the earlier partitions with the current settings"
            )
        sketch_ids = segment.frame.select(pl.col("sketch").unique()).collect().get_column("sketch").to_list()
        if any(s != self.spec.sketch_id for s in sketch_ids):
            raise ValueError(
                f"earlier segment #{index} was built with sketch {sketch_ids}, these settings use "
                f"{self.spec.sketch_id}: rematerialize the earlier partitions with the current settings"
            )

    def _segment(self, ids: pl.Series, sketches: Sketches, kept: np.ndarray) -> pl.DataFrame:
        rows = np.flatnonzero(kept)
        has = pl.Series(sketches.has_shingles[rows])
        columns: dict[str, Any] = {
            "doc_id": ids.gather(rows),
            "seq": np.arange(len(rows), dtype=np.uint32),
            "sketch": pl.repeat(self.spec.sketch_id, len(rows), dtype=pl.String, eager=True),
            "signature": pl.Series(sketches.signatures[rows]),
        }
        columns.update({band_column(b): sketches.band_keys[rows, b] for b in range(self.spec.bands)})
        frame = pl.DataFrame(columns)
        nullable = ["signature", *(band_column(b) for b in range(self.spec.bands))]
        return frame.with_columns(pl.when(has).then(pl.col(c)).alias(c) for c in nullable).cast(
            segment_schema(self.spec)
        )


class _Decisions:
    """Per row: kept, or removed by which rule, as a duplicate of which doc_id, how similar."""

    def __init__(self, ids: pl.Series) -> None:
        self.ids = ids
        self.kept = np.ones(len(ids), bool)
        self.rule = np.full(len(ids), None, object)
        self.duplicate_of = np.full(len(ids), None, object)
        self.similarity = np.full(len(ids), np.nan)

    def set(self, rows: np.ndarray, rule: str, duplicate_of: list[str], similarity: float) -> None:
        self.kept[rows] = False
        self.rule[rows] = rule
        self.duplicate_of[rows] = duplicate_of
        self.similarity[rows] = similarity


def _earlier_in_bucket(keys: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i, j), i < j, of rows of `keys` (rows x bands) sharing a band key, each j
    paired with at most the `cap` first rows of each of its buckets; sorted by j, then i."""
    if len(keys) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bands = keys.shape[1]
    flat = keys.ravel()
    order = np.argsort(flat, kind="stable")  # stable: rows ascend within a bucket
    owner = order // bands
    starts = np.flatnonzero(np.r_[True, flat[order][1:] != flat[order][:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(flat)]))
    count = np.minimum(np.arange(len(flat)) - group_start, cap)  # earlier members paired with
    later = np.repeat(np.arange(len(flat)), count)
    earlier = np.repeat(group_start, count) + np.arange(len(later)) - np.repeat(np.cumsum(count) - count, count)
    i, j = owner[earlier], owner[later]
    pair = np.unique(j[i < j] * len(keys) + i[i < j])  # one pair however many bands it shares
    return pair % len(keys), pair // len(keys)


def _shared_buckets(probe: np.ndarray, index: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (p, h) of rows of `probe` and `index` (rows x bands each) sharing a band key, each p
    paired with at most the `cap` first index rows of each bucket; sorted by p, then h."""
    bands = index.shape[1]
    flat = index.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    wanted = probe.ravel()
    lo = np.searchsorted(ordered, wanted, "left")
    count = np.minimum(np.searchsorted(ordered, wanted, "right") - lo, cap)
    p = np.repeat(np.arange(len(wanted)) // bands, count)
    position = np.repeat(lo, count) + np.arange(len(p)) - np.repeat(np.cumsum(count) - count, count)
    pair = np.unique(p * len(index) + order[position] // bands)
    return pair // len(index), pair % len(index)
