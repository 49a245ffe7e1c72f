"""The crawl sensor against a real instance: batches, cursor, no double registration."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from resources.common.catalog import LineageCatalog
from resources.ingest.sources import SourceNotFound, batch_key, list_crawl_files, plan_batches
from resources.settings import Settings, SourceSettings
from tests.automation_driver import new_batches, tick_sensor
from tests.conftest import make_settings


def registered(instance: dg.DagsterInstance) -> list[str]:
    return instance.get_dynamic_partitions("crawl_batches")


def test_registers_batches_once_and_honours_cursor(
    settings: Settings, instance: dg.DagsterInstance, crawl_dir: Path
) -> None:
    defs = build_definitions(settings)
    first = tick_sensor(defs, instance)
    files = sorted(crawl_dir.iterdir())
    assert len(new_batches(first)) == (len(files) + 1) // 2
    assert new_batches(first) == registered(instance)
    assert not first.run_requests  # the automation sensor materializes them: nothing is started twice
    assert first.cursor

    # Same listing, same cursor: skipped without touching the registry.
    again = tick_sensor(defs, instance, cursor=first.cursor)
    assert not new_batches(again) and "no change" in str(again.skip_reason)

    # Cursor lost (reset in the UI): the registry still refuses to register anything twice.
    reset = tick_sensor(defs, instance, cursor=None)
    assert not new_batches(reset) and "registered" in str(reset.skip_reason)

    # A new file: exactly one new batch, holding only that file.
    new_file = crawl_dir / "CC-SAMPLE-2024-22-00099.warc.gz"
    shutil.copy(files[0], new_file)
    third = tick_sensor(defs, instance, cursor=reset.cursor)
    assert new_batches(third) == ["CC-SAMPLE-2024-22-00099"]
    assert len(registered(instance)) == len(new_batches(first)) + 1
    spec = defs.resources["storage"].batches().spec("CC-SAMPLE-2024-22-00099")
    assert spec["files"] == [str(new_file)] and spec["crawl"] == "CC-SAMPLE-2024-22"
    catalog = LineageCatalog(settings.catalog.path)
    assert catalog.query("SELECT count(*) FROM crawl_files").item() == len(files) + 1


def test_missing_source_directory_is_a_clear_error(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions(make_settings(tmp_path, tmp_path / "no-such-dir"))
    with pytest.raises(SourceNotFound, match="no-such-dir"):
        tick_sensor(defs, instance)
    assert registered(instance) == []


def test_empty_source_directory_registers_nothing(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = tick_sensor(build_definitions(make_settings(tmp_path, empty)), instance)
    assert not new_batches(result) and registered(instance) == []


def test_common_crawl_listing_with_repeated_lines(tmp_path: Path) -> None:
    listing = tmp_path / "warc.paths.gz"
    lines = [
        "crawl-data/CC-MAIN-2024-22/segments/1715/warc/CC-MAIN-20240518-00000.warc.gz",
        "crawl-data/CC-MAIN-2024-22/segments/1715/warc/CC-MAIN-20240518-00001.warc.gz",
        "crawl-data/CC-MAIN-2024-22/segments/1715/warc/CC-MAIN-20240518-00000.warc.gz",
    ]
    listing.write_bytes(gzip.compress("\n".join(lines).encode()))
    source = SourceSettings(listing=str(listing), listing_base_url="s3://commoncrawl/", files_per_partition=5)
    files = list_crawl_files(source)
    assert files == sorted({f"s3://commoncrawl/{line}" for line in lines})
    (batch,) = plan_batches(files, 5, None, set())
    assert batch.crawl == "CC-MAIN-2024-22"
    assert batch.key == "CC-MAIN-2024-22.CC-MAIN-20240518-00000"
    with pytest.raises(SourceNotFound):
        list_crawl_files(SourceSettings(listing=str(tmp_path / "missing.paths")))


def test_batch_keys_are_sanitized_and_unique() -> None:
    assert batch_key("my crawl", "/x/we ird#name.warc.gz") == "my_crawl.we_ird_name"
    batches = plan_batches(["/a/x.warc.gz", "/b/x.warc.gz"], 1, "c", {"c.x"})
    assert [b.key for b in batches] == ["c.x-2", "c.x-3"]
