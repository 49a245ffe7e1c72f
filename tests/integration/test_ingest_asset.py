"""Real materializations of `raw_documents` on the shipped sample, against a real instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from definitions import build_definitions
from resources.common.catalog import LineageCatalog
from resources.common.storage import ShardStore
from resources.ingest.sources import BatchRegistry
from resources.settings import Settings
from tests.automation_driver import materialize, new_batches, tick_sensor
from tests.conftest import make_settings

RAW = dg.AssetKey("raw_documents")
SUMMARY = dg.AssetKey("crawl_summary")


def ingest_all(settings: Settings, instance: dg.DagsterInstance) -> tuple[dg.Definitions, list[str]]:
    defs = build_definitions(settings)
    keys = new_batches(tick_sensor(defs, instance))
    for key in keys:
        materialize(defs, instance, ["raw_documents"], key)
    return defs, keys


def stale_status(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, partition=None):
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return resolver.get_status(key, partition)


def test_materializes_documents_with_provenance(settings: Settings, instance: dg.DagsterInstance) -> None:
    defs, keys = ingest_all(settings, instance)
    assert len(keys) >= 2
    store = ShardStore(settings.storage.root)
    catalog = LineageCatalog(settings.catalog.path)
    total = 0
    for key in keys:
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=RAW, asset_partitions=[key]), limit=1
        ).records[0]
        metadata = record.asset_materialization.metadata
        manifest = store.read_manifest("raw_documents", key)
        assert manifest is not None and manifest.rows == metadata["documents"].value > 0
        assert record.asset_materialization.tags["dagster/data_version"] == manifest.data_version
        assert metadata["records_read"].value >= manifest.rows
        frame = pl.concat(list(store.iter_frames(manifest)))
        assert frame.get_column("doc_id").is_unique().all()
        assert frame.filter(pl.col("text").str.strip_chars() == "").is_empty()
        for column in ("url", "crawl", "warc_path", "warc_record_id", "fetch_time", "domain"):
            assert frame.get_column(column).null_count() == 0, column
        assert set(frame.get_column("crawl_batch")) == {key}
        total += manifest.rows
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(RAW, name) for name in ("unique_doc_id", "no_empty_text", "provenance_complete")]
    )
    assert all(execution.status.value == "SUCCEEDED" for execution in checks.values())
    assert catalog.query("SELECT count(*) AS n FROM documents").item() == total
    materialize(defs, instance, ["crawl_summary"])
    summary = instance.get_latest_materialization_event(SUMMARY).asset_materialization.metadata
    assert summary["documents"].value == total


def test_rematerializing_identical_output_keeps_data_version(settings: Settings, instance: dg.DagsterInstance) -> None:
    defs, keys = ingest_all(settings, instance)
    materialize(defs, instance, ["crawl_summary"])
    store = ShardStore(settings.storage.root)
    before = store.read_manifest("raw_documents", keys[0]).data_version
    materialize(defs, instance, ["raw_documents"], keys[0])
    assert store.read_manifest("raw_documents", keys[0]).data_version == before
    assert stale_status(defs, instance, SUMMARY) == StaleStatus.FRESH


def test_extractor_change_stales_only_what_depends_on_it(
    tmp_path: Path, crawl_dir: Path, settings: Settings, instance: dg.DagsterInstance
) -> None:
    defs, keys = ingest_all(settings, instance)
    materialize(defs, instance, ["crawl_summary"])
    assert all(stale_status(defs, instance, RAW, key) == StaleStatus.FRESH for key in keys)
    assert stale_status(defs, instance, SUMMARY) == StaleStatus.FRESH

    # A worker-count change shapes nothing: nothing becomes stale.
    same = build_definitions(make_settings(tmp_path, crawl_dir, workers=2))
    assert all(stale_status(same, instance, RAW, key) == StaleStatus.FRESH for key in keys)

    precise = build_definitions(make_settings(tmp_path, crawl_dir, extractor="trafilatura"))
    assert all(stale_status(precise, instance, RAW, key) == StaleStatus.STALE for key in keys)
    # The summary only goes stale once a parent partition actually produces different data.
    assert stale_status(precise, instance, SUMMARY) == StaleStatus.FRESH
    materialize(precise, instance, ["raw_documents"], keys[0])
    assert stale_status(precise, instance, RAW, keys[0]) == StaleStatus.FRESH
    assert stale_status(precise, instance, RAW, keys[1]) == StaleStatus.STALE
    assert stale_status(precise, instance, SUMMARY) == StaleStatus.STALE


def test_catalog_rebuilds_from_manifests(settings: Settings, instance: dg.DagsterInstance) -> None:
    ingest_all(settings, instance)
    catalog = LineageCatalog(settings.catalog.path)
    tables = ("crawl_files", "crawl_batches", "materializations", "shards", "documents")
    before = {t: catalog.query(f"SELECT * FROM {t} ORDER BY ALL").drop("registered_at", strict=False) for t in tables}
    url = before["documents"].get_column("url")[0]
    Path(settings.catalog.path).unlink()
    rebuilt = LineageCatalog(settings.catalog.path)
    store = ShardStore(settings.storage.root)
    counts = rebuilt.rebuild(store, BatchRegistry(store).all_specs())
    assert counts["documents"] == before["documents"].height
    for table in tables:
        after = rebuilt.query(f"SELECT * FROM {table} ORDER BY ALL").drop("registered_at", strict=False)
        assert after.equals(before[table]), table
    hits = rebuilt.find_url(url)
    assert hits.height >= 1 and set(hits.get_column("asset")) == {"raw_documents"}


def test_failed_rerun_keeps_the_previous_version(settings: Settings, instance: dg.DagsterInstance) -> None:
    """A crawl file vanishing between runs fails the rerun clearly; what was written stays readable."""
    defs, keys = ingest_all(settings, instance)
    store = ShardStore(settings.storage.root)
    before = store.read_manifest("raw_documents", keys[0])
    files = BatchRegistry(store).spec(keys[0])["files"]
    Path(files[-1]).unlink()  # the first file is read and sharded before the failure
    with pytest.raises(FileNotFoundError, match="gone"):
        materialize(defs, instance, ["raw_documents"], keys[0])
    after = store.read_manifest("raw_documents", keys[0])
    assert after.data_version == before.data_version
    assert pl.concat(list(store.iter_frames(after))).height == before.rows
    assert (
        LineageCatalog(settings.catalog.path)
        .query("SELECT count(*) FROM documents WHERE crawl_batch = ?", [keys[0]])
        .item()
        == before.rows
    )


def test_dagster_yaml_limits_the_gpu_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from resources.settings import PROJECT_ROOT

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
