"""Thin Dagster resources around the plain engines, so assets receive them by injection and
the UI shows their configuration."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.common.catalog import CatalogSettings, LineageCatalog
from resources.common.executor import ExecutorKind, RaySettings, ShardMapper, disconnect, shard_mapper
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


class ExecutorResource(dg.ConfigurableResource):
    """Where the map stages' per-shard work runs: `local` (this step's process and its pools) or
    `ray` (tasks on the cluster at `ray_address`; see resources.common.executor). A step that uses
    it joins the cluster before it does any work, and leaves it when the step ends."""

    kind: ExecutorKind = "local"
    ray_address: str | None = None
    ray_connect_timeout_s: float = RaySettings().connect_timeout_s
    ray_max_retries: int = RaySettings().max_retries
    ray_tasks_per_cpu: int = RaySettings().tasks_per_cpu
    _mapper: ShardMapper | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, kind: ExecutorKind, ray: RaySettings) -> ExecutorResource:
        return cls(
            kind=kind,
            ray_address=ray.address,
            ray_connect_timeout_s=ray.connect_timeout_s,
            ray_max_retries=ray.max_retries,
            ray_tasks_per_cpu=ray.tasks_per_cpu,
        )

    def mapper(self) -> ShardMapper | None:
        """None for local; for ray, the cluster joined on first use (an asset calls this before
        it does any work: a cluster that does not answer fails the step there)."""
        if self.kind == "local":
            return None
        if self._mapper is None:
            ray = RaySettings(
                address=self.ray_address,
                connect_timeout_s=self.ray_connect_timeout_s,
                max_retries=self.ray_max_retries,
                tasks_per_cpu=self.ray_tasks_per_cpu,
            )
            self._mapper = shard_mapper(self.kind, ray)
        return self._mapper

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._mapper is not None:
            disconnect()
            self._mapper = None
