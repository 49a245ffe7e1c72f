"""`make demo`: the shipped sample from crawl files to documents, on the project's own instance.

Runs the real sensor once (registering crawl batches as partitions), materializes each new
partition and the summary, and prints what happened and where it went. The same runs show
up in `make ui` afterwards.
"""

from __future__ import annotations

import time

import dagster as dg

from definitions import build_definitions
from jobs.partitions import crawl_batches
from resources.settings import Settings, load_settings


def tick_sensor(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None):
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


def run(settings: Settings, instance: dg.DagsterInstance) -> dict[str, object]:
    defs = build_definitions(settings)
    started = time.perf_counter()
    tick = tick_sensor(defs, instance)
    keys = [request.partition_key for request in tick.run_requests or []]
    job = defs.get_job_def("ingest_crawl_batch")
    for key in keys:
        job.execute_in_process(partition_key=key, instance=instance, raise_on_error=True)
    assets = defs.resolve_asset_graph()
    summary_job = dg.define_asset_job("demo_summary", selection=["crawl_summary"])
    dg.Definitions.merge(defs, dg.Definitions(jobs=[summary_job])).get_job_def("demo_summary").execute_in_process(
        instance=instance, raise_on_error=True
    )
    del assets
    return {"new_batches": keys, "seconds": time.perf_counter() - started,
            "all_batches": instance.get_dynamic_partitions(crawl_batches.name)}


def main() -> None:
    settings = load_settings()
    with dg.DagsterInstance.get() as instance:
        outcome = run(settings, instance)
        print(outcome)


if __name__ == "__main__":
    main()
