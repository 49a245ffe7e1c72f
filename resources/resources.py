"""Thin Dagster resources around the plain engines, so assets receive them by injection and
the UI shows their configuration."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from resources.common.catalog import CatalogSettings, LineageCatalog
from resources.common.storage import ShardStore, StorageSettings
from resources.ingest.sources import BatchRegistry


class StorageResource(dg.ConfigurableResource):
    """Root of all shards and manifests: a local directory or an s3:// prefix. Credentials are
    `dg.EnvVar`s (the UI shows the variable's name, never its value) or the standard AWS
    environment variables."""

    root: str
    storage_options: dict = Field(default_factory=dict)
    key: str | None = None
    secret: str | None = None
    token: str | None = None
    lock_timeout_s: float = 600.0
    lock_lease_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> StorageResource:
        credentials = {
            option: dg.EnvVar(variable)
            for option, variable in settings.credentials_env.model_dump(exclude_none=True).items()
        }
        return cls(
            root=settings.root,
            storage_options=settings.storage_options,
            lock_timeout_s=settings.lock_timeout_s,
            lock_lease_s=settings.lock_lease_s,
            **credentials,
        )

    def store(self) -> ShardStore:
        credentials = {k: v for k, v in {"key": self.key, "secret": self.secret, "token": self.token}.items() if v}
        return ShardStore(
            self.root,
            {**self.storage_options, **credentials},
            lock_timeout_s=self.lock_timeout_s,
            lock_lease_s=self.lock_lease_s,
        )

    def batches(self) -> BatchRegistry:
        return BatchRegistry(self.store())


class CatalogResource(dg.ConfigurableResource):
    """The DuckDB lineage catalog (an embedded file, always local)."""

    path: str
    lock_timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: CatalogSettings) -> CatalogResource:
        return cls(path=settings.path, lock_timeout_s=settings.lock_timeout_s)

    def catalog(self) -> LineageCatalog:
        return LineageCatalog(self.path, self.lock_timeout_s)
