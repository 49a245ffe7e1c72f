"""The lineage catalog: an embedded DuckDB file indexing crawl files, partitions, documents,
shards and materializations, so audits ("which WARC records built checkpoint X?", "was URL Y
ever ingested?") are one SQL query.

It is a derived index, never the source of truth: the manifests and batch specs in storage
are, and `rebuild` recreates the whole catalog from them.

DuckDB lets one process write a file at a time. A writer waits for the lock at most
`lock_timeout_s`; a step whose data is already committed never fails for the catalog: what it
would have recorded is queued beside the file (`<catalog>.pending/`) and applied, in order, by
the next write that gets the lock (or by `crawl2ckpt sync-catalog`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
from pydantic import Field

from resources.common.config import Section
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
-- One row per run is kept in `materializations` (the history); this is the current one of each
-- asset partition, the one to count.
CREATE VIEW IF NOT EXISTS current_materializations AS SELECT * FROM materializations
    QUALIFY row_number() OVER (PARTITION BY asset, crawl_batch ORDER BY created_at DESC, run_id DESC) = 1;
"""


class CatalogSettings(Section):
    path: str = ".data/catalog.duckdb"
    lock_timeout_s: float = Field(
        default=120.0, gt=0, description="how long a writer waits for another process's DuckDB lock"
    )


class CatalogLocked(RuntimeError):
    pass


class LineageCatalog:
    """Short-lived connections, retried while another process holds DuckDB's file lock, so
    parallel partition steps can all record into one file."""

    def __init__(self, path: str, lock_timeout_s: float = 120.0) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self.pending_dir = Path(path + ".pending")
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, once DuckDB's file lock is free; `CatalogLocked` after `lock_timeout_s`.
        A write connection first applies what earlier writers queued."""
        read_only = read_only and os.path.exists(self.path)  # a new file is created by a writer
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                con = duckdb.connect(self.path, read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise CatalogLocked(
                        f"lineage catalog {self.path} is locked by another process for over "
                        f"{self.lock_timeout_s:g} s (catalog.lock_timeout_s): {exc}"
                    ) from exc
                time.sleep(0.05 + random.random() * 0.2)
        try:
            if not read_only:
                con.execute(SCHEMA)
                self._apply_pending(con)
            yield con
        finally:
            con.close()

    # -- recording ---------------------------------------------------------------------
    def record_batch(self, crawl_batch: str, crawl: str, files: list[str]) -> bool:
        """True when recorded now, False when queued because another process held the catalog."""
        return self._record({"kind": "batch", "crawl_batch": crawl_batch, "crawl": crawl, "files": files}, {})

    def record_materialization(
        self, manifest: Manifest, documents: pl.DataFrame | None = None, removed: pl.DataFrame | None = None
    ) -> bool:
        """Replace everything known about this asset partition with what the manifest says. True
        when recorded now, False when queued because another process held the catalog."""
        frames = {name: frame for name, frame in (("documents", documents), ("removed", removed)) if frame is not None}
        return self._record({"kind": "materialization", "manifest": manifest.to_json()}, frames)

    def _record(self, entry: dict, frames: dict[str, pl.DataFrame]) -> bool:
        entry = {**entry, "queued_at": datetime.now(UTC).isoformat()}
        try:
            with self.connect() as con:
                _apply(con, entry, frames)
            return True
        except CatalogLocked:
            self._queue(entry, frames)
            return False

    # -- the queue of records that waited too long for the lock ----------------------------
    def _queue(self, entry: dict, frames: dict[str, pl.DataFrame]) -> None:
        """Written to a temporary folder and renamed: a queued entry is complete or absent."""
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.pending_dir / f".tmp-{name}"
        tmp.mkdir()
        for table, frame in frames.items():
            frame.write_parquet(tmp / f"{table}.parquet")
        (tmp / "entry.json").write_text(json.dumps(entry))
        tmp.rename(self.pending_dir / name)

    def pending(self) -> list[Path]:
        if not self.pending_dir.is_dir():
            return []
        return sorted(p for p in self.pending_dir.iterdir() if not p.name.startswith("."))

    def _apply_pending(self, con: duckdb.DuckDBPyConnection) -> None:
        for folder in self.pending():
            entry = json.loads((folder / "entry.json").read_text())
            frames = {p.stem: pl.read_parquet(p) for p in folder.glob("*.parquet")}
            _apply(con, entry, frames)
            shutil.rmtree(folder)

    def sync(self) -> int:
        """Apply every queued record now (waiting for the lock as any writer does); how many."""
        queued = len(self.pending())
        with self.connect():
            pass
        return queued

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
        shutil.rmtree(self.pending_dir, ignore_errors=True)  # storage is the truth the queue came from
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


def _apply(con: duckdb.DuckDBPyConnection, entry: dict, frames: dict[str, pl.DataFrame]) -> None:
    if entry["kind"] == "batch":
        _apply_batch(con, entry["crawl_batch"], entry["crawl"], entry["files"], entry["queued_at"])
    else:
        _apply_materialization(
            con, Manifest.from_json(entry["manifest"]), frames.get("documents"), frames.get("removed")
        )


def _apply_batch(con: duckdb.DuckDBPyConnection, crawl_batch: str, crawl: str, files: list[str], when: str) -> None:
    con.execute("BEGIN")
    con.execute("INSERT OR REPLACE INTO crawl_batches VALUES (?, ?, ?, ?)", [crawl_batch, crawl, len(files), when])
    con.executemany(
        "INSERT OR REPLACE INTO crawl_files VALUES (?, ?, ?, ?)", [[path, crawl, crawl_batch, when] for path in files]
    )
    con.execute("COMMIT")


def _apply_materialization(
    con: duckdb.DuckDBPyConnection, manifest: Manifest, documents: pl.DataFrame | None, removed: pl.DataFrame | None
) -> None:
    key = [manifest.asset, manifest.partition]
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


def _table(store: ShardStore, manifest: Manifest, table: str, columns: list[str]) -> pl.DataFrame | None:
    """A table's catalog columns, or None where the asset writes no such table (e.g. a model)."""
    if table not in manifest.tables() or not set(columns) <= set(store.shard_schema(manifest, table)):
        return None
    return pl.concat(list(store.iter_frames(manifest, columns, table)))
