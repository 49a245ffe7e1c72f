"""Where the per-shard work of the map stages runs: in the Dagster step's own process (and the
process pools ingest and dedup start), or as Ray tasks on a cluster (`executor: ray`).

Why Ray tasks from inside the asset step: Dagster stays the orchestrator (partitions, retries of
whole steps, lineage, the UI); only the map (extract a batch of pages, filter or score a shard,
sketch a batch of texts, tokenize a shard) fans out. The step keeps everything stateful: it reads
the upstream manifest, collects results in input order, and commits the manifest last, so outputs
are byte-identical to local mode (the same shard numbers and content-addressed names). A task
writes its shards with the store's atomic writes and only the step commits, so a worker killed
mid-task leaves no shard that a manifest names: Ray runs the task again (`ray.max_retries`), and
the retry writes the same bytes under the same names.

A cluster that cannot be reached is an error when the step starts, before it reads or writes
anything, within `ray.connect_timeout_s`: `ray.init` itself waits minutes for a GCS that does not
answer, so the address is probed first and `ray.init` is bounded by a timer.

Engines are shipped as `Recipe`s (a picklable zero-argument factory): a worker builds the engine
once and reuses it for every shard it runs (loading lid.176 and the eval-set index per shard
would cost more than filtering it). The code itself must be importable on the workers: the same
environment, with this repository installed (or on their PYTHONPATH).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

ExecutorKind = Literal["local", "ray"]
T = TypeVar("T")
R = TypeVar("R")


class RayUnavailable(RuntimeError):
    """The configured Ray cluster does not answer."""


class RaySettings(BaseModel):
    """The Ray cluster the map stages use with `executor: ray`."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(default=None, description="the head's GCS, host:port (e.g. 10.0.0.5:6379)")
    connect_timeout_s: float = Field(default=20.0, gt=0, description="reaching the cluster: longer is an error")
    max_retries: int = Field(default=3, ge=0, description="runs of a task again after its worker died")
    tasks_per_cpu: int = Field(default=2, ge=1, description="tasks in flight per cluster CPU (bounds memory)")

    def host_port(self) -> tuple[str, int]:
        address = (self.address or "").removeprefix("ray://")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"ray.address must be host:port, got {self.address!r}")
        return host, int(port)


class ShardMapper(Protocol):
    def map(self, fn: Callable[..., R], items: Iterable[Any], *shared: Any) -> Iterator[R]:
        """fn(item, *shared) for every item, the results in the items' order."""
        ...


_BUILT: dict[str, Any] = {}  # engines this process built from recipes, by recipe key
_BUILT_LIMIT = 4


@dataclass(frozen=True)
class Recipe:
    """A picklable zero-argument factory of an engine (functools.partial of a module-level
    function), built at most once per process that runs shards with it."""

    factory: Callable[[], Any]
    key: str = field(default="", compare=False)

    @classmethod
    def of(cls, factory: Callable[[], Any]) -> Recipe:
        return cls(factory, uuid.uuid4().hex)  # one per stage run: its workers build the engine once

    def build(self) -> Any:
        engine = _BUILT.get(self.key)
        if engine is None:
            if len(_BUILT) >= _BUILT_LIMIT:  # another stage's engines: this worker moved on
                _BUILT.clear()
            engine = _BUILT[self.key] = self.factory()
        return engine


class RayMapper:
    """Tasks on a Ray cluster, at most `tasks_per_cpu` per cluster CPU in flight; the first
    task error is raised as its original exception."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        connect(settings)
        import ray

        self._ray = ray
        self._in_flight = max(1, int(ray.cluster_resources().get("CPU", 1)) * settings.tasks_per_cpu)

    def map(self, fn: Callable[..., R], items: Iterable[Any], *shared: Any) -> Iterator[R]:
        ray = self._ray
        task = ray.remote(fn).options(max_retries=self.settings.max_retries)
        refs = [ray.put(value) for value in shared]  # sent once, not with every task
        pending: deque[Any] = deque()
        try:
            for item in items:
                pending.append(task.remote(item, *refs))
                if len(pending) >= self._in_flight:
                    yield self._get(pending.popleft())
            while pending:
                yield self._get(pending.popleft())
        finally:
            for ref in pending:  # an error or an abandoned generator: stop the rest
                ray.cancel(ref, force=True)

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None


def connect(settings: RaySettings) -> None:
    """Join the cluster at `settings.address` (again, when connected elsewhere), or raise
    RayUnavailable within about `connect_timeout_s`."""
    import ray

    host, port = settings.host_port()
    if ray.is_initialized():
        if getattr(connect, "address", None) == settings.address:
            return
        ray.shutdown()
    try:
        socket.create_connection((host, port), timeout=settings.connect_timeout_s).close()
    except OSError as exc:
        raise RayUnavailable(
            f"Ray cluster at {settings.address} does not answer ({exc}): start its head "
            f"(ray start --head --port={port}) or set executor: local"
        ) from exc
    errors: list[BaseException] = []

    def join() -> None:
        try:
            ray.init(address=settings.address, logging_level="ERROR", log_to_driver=False)
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    thread = threading.Thread(target=join, name="ray-connect", daemon=True)
    thread.start()
    thread.join(settings.connect_timeout_s)
    if thread.is_alive():
        raise RayUnavailable(
            f"{settings.address} accepts connections but no Ray cluster answered within {settings.connect_timeout_s} s"
        )
    if errors:
        raise RayUnavailable(f"cannot join the Ray cluster at {settings.address}: {errors[0]}") from errors[0]
    connect.address = settings.address  # type: ignore[attr-defined]


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    connect.address = None  # type: ignore[attr-defined]


def shard_mapper(kind: ExecutorKind, settings: RaySettings) -> ShardMapper | None:
    """None in local mode (each stage keeps its own in-process or process-pool path)."""
    return RayMapper(settings) if kind == "ray" else None
