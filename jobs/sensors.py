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
        offered = list_crawl_files(source)
        listing_hash = stable_hash(offered)[:16]
        if context.cursor == listing_hash:
            return dg.SkipReason(f"no change in {len(offered)} crawl files since the last tick")
        registry = storage.batches()
        batches = registry.discover(source)
        if not batches:
            return dg.SensorResult(skip_reason=f"all {len(offered)} crawl files are registered", cursor=listing_hash)
        registry.register(batches)
        lineage = catalog.catalog()
        for batch in batches:
            lineage.record_batch(batch.key, batch.crawl, list(batch.files))
        context.log.info(f"registered {len(batches)} crawl batches: {[b.key for b in batches]}")
        # A capped tick leaves files for the next one, so only an exhausted listing is remembered.
        exhausted = len(registry.index()) >= len(offered)
        return dg.SensorResult(
            dynamic_partitions_requests=[crawl_batches.build_add_request([b.key for b in batches])],
            cursor=listing_hash if exhausted else context.cursor,
        )

    return crawl_sensor
