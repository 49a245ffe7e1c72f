"""The lineage catalog: an embedded DuckDB file indexing crawl files, partitions, documents,
shards and materializations, so audits ("which WARC records built checkpoint X?", "was URL Y
ever ingested?") are one SQL query.

It is a derived index, never the source of truth: the manifests and batch specs in storage
are, and `rebuild` recreates the whole catalog from them.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict

from resources.common.schemas import DOCUMENTS, PROVENANCE_COLUMNS, REMOVED, REMOVED_COLUMNS
from resources.common.storage import Manifest, ShardStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS crawl_files (
    path VARCHAR PRIMARY KEY, crawl VARCHAR, crawl_batch VARCHAR, registered_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS crawl_batches (
    crawl_batch VARCHAR PRIMARY KEY, crawl VARCHAR, files INTEGER, registered_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS materializations (
    asset VARCHAR, crawl_batch VARCHAR, run_id VARCHAR, code_version VARCHAR, config_hash VARCHAR,
    data_version VARCHAR, inputs JSON, rows BIGINT, bytes BIGINT, created_at TIMESTAMPTZ,
    PRIMARY KEY (asset, crawl_batch, data_version, run_id));
CREATE TABLE IF NOT EXISTS shards (
    asset VARCHAR, crawl_batch VARCHAR, shard_table VARCHAR, path VARCHAR, rows BIGINT, bytes BIGINT,
    sha256 VARCHAR, data_version VARCHAR);
CREATE TABLE IF NOT EXISTS documents (
    doc_id VARCHAR, asset VARCHAR, crawl_batch VARCHAR, url VARCHAR, domain VARCHAR, crawl VARCHAR,
    warc_path VARCHAR, warc_record_id VARCHAR, fetch_time TIMESTAMPTZ, data_version VARCHAR);
CREATE TABLE IF NOT EXISTS removed (
    doc_id VARCHAR, asset VARCHAR, crawl_batch VARCHAR, url VARCHAR, stage VARCHAR, rule VARCHAR,
    detail VARCHAR, duplicate_of VARCHAR, data_version VARCHAR);
"""

_LOCK_WAIT_S = 120.0


class CatalogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = ".data/catalog.duckdb"


class CatalogLocked(RuntimeError):
    pass


class LineageCatalog:
    """Short-lived connections, retried while another process holds DuckDB's file lock, so
    parallel partition steps can all record into one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            con.execute(SCHEMA)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                con = duckdb.connect(self.path, read_only=read_only and os.path.exists(self.path))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise CatalogLocked(f"lineage catalog {self.path} is locked: {exc}") from exc
                time.sleep(0.05 + random.random() * 0.2)
        try:
            yield con
        finally:
            con.close()

    # -- recording ---------------------------------------------------------------------
    def record_batch(self, crawl_batch: str, crawl: str, files: list[str]) -> None:
        now = datetime.now(UTC)
        with self.connect() as con:
            con.execute("BEGIN")
            con.execute(
                "INSERT OR REPLACE INTO crawl_batches VALUES (?, ?, ?, ?)", [crawl_batch, crawl, len(files), now]
            )
            con.executemany(
                "INSERT OR REPLACE INTO crawl_files VALUES (?, ?, ?, ?)",
                [[path, crawl, crawl_batch, now] for path in files],
            )
            con.execute("COMMIT")

    def record_materialization(
        self, manifest: Manifest, documents: pl.DataFrame | None = None, removed: pl.DataFrame | None = None
    ) -> None:
        """Replace everything known about this asset partition with what the manifest says."""
        key = [manifest.asset, manifest.partition]
        with self.connect() as con:
            con.execute("BEGIN")
            con.execute(
                "INSERT OR REPLACE INTO materializations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    *key,
                    manifest.run_id,
                    manifest.code_version,
                    manifest.config_hash,
                    manifest.data_version,
                    json.dumps(manifest.inputs),
                    manifest.rows,
                    manifest.bytes,
                    manifest.created_at or datetime.now(UTC).isoformat(),
                ],
            )
            con.execute("DELETE FROM shards WHERE asset = ? AND crawl_batch = ?", key)
            if manifest.files:
                con.executemany(
                    "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [[*key, f.table, f.path, f.rows, f.bytes, f.sha256, manifest.data_version] for f in manifest.files],
                )
            for table, frame, columns in (
                ("documents", documents, PROVENANCE_COLUMNS),
                ("removed", removed, REMOVED_COLUMNS),
            ):
                if frame is None:
                    continue
                con.execute(f"DELETE FROM {table} WHERE asset = ? AND crawl_batch = ?", key)
                incoming = frame.select(columns).with_columns(
                    asset=pl.lit(manifest.asset),
                    crawl_batch=pl.lit(manifest.partition),
                    data_version=pl.lit(manifest.data_version),
                )
                con.register("incoming", incoming.to_arrow())
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                con.unregister("incoming")
            con.execute("COMMIT")

    # -- reading -----------------------------------------------------------------------
    def query(self, sql: str, params: list[object] | None = None) -> pl.DataFrame:
        with self.connect(read_only=True) as con:
            return pl.from_arrow(con.sql(sql, params=params or []).to_arrow_table())

    def decontamination(self) -> pl.DataFrame:
        """Training documents removed for overlapping an eval set: per eval set and crawl batch."""
        return self.query(
            "SELECT split_part(detail, ':', 1) AS eval_set, crawl_batch, count(*) AS removed,"
            " sum(CAST(split_part(detail, ':', 2) AS BIGINT)) AS matched_ngrams FROM removed"
            " WHERE rule = 'decontamination_ngram_overlap' GROUP BY ALL ORDER BY eval_set, crawl_batch"
        )

    def find_url(self, url: str) -> pl.DataFrame:
        """Every stage and partition a URL's documents reached (the start of a takedown)."""
        return self.query(
            "SELECT d.url, d.doc_id, d.asset, d.crawl_batch, d.crawl, d.warc_path, d.warc_record_id,"
            " d.fetch_time, d.data_version FROM documents d WHERE d.url = ? ORDER BY d.asset, d.crawl_batch",
            [url],
        )

    # -- rebuilding --------------------------------------------------------------------
    def rebuild(self, store: ShardStore, batches: dict[str, dict]) -> dict[str, int]:
        """Recreate the catalog from storage alone: batch specs and every manifest."""
        Path(self.path).unlink(missing_ok=True)
        Path(self.path + ".wal").unlink(missing_ok=True)
        with self.connect() as con:
            con.execute(SCHEMA)
        for key, spec in sorted(batches.items()):
            self.record_batch(key, spec["crawl"], spec["files"])
        counts = {"crawl_batches": len(batches), "materializations": 0, "documents": 0}
        for manifest in store.iter_manifests():
            documents = _table(store, manifest, DOCUMENTS, PROVENANCE_COLUMNS)
            removed = _table(store, manifest, REMOVED, REMOVED_COLUMNS)
            counts["documents"] += 0 if documents is None else documents.height
            self.record_materialization(manifest, documents, removed)
            counts["materializations"] += 1
        return counts


def _table(store: ShardStore, manifest: Manifest, table: str, columns: list[str]) -> pl.DataFrame | None:
    """A table's catalog columns, or None where the asset writes no such table (e.g. a model)."""
    if table not in manifest.tables() or not set(columns) <= set(store.shard_schema(manifest, table)):
        return None
    return pl.concat(list(store.iter_frames(manifest, columns, table)))
