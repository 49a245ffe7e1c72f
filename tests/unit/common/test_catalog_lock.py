"""The lineage catalog when another process holds DuckDB's lock: a bounded wait, records of
committed data queued instead of lost, applied in order later; and counts per asset partition
that take the current materialization only, however many runs wrote it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from resources.cli import main as cli
from resources.common.catalog import CatalogLocked, LineageCatalog
from resources.common.storage import Manifest, ShardInfo

HOLD = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read")
print("holding", flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold_catalog(path: str, mode: str, seconds: float) -> subprocess.Popen:
    """Another process with the catalog open (a reader in the DuckDB shell, say)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, path, mode, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "holding"
    return process


def manifest(partition: str, run_id: str, rows: int, created_at: str) -> Manifest:
    files = [ShardInfo(path=f"part-{run_id}.parquet", rows=rows, bytes=10, sha256=run_id)]
    return Manifest("raw_documents", partition, files, run_id=run_id, created_at=created_at)


@pytest.mark.parametrize("mode", ["read", "write"])
def test_a_writer_gives_up_after_the_configured_wait_and_queues(tmp_path: Path, mode: str) -> None:
    path = str(tmp_path / "catalog.duckdb")
    catalog = LineageCatalog(path, lock_timeout_s=1)
    catalog.record_batch("b1", "CC", ["f1"])  # creates the file
    holder = hold_catalog(path, mode, 60)
    try:
        started = time.monotonic()
        bounded = r"locked by another process for over 1 s \(catalog.lock_timeout_s\)"
        with pytest.raises(CatalogLocked, match=bounded), catalog.connect():
            pass
        assert time.monotonic() - started < 10
        assert catalog.record_materialization(manifest("b1", "run-1", 5, "2024-01-01T00:00:00+00:00")) is False
        assert catalog.record_batch("b2", "CC", ["f2", "f3"]) is False
        assert len(catalog.pending()) == 2
    finally:
        holder.kill()
        holder.wait()
    # The next write applies the queue first, in order, then its own record.
    assert catalog.record_materialization(manifest("b2", "run-2", 7, "2024-01-02T00:00:00+00:00")) is True
    assert catalog.pending() == []
    assert catalog.query("SELECT crawl_batch, rows FROM materializations ORDER BY ALL").rows() == [("b1", 5), ("b2", 7)]
    assert catalog.query("SELECT files FROM crawl_batches WHERE crawl_batch = 'b2'").item() == 2


def test_cli_sync_applies_the_queue(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    path = tmp_path / "catalog.duckdb"
    config.write_text(f"catalog: {{path: {path}, lock_timeout_s: 1}}\nstorage: {{root: {tmp_path / 'store'}}}\n")
    catalog = LineageCatalog(str(path), lock_timeout_s=1)
    catalog.record_batch("b1", "CC", ["f1"])
    holder = hold_catalog(str(path), "read", 60)
    try:
        assert catalog.record_materialization(manifest("b1", "run-1", 5, "2024-01-01T00:00:00+00:00")) is False
        with pytest.raises(CatalogLocked):
            cli(["--config", str(config), "sync-catalog"])
    finally:
        holder.kill()
        holder.wait()
    assert cli(["--config", str(config), "sync-catalog"]) == 0
    assert catalog.pending() == []
    assert catalog.query("SELECT count(*) FROM materializations").item() == 1


def test_current_materializations_count_each_asset_partition_once(tmp_path: Path) -> None:
    """Two runs wrote each partition (two demos at once, or a rerun): the history keeps both rows,
    the counts take the latest."""
    catalog = LineageCatalog(str(tmp_path / "catalog.duckdb"))
    for run, created in [("run-a", "2024-01-01T00:00:00+00:00"), ("run-b", "2024-01-01T00:05:00+00:00")]:
        for partition, rows in [("b1", 121), ("b2", 121)]:
            catalog.record_materialization(manifest(partition, run, rows + (run == "run-b"), created))
    assert catalog.query("SELECT count(*) FROM materializations").item() == 4
    summary = catalog.query(
        "SELECT count(*) AS batches, sum(rows) AS documents, min(run_id) AS run FROM current_materializations"
    )
    assert summary.rows() == [(2, 244, "run-b")]
