"""The persisted index of what earlier crawl batches kept, looked up at a cost that follows the new
batch, not the corpus (first seen wins, in registration order).

**Source of truth**: each deduplicated partition publishes its *segment* (table `index`: its kept
documents' doc_ids, signatures and band keys), committed with its manifest.

**Derived, rebuildable**: sorted runs (`runs.py`) over aligned blocks of batches, stored under
`<root>/dedup_index/<scheme>/`. Batches are numbered in registration order; a block of level L
holds the F**L batches from a multiple of F**L (F = `index_fanout`). The batches before batch i
are the blocks of the base-F digits of i, largest first: at most F - 1 per level, so i is looked
up in at most (F - 1) x log_F(i) runs plus F - 1 segments read directly. A block's run is built the
first time a batch needs it, by merging the F blocks of the level below (streamed: memory does
not follow the block's size), so each document is merged about log_F(batches) times over the
life of the corpus and each batch's lookups touch pages in proportion to its own documents. Levels
stop at `index_max_level`; above it, blocks of that level repeat.

**The chain**: what a batch was deduplicated against is one hash. Batch i's manifest records
`against` = H(i-1), where H(j) = hash(H(j-1), key j, data version j) and H(-1) names the sketch
scheme. A run is named by its block and H of its last batch, so a run is only ever reused for
exactly the content it was built from; when an earlier batch is rematerialized with different
output, its successors' recorded `against` no longer matches (they are stale, checkable per batch
from two manifests) and any run that would have to include the new output together with a
successor built against the old one is refused with an error naming the batch to rematerialize.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from resources.common.storage import Manifest, ShardStore, stable_hash
from resources.dedup.minhash import Sketches, SketchSpec, band_keys
from resources.dedup.runs import RUN_FILE, SortedRun, as_doc_id_bytes, merge_runs, publish_dir
from resources.dedup.settings import DedupSettings

INDEX = "index"  # the table of a deduplicated partition that holds its segment
INDEX_DIR = "dedup_index"  # the store's directory of sorted runs
CHAIN = "dedup_chain"  # the manifest stats entry saying what a batch was deduplicated against


def band_column(index: int) -> str:
    return f"band_{index:03d}"


def segment_schema(spec: SketchSpec) -> dict[str, pl.DataType]:
    """One row per kept document. `seq` is its rank among the partition's kept documents, so
    "first seen" survives any split into shards; `sketch` names the signature scheme, so a
    segment built under other settings is refused rather than silently never matching. Documents
    without a word have a null signature and null band keys: they only match exactly."""
    return {
        "doc_id": pl.String(),
        "seq": pl.UInt32(),
        "sketch": pl.String(),
        "signature": pl.Array(pl.UInt32(), spec.num_perm),
        **{band_column(b): pl.UInt64() for b in range(spec.bands)},
    }


@dataclass(frozen=True)
class IndexSegment:
    """The documents one partition kept, as later partitions are checked against them: one or more
    parts in order (eager frames, or lazy scans of Parquet shards), each small enough to collect alone."""

    parts: tuple[pl.LazyFrame, ...]

    @classmethod
    def from_frame(cls, *frames: pl.DataFrame | pl.LazyFrame) -> IndexSegment:
        lazy = tuple(frame.lazy() for frame in frames)
        for part in lazy:
            missing = {"doc_id", "seq", "sketch", "signature"} - set(part.collect_schema())
            if missing:
                raise ValueError(f"not a dedup index segment: missing columns {sorted(missing)}")
        return cls(lazy)

    def frames(self) -> Iterator[pl.DataFrame]:
        for part in self.parts:
            yield part.collect()

    def to_frame(self) -> pl.DataFrame:
        frames = list(self.frames())
        return pl.concat(frames) if frames else pl.DataFrame()


def segment_sketches(frame: pl.DataFrame, spec: SketchSpec) -> tuple[pl.Series, Sketches]:
    """A segment frame's doc_ids and sketches, as they were when its partition was deduplicated
    (checked against `spec`: a segment of other settings is refused, never silently unmatched)."""
    expected = segment_schema(spec)
    if dict(frame.schema) != expected:
        raise ValueError(
            f"dedup index segment does not match these dedup settings ({spec.sketch_id}): columns "
            f"{dict(frame.schema)}; rematerialize the earlier partitions with the current settings"
        )
    sketch_ids = frame.get_column("sketch").unique().to_list()
    if any(s != spec.sketch_id for s in sketch_ids):
        raise ValueError(
            f"dedup index segment was built with sketch {sketch_ids}, these settings use {spec.sketch_id}: "
            "rematerialize the earlier partitions with the current settings"
        )
    has = frame.get_column("signature").is_not_null().to_numpy()
    signatures = np.zeros((frame.height, spec.num_perm), np.uint32)
    if has.any():
        signatures[has] = np.stack(frame.get_column("signature").drop_nulls().to_numpy())
    return frame.get_column("doc_id"), Sketches(signatures, band_keys(signatures, spec.bands, spec.rows), has)


def segment_run(frame: pl.DataFrame, spec: SketchSpec) -> SortedRun:
    """A segment frame as an in-memory run."""
    ids, sketches = segment_sketches(frame.sort("seq"), spec)
    return SortedRun.build(
        as_doc_id_bytes(ids.to_list()),
        sketches.signatures,
        sketches.band_keys,
        sketches.has_shingles,
        {"sketch_id": spec.sketch_id},
    )


class EarlierBatchNotDeduplicated(RuntimeError):
    """Deduplicating a batch needs every batch registered before it deduplicated first."""


class StaleEarlierBatch(RuntimeError):
    """An earlier batch was deduplicated against a state of its predecessors that has changed since."""


def genesis(spec: SketchSpec) -> str:
    return stable_hash(["dedup-chain", spec.sketch_id])[:32]


def chain_link(against: str, key: str, data_version: str) -> str:
    """H of a deduplicated partition: what it was deduplicated against, its key and its content.
    Automation finds a batch to deduplicate again by it (jobs/conditions.py, EarlierBatchChanged)."""
    return stable_hash([against, key, data_version])[:32]


def chain_of(manifest: Manifest) -> str:
    return chain_link(manifest.stats[CHAIN]["against"], manifest.partition, manifest.data_version)


@dataclass
class Earlier:
    """What one batch is deduplicated against: runs in canonical order, and the chain they stand for."""

    runs: list[SortedRun]
    against: str  # H of the last earlier batch (or the scheme's genesis)
    previous: str | None  # that batch's key
    batches: int
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def record(self) -> dict[str, Any]:
        """For the manifest's stats (`CHAIN`): enough to check this batch's freshness later."""
        return {"against": self.against, "after": self.previous, "earlier_batches": self.batches}

    def inputs(self, asset: str) -> dict[str, str]:
        return {f"{asset}[{self.previous}].chain": self.against} if self.previous is not None else {}

    def __enter__(self) -> Earlier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for run in self.runs:
            run.close()
        self._stack.close()


class DedupIndex:
    """Looks up, and builds when missing, the runs that stand for every batch before a given one."""

    def __init__(
        self,
        store: ShardStore,
        asset: str,
        spec: SketchSpec,
        *,
        fanout: int = 4,
        max_level: int = 8,
        documents_in_memory: int = 100_000,
        piece_entries: int = 1 << 21,
    ) -> None:
        self.store, self.asset, self.spec = store, asset, spec
        self.fanout, self.max_level = fanout, max_level
        self.documents_in_memory, self.piece_entries = documents_in_memory, piece_entries
        self.scheme = stable_hash(spec.sketch_id)[:12]
        self.root = store.local_dir(INDEX_DIR, self.scheme)  # the store itself, or a local mirror of it
        self._manifests: dict[int, Manifest] = {}

    @classmethod
    def for_settings(cls, store: ShardStore, asset: str, settings: DedupSettings) -> DedupIndex:
        return cls(
            store,
            asset,
            settings.spec,
            fanout=settings.index_fanout,
            max_level=settings.index_max_level,
            documents_in_memory=settings.documents_in_memory,
        )

    # -- the blocks before a batch ---------------------------------------------------------
    def blocks(self, batches: int) -> list[tuple[int, int]]:
        """(level, start) of the blocks covering batches [0, batches), in order."""
        out, start = [], 0
        for level in range(self.max_level, -1, -1):
            size = self.fanout**level
            count = (batches - start) // size if level == self.max_level else ((batches - start) // size) % self.fanout
            out += [(level, start + k * size) for k in range(count)]
            start += count * size
        return out

    def earlier(self, keys: list[str]) -> Earlier:
        """The runs for the batches `keys` (every batch registered before the one to deduplicate, in
        registration order). Raises EarlierBatchNotDeduplicated or StaleEarlierBatch."""
        self._keys, self._manifests = keys, {}
        earlier = Earlier([], genesis(self.spec), None, len(keys))
        try:
            if keys:
                earlier.against, earlier.previous = self._chain(len(keys) - 1), keys[-1]
            for level, start in self.blocks(len(keys)):
                if level == 0:
                    self._check_link(start)
                    earlier.runs += self._segment_runs(start, earlier._stack)
                else:
                    earlier.runs.append(self._run(level, start))
        except BaseException:
            earlier.close()
            raise
        return earlier

    # -- manifests and the chain ------------------------------------------------------------
    def _manifest(self, ordinal: int) -> Manifest:
        if ordinal not in self._manifests:
            key = self._keys[ordinal]
            manifest = self.store.read_manifest(self.asset, key)
            if manifest is None or INDEX not in manifest.tables():
                raise EarlierBatchNotDeduplicated(
                    f"crawl batch {key!r}, registered earlier, is not deduplicated yet: it must be first "
                    "(this step is retried; or materialize the batches in registration order)"
                )
            if CHAIN not in manifest.stats:
                raise EarlierBatchNotDeduplicated(
                    f"crawl batch {key!r} was deduplicated by an older version of this stage: rematerialize it"
                )
            self._manifests[ordinal] = manifest
        return self._manifests[ordinal]

    def _chain(self, ordinal: int) -> str:
        return genesis(self.spec) if ordinal < 0 else chain_of(self._manifest(ordinal))

    def _check_link(self, ordinal: int) -> None:
        """Batch `ordinal` was deduplicated against the batches before it as they are now."""
        recorded = self._manifest(ordinal).stats[CHAIN]["against"]
        if recorded != self._chain(ordinal - 1):
            key = self._keys[ordinal]
            raise StaleEarlierBatch(
                f"crawl batch {key!r} was deduplicated against an earlier state of the batches before it "
                f"(one of them was rematerialized with other output since): rematerialize {key!r} and the "
                "batches after it, in registration order"
            )

    # -- runs ------------------------------------------------------------------------------
    def _name(self, level: int, start: int) -> str:
        stop = start + self.fanout**level
        return f"L{level}-{start:08d}-{stop:08d}-{self._chain(stop - 1)[:16]}"

    def _run(self, level: int, start: int) -> SortedRun:
        name = self._name(level, start)
        local = self.root / name
        if not (local / RUN_FILE).exists() and not self._download(name):
            self._build(level, start, name)
        run = SortedRun.open(local)
        if run.meta.get("sketch_id") != self.spec.sketch_id:
            raise ValueError(
                f"dedup index run {local} is of sketch {run.meta.get('sketch_id')}, not {self.spec.sketch_id}"
            )
        return run

    def _build(self, level: int, start: int, name: str) -> None:
        size = self.fanout ** (level - 1)
        children = [start + k * size for k in range(self.fanout)]
        with ExitStack() as stack:
            if level == 1:
                for ordinal in children:
                    self._check_link(ordinal)
                inputs = [run for ordinal in children for run in self._segment_runs(ordinal, stack)]
            else:
                inputs = [stack.enter_context(self._run(level - 1, child)) for child in children]
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
            stop = start + self.fanout**level
            meta = {
                "sketch_id": self.spec.sketch_id,
                "level": level,
                "batches": [start, stop],
                "keys": [self._keys[start], self._keys[stop - 1]],
                "chain": self._chain(stop - 1),
            }
            merge_runs(inputs, staging, meta, self.piece_entries)
        if publish_dir(staging, self.root / name):
            self._upload(name)
            self._collect(level, start, name)

    def _segment_runs(self, ordinal: int, stack: ExitStack) -> list[SortedRun]:
        """A batch's segment as runs: in memory, or spilled shard by shard to a temporary directory
        when it holds more than `documents_in_memory` documents (memory stays bounded)."""
        manifest = self._manifest(ordinal)
        frames = self.store.iter_frames(manifest, table=INDEX)
        if manifest.rows_of(INDEX) <= self.documents_in_memory:
            return [segment_run(pl.concat(list(frames)), self.spec)]
        spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dedup-segment-")))
        runs = []
        for index, frame in enumerate(frames):
            segment_run(frame, self.spec).write(spill / str(index))
            runs.append(stack.enter_context(SortedRun.open(spill / str(index))))
        return runs

    # -- remote stores: runs are built locally, uploaded, and mirrored on other machines --------
    def _remote(self, *parts: str) -> str:
        return self.store.path(INDEX_DIR, self.scheme, *parts)

    def _download(self, name: str) -> bool:
        if self.store.is_local or not self.store.fs.exists(self._remote(name, RUN_FILE)):
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        for path in self.store.fs.ls(self._remote(name), detail=False):
            if posixpath.basename(path) != RUN_FILE:
                self.store.fs.get_file(path, str(staging / posixpath.basename(path)))
        self.store.fs.get_file(self._remote(name, RUN_FILE), str(staging / RUN_FILE))
        publish_dir(staging, self.root / name)
        return True

    def _upload(self, name: str) -> None:
        if self.store.is_local:
            return
        files = sorted(self.root.joinpath(name).iterdir(), key=lambda p: p.name == RUN_FILE)  # run.json last
        for file in files:
            self.store.fs.put_file(str(file), self._remote(name, file.name))

    def _collect(self, level: int, start: int, keep: str) -> None:
        """Drop the runs of the same block built for an earlier state of its batches."""
        prefix = keep.rsplit("-", 1)[0] + "-"
        for other in self.root.glob(f"{prefix}*"):
            if other.name != keep and not other.name.startswith("."):
                shutil.rmtree(other, ignore_errors=True)
        if not self.store.is_local:
            for other in self.store.fs.glob(self._remote(f"{prefix}*")):
                if posixpath.basename(other) != keep:
                    self.store.fs.rm(other, recursive=True)
