"""Thin Dagster resources around the plain engines, so assets receive them by injection and
the UI shows their configuration."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from resources.common.catalog import LineageCatalog
from resources.common.storage import ShardStore
from resources.ingest.sources import BatchRegistry


class StorageResource(dg.ConfigurableResource):
    """Root of all shards and manifests: a local directory or an s3:// prefix."""

    root: str
    storage_options: dict = Field(default_factory=dict)

    def store(self) -> ShardStore:
        return ShardStore(self.root, self.storage_options)

    def batches(self) -> BatchRegistry:
        return BatchRegistry(self.store())


class CatalogResource(dg.ConfigurableResource):
    """The DuckDB lineage catalog (an embedded file, always local)."""

    path: str

    def catalog(self) -> LineageCatalog:
        return LineageCatalog(self.path)
