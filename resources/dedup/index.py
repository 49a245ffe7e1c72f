"""The persisted index of what earlier crawl batches kept: one segment per batch, published with
the batch's deduplicated documents, read by every later batch (first seen wins)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from resources.common.storage import ShardStore, stable_hash
from resources.dedup.minhash import SketchSpec

INDEX = "index"  # the table of a deduplicated partition that holds its segment


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
    """The documents one partition kept, as later partitions are checked against them.

    Hold an eager frame (tests, small partitions) or a lazy scan of the segment's Parquet
    shards (`pl.scan_parquet(paths)`), whose filters then run inside the reader."""

    frame: pl.LazyFrame

    @classmethod
    def from_frame(cls, frame: pl.DataFrame | pl.LazyFrame) -> IndexSegment:
        lazy = frame.lazy()
        columns = lazy.collect_schema()
        missing = {"doc_id", "seq", "sketch", "signature"} - set(columns)
        if missing:
            raise ValueError(f"not a dedup index segment: missing columns {sorted(missing)}")
        return cls(lazy)

    def to_frame(self) -> pl.DataFrame:
        return self.frame.collect()


def index_input(asset: str, key: str) -> str:
    """How a batch's manifest names an earlier batch's index segment among its inputs."""
    return f"{asset}[{key}].{INDEX}"


class EarlierBatchNotDeduplicated(RuntimeError):
    """Deduplicating a batch needs every batch registered before it deduplicated first."""


def earlier_segments(
    store: ShardStore, asset: str, earlier_keys: list[str]
) -> tuple[list[IndexSegment], dict[str, str]]:
    """The index segments of every crawl batch registered before this one, in registration order,
    and their data versions (inputs of this batch's manifest): first-seen wins across batches,
    whatever order their runs happen in."""
    segments, inputs = [], {}
    for key in earlier_keys:
        manifest = store.read_manifest(asset, key)
        if manifest is None or INDEX not in manifest.tables():
            raise EarlierBatchNotDeduplicated(
                f"crawl batch {key!r}, registered earlier, is not deduplicated yet: it must be first "
                "(this step is retried; or materialize the batches in registration order)"
            )
        segments.append(IndexSegment.from_frame(store.scan(manifest, INDEX)))
        inputs[index_input(asset, key)] = manifest.data_version
    return segments, inputs


def earlier_index_version(earlier: Sequence[tuple[str, str]]) -> str:
    """What a batch was deduplicated against, as one value: the earlier batches' keys and the data
    versions of their deduplicated partitions, in registration order. Recorded with each batch, so
    a batch whose earlier batches have changed since can be found (and deduplicated again)."""
    return stable_hash([list(pair) for pair in earlier])[:16]
