"""The crawl sensor: new crawl files become crawl batch partitions. It requests no runs: the
automation sensor (jobs/automation.py) materializes every stage of a new batch, so nothing is
started twice."""

import dagster as dg

from assets.partitions import crawl_batches
from resources.common.storage import stable_hash
from resources.ingest.sources import list_crawl_files
from resources.resources import CatalogResource, StorageResource
from resources.settings import SourceSettings


def build_crawl_sensor(source: SourceSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name="crawl_sensor",
        minimum_interval_seconds=source.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if source.sensor_running else dg.DefaultSensorStatus.STOPPED,
        description=f"Registers new crawl files from {source.listing or source.url} as crawl batches.",
    )
    def crawl_sensor(
        context: dg.SensorEvaluationContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.SensorResult | dg.SkipReason:
        # The cursor is the hash of what the source offered last tick: an unchanged listing
        # costs one listing and nothing else. The batch registry in storage, not the cursor,
        # guarantees that no file is registered twice, even if the cursor is reset.
        skipped: dict[str, str] = {}
        offered = list_crawl_files(source, skipped)
        listing_hash = stable_hash(offered)[:16]
        if context.cursor == listing_hash:
            return dg.SkipReason(f"no change in {len(offered)} crawl files since the last tick")
        for path, reason in sorted(skipped.items()):
            context.log.warning(f"not a crawl file, skipped: {path!r}: {reason}")
        registry = storage.batches()
        batches = registry.discover(source, offered)
        registry.register(batches)
        # Registered batches that are not partitions yet: a tick that died between writing the
        # registry and adding the partitions, or a fresh Dagster instance on the same storage.
        # Adopted here, before the new ones, so partition order stays registration order.
        partitions = set(context.instance.get_dynamic_partitions(crawl_batches.name))
        fresh = {b.key for b in batches}
        adopted = [key for key in registry.batch_keys() if key not in partitions and key not in fresh]
        keys = [*adopted, *(b.key for b in batches)]
        # A capped tick leaves files for the next one, so only an exhausted listing is remembered.
        cursor = listing_hash if len(registry.index()) >= len(offered) else context.cursor
        if not keys:
            return dg.SensorResult(skip_reason=f"all {len(offered)} crawl files are registered", cursor=cursor)
        lineage = catalog.catalog()
        for key in keys:
            spec = registry.spec(key)
            lineage.record_batch(key, spec["crawl"], spec["files"])  # queued if the catalog is busy
        if adopted:
            context.log.info(f"adopted {len(adopted)} registered crawl batches without a partition: {adopted}")
        context.log.info(f"registered {len(batches)} crawl batches: {[b.key for b in batches]}")
        return dg.SensorResult(
            dynamic_partitions_requests=[crawl_batches.build_add_request(keys)],
            cursor=cursor,
        )

    return crawl_sensor
