"""The persisted index of what earlier crawl batches kept: one segment per batch, published with
the batch's deduplicated documents, read by every later batch (first seen wins)."""

from __future__ import annotations

from resources.common.storage import ShardStore
from resources.dedup.engine import IndexSegment

INDEX = "index"  # the table of a deduplicated partition that holds its segment


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
        inputs[f"{asset}[{key}].{INDEX}"] = manifest.data_version
    return segments, inputs
