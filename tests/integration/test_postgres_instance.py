"""The Dagster instance on PostgreSQL (configs/dagster-postgres.yaml against a real server): the
crawl sensor registers a batch, one partition's chain is materialized, and runs, partitions,
materializations and staleness all live in the database, visible to a second instance object
(what the webserver and the daemon are: other processes on the same database)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from resources.settings import PROJECT_ROOT
from tests.automation_driver import materialize, needs_run, new_batches, tick_sensor
from tests.conftest import chain_settings, one_file_crawl
from tests.postgres_server import Postgres, postgres_server  # noqa: F401 - the server fixture

CHAIN = ["raw_documents", "filtered_documents", "quality_classifier", "scored_documents", "deduplicated_documents"]


def test_sensor_and_a_partition_chain_on_postgres(
    tmp_path: Path,
    postgres_server: Postgres,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "configs" / "dagster-postgres.yaml", home / "dagster.yaml")
    for name, value in postgres_server.environ().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    settings = chain_settings(tmp_path, one_file_crawl(tmp_path))
    defs = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        (key,) = new_batches(tick_sensor(defs, instance))
        for asset in CHAIN:
            partition = None if asset == "quality_classifier" else key
            assert materialize(defs, instance, [asset], partition).success, asset
        runs = len(instance.get_runs())

    # A second process's view of the same database: partitions, runs, data versions, freshness.
    with dg.DagsterInstance.get() as other:
        assert other.get_dynamic_partitions("crawl_batches") == [key]
        assert len(other.get_runs()) == runs == len(CHAIN)
        for asset in CHAIN:
            partition = None if asset == "quality_classifier" else key
            event = other.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None and event.asset_materialization.partition == partition
            assert not needs_run(defs, other, asset, partition), f"{asset} should be fresh"
        assert other.get_concurrency_config().pool_config.default_pool_limit == 1
        assert other.run_monitoring_enabled


def test_instance_file_names_only_variables() -> None:
    """The committed instance file holds no credential, only the variables' names."""
    text = (PROJECT_ROOT / "configs" / "dagster-postgres.yaml").read_text()
    for variable in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"):
        assert f"{{env: {variable}}}" in text
