"""Exact and near-duplicate removal for one crawl-batch partition, incremental across partitions.

The contract, and why:

- Partitions have a canonical order (the registration order of crawl batches). A partition is
  deduplicated against what the partitions before it kept (sorted runs of the persisted index,
  `index.py`, or their segments) and against itself in row order: the first-seen document wins.
- A document is an **exact duplicate** when its `doc_id` (the hash of its normalized text) is that
  of a document kept earlier, or of an earlier row of the partition. It is a **near duplicate**
  when its estimated Jaccard similarity (word n-gram MinHash) to a document kept before it reaches
  `min_similarity`, among the candidates MinHash LSH proposes (at least one band bucket shared;
  per bucket, the `max_bucket_candidates` first-seen members). Exact matching runs first; near
  matching only sees what it leaves.
- `duplicate_of` names the first-seen match: the earliest earlier document, in canonical order;
  within the partition, the earliest kept row.
- A result depends on the partition's rows and what the earlier partitions kept, not on when
  partitions ran, on how earlier kept documents are split into shards or runs, or on the number
  of workers; re-running a partition against the same history gives the same removed rows and a
  byte-identical segment, so its data version does not move and nothing downstream goes stale.

Memory is bounded by `documents_in_memory`, never by the corpus or the batch: documents are read
once (`doc_id` and `text` only), text is dropped as soon as it is sketched (~800 bytes per
document stay: signature and band keys), lookups in the earlier runs touch pages in proportion
to the probes (`runs.py`). A partition with more documents than `documents_in_memory` is
deduplicated in consecutive sub-batches of that many, each against the earlier partitions and the
kept documents of the sub-batches before it (spilled to disk); that is the same result except that
a bucket's candidate cap then counts kept documents only (it counts every earlier row within one
sub-batch), which matters only in buckets holding more than `max_bucket_candidates` documents.
Only the doc_ids and the removal decisions (~100 bytes per document) stay for the whole partition.
Kept rows are produced in a second pass over the partition's shards, by `DedupResult.splitter()`.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from resources.common.cpus import available_cpus
from resources.common.executor import ShardMapper
from resources.common.schemas import removed_rows
from resources.dedup.index import IndexSegment, band_column, segment_run, segment_schema, segment_sketches
from resources.dedup.minhash import Sketches, similarity, sketch
from resources.dedup.runs import SortedRun, as_doc_id_bytes, id_keys
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
    partition of more than one batch), or sketches as tasks of `mapper` (Ray), and the temporary
    files of large partitions; use it as a context manager, or `close()` it, to stop and remove them."""

    def __init__(self, settings: DedupSettings | None = None, mapper: ShardMapper | None = None) -> None:
        self.settings = settings or DedupSettings()
        self.spec = self.settings.spec
        self._sketcher = Sketcher(self.spec, self.settings.workers or available_cpus(), mapper)
        self._scratch = tempfile.TemporaryDirectory(prefix="dedup-")
        self._spilled = 0

    def __enter__(self) -> NearDedup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sketcher.close()
        self._scratch.cleanup()

    def signatures(self, frame: pl.DataFrame) -> Sketches:
        """MinHash signatures and LSH band keys of a frame's `text`, in this process."""
        return sketch(frame.get_column("text"), self.spec)

    def dedup_partition(
        self, frames: Iterable[pl.DataFrame], earlier: Sequence[SortedRun | IndexSegment]
    ) -> DedupResult:
        """Deduplicate one partition's documents (its shards, in order; `doc_id` and `text` are
        all that is read) against what the partitions before it kept, in canonical order."""
        return self._dedup(self._sketched(frames), earlier)

    def recheck(self, segment: IndexSegment, earlier: Sequence[SortedRun | IndexSegment]) -> DedupResult:
        """The kept documents of a partition (its segment), deduplicated again against the same
        history from the signatures computed the first time: nothing may be removed. Checks that
        every decision depends only on its inputs, without a second pass over the text."""
        return self._dedup((segment_sketches(frame, self.spec) for frame in segment.frames()), earlier)

    # -- the passes -----------------------------------------------------------------------
    def _dedup(
        self, parts: Iterator[tuple[pl.Series, Sketches]], earlier: Sequence[SortedRun | IndexSegment]
    ) -> DedupResult:
        started = time.perf_counter()
        runs = [self._as_run(e) for e in earlier]
        for index, run in enumerate(runs):
            if run.meta.get("sketch_id") != self.spec.sketch_id:
                raise ValueError(
                    f"earlier run #{index} was built with sketch {run.meta.get('sketch_id')}, these settings use "
                    f"{self.spec.sketch_id}: rematerialize the earlier partitions with the current settings"
                )
        stats: Counter[str] = Counter()
        ids_so_far: list[pl.Series] = []
        removed: list[pl.DataFrame] = []
        removed_at: list[np.ndarray] = []
        own: list[SortedRun] = []  # what this partition's earlier sub-batches kept
        segments: list[pl.LazyFrame] = []
        offset = kept_so_far = 0
        previous: tuple[pl.Series, Sketches, np.ndarray] | None = None
        try:
            for ids, sketches in parts:
                if previous is not None:  # a further sub-batch: spill the last one's kept documents
                    own.append(self._spill_run(*previous))
                    segments[-1] = self._spill_segment(segments[-1])
                decisions, matched = self._decide(ids, sketches, ids_so_far, [*runs, *own], stats)
                kept = decisions.kept
                rows = np.flatnonzero(~kept)
                removed.append(decisions.frame(rows))
                removed_at.append(rows + offset)
                segments.append(self._segment(ids, sketches, kept, kept_so_far).lazy())
                stats.update(documents=len(ids), kept=int(kept.sum()), earlier_documents_matched=matched, sub_batches=1)
                ids_so_far.append(ids)
                previous = (ids, sketches, kept)
                offset += len(ids)
                kept_so_far += int(kept.sum())
        finally:
            for run in own:
                run.close()
        all_ids = pl.concat(ids_so_far) if ids_so_far else pl.Series("doc_id", [], pl.String)
        decided = pl.concat(removed) if removed else pl.DataFrame(schema=DECISION_SCHEMA)
        rules = decided.get_column("rule")
        stats.update(
            exact_duplicates=int((rules == EXACT).sum()),
            near_duplicates=int((rules == NEAR).sum()),
            earlier_runs=len(runs),
            earlier_documents=sum(r.documents for r in runs),
        )
        result_stats: dict[str, float | int] = {**stats, "seconds": round(time.perf_counter() - started, 3)}
        return DedupResult(decided, IndexSegment(tuple(segments)), result_stats, all_ids, _concat_rows(removed_at))

    def _decide(
        self,
        ids: pl.Series,
        sketches: Sketches,
        ids_so_far: list[pl.Series],
        runs: list[SortedRun],
        stats: Counter[str],
    ) -> tuple[_Decisions, int]:
        """One sub-batch: exact within it and against the partition's earlier rows, then exact and
        near against the runs, then near within it."""
        decisions = _Decisions(ids)
        first = ids.is_first_distinct().to_numpy() if len(ids) else np.zeros(0, bool)
        for earlier_ids in ids_so_far:
            first &= ~ids.is_in(earlier_ids.implode()).to_numpy()
        repeated = np.flatnonzero(~first)
        decisions.set(repeated, EXACT, ids.gather(repeated).to_list(), 1.0)
        matched = self._match_earlier(ids, first, sketches, runs, decisions)
        pairs, verified = self._match_within(sketches, first & sketches.has_shingles & decisions.kept, decisions)
        stats.update(without_words=int((~sketches.has_shingles).sum()), candidate_pairs=pairs, verified_pairs=verified)
        return decisions, matched

    def _sketched(self, frames: Iterable[pl.DataFrame]) -> Iterator[tuple[pl.Series, Sketches]]:
        """The partition in sub-batches of at most `documents_in_memory` documents: doc_ids and
        sketches (always at least one sub-batch, possibly empty)."""
        pending: deque[tuple[pl.Series, bool]] = deque()  # per text batch: its doc_ids, ends a sub-batch
        ids: list[pl.Series] = []
        parts: list[Sketches] = []
        emitted = False
        for batch_sketches in self._sketcher.map(self._batches(frames, pending)):
            batch_ids, last = pending.popleft()
            ids.append(batch_ids)
            parts.append(batch_sketches)
            if last:
                yield pl.concat(ids), Sketches.concat(parts, self.spec)
                ids, parts, emitted = [], [], True
        if not emitted:
            yield pl.Series("doc_id", [], pl.String), Sketches.concat([], self.spec)

    def _batches(self, frames: Iterable[pl.DataFrame], pending: deque[tuple[pl.Series, bool]]) -> Iterator[pl.Series]:
        """Texts in batches of about `batch_bytes` (a document larger than a batch goes alone),
        across frame boundaries, never across sub-batches; each batch's doc_ids go to `pending`."""
        limit = self.settings.documents_in_memory
        texts: list[pl.Series] = []
        doc_ids: list[pl.Series] = []
        size = in_part = 0

        def flush(last: bool) -> pl.Series:
            nonlocal size
            pending.append((pl.concat(doc_ids), last))
            batch = pl.concat(texts)
            texts.clear()
            doc_ids.clear()
            size = 0
            return batch

        for frame in frames:
            missing = {"doc_id", "text"} - set(frame.columns)
            if missing:
                raise ValueError(f"documents need columns doc_id and text; missing {sorted(missing)}")
            frame_ids = frame.get_column("doc_id").cast(pl.String)
            if frame_ids.null_count():
                raise ValueError(f"{frame_ids.null_count()} documents have no doc_id")
            frame_texts = frame.get_column("text").cast(pl.String)
            ends = frame_texts.str.len_bytes().fill_null(0).cast(pl.Int64).cum_sum().to_numpy()
            start = 0
            while start < frame.height:
                before = int(ends[start - 1]) if start else 0
                fits = int(np.searchsorted(ends, before + self.settings.batch_bytes - size, "right"))
                stop = min(max(fits, start + (not texts)), start + limit - in_part)
                if stop > start:
                    texts.append(frame_texts.slice(start, stop - start))
                    doc_ids.append(frame_ids.slice(start, stop - start))
                    size += int(ends[stop - 1]) - before
                    in_part += stop - start
                if in_part == limit:
                    yield flush(True)
                    in_part = 0
                elif stop < frame.height:  # the next document does not fit: the batch is full
                    yield flush(False)
                start = stop
        if texts:
            yield flush(True)

    # -- matching -----------------------------------------------------------------------
    def _match_earlier(
        self, ids: pl.Series, first: np.ndarray, sketches: Sketches, runs: list[SortedRun], decisions: _Decisions
    ) -> int:
        """Exact, then near matches against the earlier runs, looked up by doc_id and band key.
        Returns how many earlier documents were matched or compared."""
        rows = np.flatnonzero(first)
        if not runs or not len(rows):
            return 0
        probe_ids = as_doc_id_bytes(ids.gather(rows).to_list())
        probe_keys = id_keys(probe_ids)
        found = np.zeros(len(rows), bool)
        for run in runs:
            found |= run.contains(probe_ids, probe_keys)
        exact = rows[found]
        decisions.set(exact, EXACT, ids.gather(exact).to_list(), 1.0)
        near_rows = rows[sketches.has_shingles[rows] & decisions.kept[rows]]
        offsets = np.cumsum([0, *(run.documents for run in runs)])
        if not len(near_rows) or not offsets[-1]:
            return int(found.sum())
        bands, cap = self.spec.bands, self.settings.max_bucket_candidates
        probes, hits = [], []
        for run, offset in zip(runs, offsets[:-1], strict=True):
            probe, document = run.bucket_members(sketches.band_keys[near_rows].ravel(), cap)
            probes.append(probe)
            hits.append(document + offset)
        probe, hit = np.concatenate(probes), np.concatenate(hits)
        order = np.argsort(probe, kind="stable")  # per probe key: runs in canonical order, then documents
        probe, hit = probe[order], hit[order]
        starts = np.flatnonzero(np.r_[True, probe[1:] != probe[:-1]]) if len(probe) else np.zeros(0, np.int64)
        rank = np.arange(len(probe)) - np.repeat(starts, np.diff(np.r_[starts, len(probe)]))
        capped = rank < cap  # the bucket's first `cap` members over all earlier partitions
        pair = np.unique((probe[capped] // bands) * int(offsets[-1]) + hit[capped])  # by row, then first seen
        row, hit = pair // int(offsets[-1]), pair % int(offsets[-1])
        unique_hits, which = np.unique(hit, return_inverse=True)
        hit_ids, hit_signatures = _gather(runs, offsets, unique_hits)
        sims = similarity(sketches.signatures[near_rows[row]], hit_signatures[which])
        ok = sims >= self.settings.min_similarity
        found_rows, first_ok = np.unique(row[ok], return_index=True)
        targets = [t.decode() for t in hit_ids[which[ok][first_ok]].tolist()]
        decisions.set(near_rows[found_rows], NEAR, targets, sims[ok][first_ok])
        return int(found.sum()) + len(unique_hits)

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

    # -- runs and segments ----------------------------------------------------------------
    def _as_run(self, earlier: SortedRun | IndexSegment) -> SortedRun:
        return earlier if isinstance(earlier, SortedRun) else segment_run(earlier.to_frame(), self.spec)

    def _spill_run(self, ids: pl.Series, sketches: Sketches, kept: np.ndarray) -> SortedRun:
        """A sub-batch's kept documents as a run on disk, memory-mapped."""
        rows = np.flatnonzero(kept)
        run = SortedRun.build(
            as_doc_id_bytes(ids.gather(rows).to_list()),
            sketches.signatures[rows],
            sketches.band_keys[rows],
            sketches.has_shingles[rows],
            {"sketch_id": self.spec.sketch_id},
        )
        directory = self._scratch_path("run")
        run.write(directory)
        return SortedRun.open(directory)

    def _spill_segment(self, segment: pl.LazyFrame) -> pl.LazyFrame:
        path = self._scratch_path("segment.parquet")
        segment.collect().write_parquet(path)
        return pl.scan_parquet(path)

    def _scratch_path(self, name: str) -> Path:
        self._spilled += 1
        return Path(self._scratch.name) / f"{self._spilled:06d}-{name}"

    def _segment(self, ids: pl.Series, sketches: Sketches, kept: np.ndarray, first_seq: int) -> pl.DataFrame:
        rows = np.flatnonzero(kept)
        has = pl.Series(sketches.has_shingles[rows])
        columns: dict[str, Any] = {
            "doc_id": ids.gather(rows),
            "seq": np.arange(first_seq, first_seq + len(rows), dtype=np.uint32),
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

    def set(self, rows: np.ndarray, rule: str, duplicate_of: list[str], similarity: float | np.ndarray) -> None:
        self.kept[rows] = False
        self.rule[rows] = rule
        self.duplicate_of[rows] = duplicate_of
        self.similarity[rows] = similarity

    def frame(self, rows: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "doc_id": self.ids.gather(rows),
                "rule": self.rule[rows],
                "duplicate_of": self.duplicate_of[rows],
                "similarity": self.similarity[rows],
            },
            schema=DECISION_SCHEMA,
        )


def _gather(runs: list[SortedRun], offsets: np.ndarray, documents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """doc_ids and signatures of documents numbered across the runs (sorted ascending)."""
    ids, signatures = [], []
    for r, run in enumerate(runs):
        lo, hi = np.searchsorted(documents, offsets[r : r + 2])
        run_ids, run_signatures = run.gather(documents[lo:hi] - offsets[r])
        ids.append(run_ids)
        signatures.append(run_signatures)
    return np.concatenate(ids), np.concatenate(signatures)


def _concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


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
