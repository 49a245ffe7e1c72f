"""The crawl sensor: new crawl files become crawl batch partitions. It requests no runs: the
automation sensor (jobs/automation.py) materializes every stage of a new batch, so nothing is
started twice. The takedown sensor: requests become observations of the crawl batches they hit."""

import json

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from assets.partitions import crawl_batches
from assets.takedown import TAKEDOWN_REQUESTS
from resources.common.storage import stable_hash
from resources.dedup.settings import DedupSettings
from resources.ingest.sources import list_crawl_files
from resources.lineage.settings import TakedownSettings
from resources.lineage.takedown import NO_TAKEDOWN, batch_versions, catalog_state, inbox_files, record_inbox
from resources.resources import CatalogResource, StorageResource
from resources.settings import SourceSettings


def no_takedown(crawl_batch: str) -> dg.AssetObservation:
    """A new batch's takedown version, observed before its filter step runs: Dagster stales a step by
    an input partition's *change* of version, so the first request that hits the batch must find one."""
    return dg.AssetObservation(asset_key=TAKEDOWN_REQUESTS, partition=crawl_batch, tags={DATA_VERSION_TAG: NO_TAKEDOWN})


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
            asset_events=[no_takedown(key) for key in keys],
        )

    return crawl_sensor


def build_takedown_sensor(takedown: TakedownSettings, near: DedupSettings) -> dg.SensorDefinition:
    """Records takedown files dropped in `takedown.inbox` and tells Dagster which crawl batches the
    recorded requests (CLI ones too) hit: an observation of `takedown_requests` per batch whose
    version moved, which makes exactly those batches' filter partitions stale."""

    @dg.sensor(
        name="takedown_sensor",
        minimum_interval_seconds=takedown.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if takedown.sensor_running else dg.DefaultSensorStatus.STOPPED,
        description="Records takedown requests dropped in "
        f"{takedown.inbox or '(no inbox configured)'} and observes which crawl batches requests hit.",
    )
    def takedown_sensor(
        context: dg.SensorEvaluationContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {"inbox": None, "hit": {}, "batches": 0}
        store, lineage = storage.store(), catalog.catalog()
        if takedown.inbox:
            listing = stable_hash(inbox_files(takedown.inbox, takedown.storage_options))[:16]
            if listing != cursor["inbox"]:
                options, spec = takedown.storage_options, near.spec
                recorded = record_inbox(
                    store, lineage, takedown.inbox, storage_options=options, spec=spec, threshold=near.min_similarity
                )
                for name, done in recorded:
                    context.log.info(f"takedown file {name}: {done.to_dict()}")
                cursor["inbox"] = listing
        # Only batches some request hits are remembered: the rest are at NO_TAKEDOWN. Batches the sensor has
        # not seen yet (registered before it existed) are observed once at their current version. The
        # matching runs again only when requests or raw partitions changed.
        batches = context.instance.get_dynamic_partitions(crawl_batches.name)
        state = catalog_state(lineage)
        seen = cursor["hit"]
        hit = seen if state == cursor.get("state") else batch_versions(lineage, batches)
        hit = {b: v for b, v in hit.items() if v != NO_TAKEDOWN}
        moved = {b: hit.get(b, NO_TAKEDOWN) for b in set(hit) | set(seen) if hit.get(b) != seen.get(b)}
        moved.update({b: hit.get(b, NO_TAKEDOWN) for b in batches[cursor.get("batches", 0) :]})
        cursor.update(hit=hit, batches=len(batches), state=state)
        events = [
            dg.AssetObservation(asset_key=TAKEDOWN_REQUESTS, partition=batch, tags={DATA_VERSION_TAG: version})
            for batch, version in sorted(moved.items())
        ]
        if events:
            context.log.info(f"takedown versions moved for {len(events)} crawl batches: {sorted(moved)}")
        return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor, sort_keys=True))

    return takedown_sensor
