"""The whole catalog from storage alone: manifests (documents, removals, token indexes), the
checkpoints' step manifests and the takedown records."""

from __future__ import annotations

from resources.common.catalog import LineageCatalog
from resources.common.storage import ShardStore
from resources.lineage.checkpoints import checkpoint_record, step_manifests
from resources.lineage.requests import read_requests
from resources.lineage.takedown import record


def rebuild_catalog(
    store: ShardStore, catalog: LineageCatalog, batches: dict[str, dict], checkpoint_asset: str = "checkpoint"
) -> dict[str, int]:
    counts = catalog.rebuild(store, batches)
    counts["checkpoints"] = 0
    current = store.read_manifest(checkpoint_asset, None)
    output = current.stats.get("checkpoint") if current else None  # what the asset materialized last
    for name, manifest in step_manifests(store, checkpoint_asset):
        found = checkpoint_record(name, manifest)
        catalog.record_checkpoint(found.row, found.inputs, output=name == output)
        counts["checkpoints"] += 1
    requests = read_requests(store)
    for request, matches in requests:
        record(catalog, request, matches)
    counts["takedowns"] = len(requests)
    return counts
