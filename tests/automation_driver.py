"""The daemon's loop in-process, for integration tests: tick the crawl sensor (registering crawl
batches as partitions), evaluate the automation conditions and run what they request, one
`dagster.materialize` per run the automation sensor would launch (one per crawl batch, one for the
unpartitioned assets), until nothing is requested. The conditions are the ones the automation sensor
evaluates; only the launching is simplified (sequential, in this process)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from assets.partitions import crawl_batches

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the instance keeps every event


def tick_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None, name: str = "crawl_sensor"
) -> dg.SensorResult:
    """Evaluate a sensor as the daemon would and apply its partition requests and asset events."""
    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def(name)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, repository_def=repository, resources=defs.resources
    ) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)
    return result


def new_batches(result: dg.SensorResult) -> list[str]:
    return [key for request in result.dynamic_partitions_requests or [] for key in request.partition_keys]


def materialize(
    defs: dg.Definitions, instance: dg.DagsterInstance, names: Sequence[str], partition_key: str | None = None
) -> dg.ExecuteInProcessResult:
    """Materialize the named assets of `defs` in one in-process run (raises on failure)."""
    return dg.materialize(
        defs.assets or [],
        selection=list(names),
        instance=instance,
        resources=defs.resources,
        partition_key=partition_key,
        run_config=QUIET,
    )


def needs_run(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, partition: str | None) -> bool:
    """Missing or stale, as the UI shows it."""
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return resolver.get_status(dg.AssetKey(asset), partition) != StaleStatus.FRESH


@dataclass
class Run:
    assets: tuple[str, ...]
    partition: str | None
    success: bool


@dataclass
class Automation:
    """Ticks of the automation conditions against one instance, keeping the cursor between them;
    `selection` limits which assets' conditions are evaluated (default: all)."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    selection: dg.AssetSelection | None = None
    cursor: object = None
    runs: list[Run] = field(default_factory=list)

    def tick(self) -> dict[str | None, set[str]]:
        """One evaluation: the requested assets, grouped into runs by partition key."""
        result = dg.evaluate_automation_conditions(
            self.defs, self.instance, asset_selection=self.selection, cursor=self.cursor
        )
        self.cursor = result.cursor
        runs: dict[str | None, set[str]] = defaultdict(set)
        for key in self.defs.resolve_asset_graph().get_all_asset_keys():
            for partition in result.get_requested_partitions(key):
                runs[partition].add(key.to_user_string())
        return dict(runs)

    def run_until_idle(self, max_ticks: int = 40) -> list[Run]:
        """Tick and run what is requested until a tick requests nothing; returns the runs made."""
        made: list[Run] = []
        for _ in range(max_ticks):
            requested = self.tick()
            if not requested:
                self.runs.extend(made)
                return made
            for partition, names in sorted(requested.items(), key=lambda item: item[0] or ""):
                result = dg.materialize(
                    self.defs.assets or [],
                    selection=sorted(names),
                    instance=self.instance,
                    resources=self.defs.resources,
                    partition_key=partition,
                    raise_on_error=False,
                    run_config=QUIET,
                )
                made.append(Run(tuple(sorted(names)), partition, result.success))
        raise AssertionError(f"automation still requesting after {max_ticks} ticks: {made[-5:]}")


def materialize_stale(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[tuple[str, str | None]]:
    """Everything missing or stale, as the automation sensor would materialize it; returns the
    asset partitions materialized (raises if a run failed)."""
    runs = Automation(defs, instance).run_until_idle()
    failed = [run for run in runs if not run.success]
    assert not failed, f"runs failed: {failed}"
    return [(asset, run.partition) for run in runs for asset in run.assets]


__all__ = ["Automation", "crawl_batches", "materialize", "materialize_stale", "needs_run", "new_batches", "tick_sensor"]
