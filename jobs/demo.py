"""`make demo`: the shipped sample from crawl files to documents, on the project's own instance.

Runs the real sensor once (registering crawl batches as partitions), materializes each new
partition and the summary, and prints what happened and where it went. The same runs show
up in `make ui` afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dagster as dg

from definitions import build_definitions
from resources.catalog import LineageCatalog
from resources.settings import Settings, load_settings


def tick_sensor(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    """Evaluate the crawl sensor as the daemon would and apply its partition requests."""
    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def("crawl_sensor")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, repository_def=repository, resources=defs.resources
    ) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def materialize(
    defs: dg.Definitions, instance: dg.DagsterInstance, names: Sequence[str], partition_key: str | None = None
) -> dg.ExecuteInProcessResult:
    """Materialize the named assets of `defs` in-process, recorded in `instance`."""
    wanted = set(names)
    assets = [a for a in defs.assets or [] if {k.to_user_string() for k in a.keys} & wanted]
    return dg.materialize(assets, instance=instance, resources=defs.resources, partition_key=partition_key)


def run(settings: Settings, instance: dg.DagsterInstance) -> None:
    defs = build_definitions(settings)
    started = time.perf_counter()
    tick = tick_sensor(defs, instance)
    keys = [request.partition_key for request in tick.run_requests or []]
    print(f"crawl sensor: {len(keys)} new crawl batches from {settings.source.url}")
    for key in keys:
        materialize(defs, instance, ["raw_documents"], key)
    materialize(defs, instance, ["crawl_summary"])
    catalog = LineageCatalog(settings.catalog.path)
    table = catalog.query(
        "SELECT m.crawl_batch, m.rows AS documents, m.data_version FROM materializations m"
        " WHERE m.asset = 'raw_documents' ORDER BY m.crawl_batch"
    )
    print(table)
    print(f"documents: {table.get_column('documents').sum()} in {time.perf_counter() - started:.1f} s")
    print(f"shards and manifests: {settings.storage.root}")
    print(f"lineage catalog (DuckDB): {settings.catalog.path}")
    print("browse it: make ui  ->  http://127.0.0.1:3000")


def main() -> None:
    with dg.DagsterInstance.get() as instance:
        run(load_settings(), instance)


if __name__ == "__main__":
    main()
