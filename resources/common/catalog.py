"""The lineage catalog: an embedded DuckDB file indexing crawl files, partitions, documents,
shards, token shards, checkpoints and takedown requests, so audits ("which WARC records built
checkpoint X?", "which checkpoints saw URL Y?") are a few SQL lookups.

It is a derived index, never the source of truth: the manifests, batch specs, checkpoint
manifests and takedown records in storage are, and `rebuild` recreates the catalog from them.

DuckDB lets one process write a file at a time. A writer waits for the lock at most
`lock_timeout_s`; a step whose data is already committed never fails for the catalog: what it
would have recorded is queued beside the file (`<catalog>.pending/`) and applied, in order, by
the next write that gets the lock (or by `crawl2ckpt sync-catalog`).

Layout for audits in well under a second on 10 M documents (measured in bench/lineage.py):
DuckDB skips row groups by their min/max ("zonemaps"), not by hashing, and an ART index is read
whole on first use (seconds at that size). So:
- every row of the per-document tables (documents, removed, synthetic, token_index) carries the
  number of its crawl batch (`batch_no`, in registration order) and 64-bit keys of its URL and
  doc ids (`*_key`, see catalog_file.py). Rows arrive one partition at a time, so a batch's rows
  sit together and `batch_no = n` reads only that batch's row groups;
- `lookup` maps every key to the batches holding it, sorted by key (compacted when its unsorted
  tail grows past COMPACT_MIN_TAIL rows and a quarter of the table), so a lookup reads one row
  group plus the tail. A URL or doc id is two lookups: its batches, then its rows there.
Token index rows of a data version a checkpoint trained on are kept after the partition is
rematerialized (e.g. after a takedown), so "did checkpoint X see document Y?" stays answerable
at document level; rows of versions no checkpoint names are replaced.
"""

from __future__ import annotations

import json
import os
import posixpath
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

from resources.common.catalog_file import DEFAULT_PATH, KEY_SQL, CatalogLocked, keyed, open_catalog
from resources.common.config import Section
from resources.common.schemas import (
    DOCUMENTS,
    PROVENANCE_COLUMNS,
    REMOVED,
    REMOVED_COLUMNS,
    SYNTHETIC_LINEAGE_COLUMNS,
    TOKEN_INDEX,
    TOKENS,
    TRAIN,
)
from resources.common.storage import Manifest, ShardStore

__all__ = ["CatalogLocked", "CatalogSettings", "LineageCatalog"]

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
    warc_path VARCHAR, warc_record_id VARCHAR, fetch_time TIMESTAMPTZ, data_version VARCHAR,
    batch_no INTEGER, url_key UBIGINT, doc_key UBIGINT);
CREATE TABLE IF NOT EXISTS removed (
    doc_id VARCHAR, asset VARCHAR, crawl_batch VARCHAR, url VARCHAR, stage VARCHAR, rule VARCHAR,
    detail VARCHAR, duplicate_of VARCHAR, data_version VARCHAR,
    batch_no INTEGER, url_key UBIGINT, doc_key UBIGINT, duplicate_key UBIGINT);
CREATE TABLE IF NOT EXISTS synthetic (
    doc_id VARCHAR, source_doc_id VARCHAR, recipe VARCHAR, model VARCHAR, asset VARCHAR, crawl_batch VARCHAR,
    data_version VARCHAR, batch_no INTEGER, doc_key UBIGINT, source_key UBIGINT);
CREATE TABLE IF NOT EXISTS token_index (
    doc_id VARCHAR, source_doc_id VARCHAR, asset VARCHAR, crawl_batch VARCHAR, file VARCHAR, "offset" BIGINT,
    length BIGINT, split VARCHAR, data_version VARCHAR, batch_no INTEGER, doc_key UBIGINT, source_key UBIGINT);
CREATE TABLE IF NOT EXISTS token_files (
    asset VARCHAR, crawl_batch VARCHAR, file VARCHAR, data_version VARCHAR, documents BIGINT,
    train_documents BIGINT, tokens BIGINT, train_tokens BIGINT);
CREATE TABLE IF NOT EXISTS checkpoints (
    checkpoint VARCHAR PRIMARY KEY, run VARCHAR, step INTEGER, created_at TIMESTAMPTZ, continued_from VARCHAR,
    tokens_seen BIGINT, total_tokens_seen BIGINT, final_loss DOUBLE, config JSON, model JSON);
CREATE TABLE IF NOT EXISTS checkpoint_inputs (
    checkpoint VARCHAR, source VARCHAR, asset VARCHAR, crawl_batch VARCHAR, file VARCHAR, data_version VARCHAR,
    train_tokens BIGINT, inherited BOOLEAN);
-- Every time the checkpoint asset named a checkpoint its output. A rerun on data an earlier
-- generation trained on (a second takedown that removes what the first let back in) finds that
-- generation's run complete and makes it current again, without training a new one.
CREATE TABLE IF NOT EXISTS checkpoint_outputs (checkpoint VARCHAR, materialized_at TIMESTAMPTZ);
CREATE VIEW IF NOT EXISTS checkpoint_recency AS SELECT c.checkpoint,
    greatest(c.created_at, coalesce(o.materialized_at, c.created_at)) AS current_at FROM checkpoints c
    LEFT JOIN (SELECT checkpoint, max(materialized_at) AS materialized_at FROM checkpoint_outputs GROUP BY ALL) o
    USING (checkpoint);
CREATE TABLE IF NOT EXISTS takedowns (
    request_id VARCHAR PRIMARY KEY, created_at TIMESTAMPTZ, requested_by VARCHAR, reason VARCHAR, match VARCHAR,
    source VARCHAR, record JSON);
CREATE TABLE IF NOT EXISTS takedown_patterns (request_id VARCHAR, kind VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS takedown_matches (
    request_id VARCHAR, doc_id VARCHAR, url VARCHAR, kind VARCHAR, similarity DOUBLE, doc_key UBIGINT);
CREATE TABLE IF NOT EXISTS partition_numbers (crawl_batch VARCHAR PRIMARY KEY, batch_no INTEGER);
CREATE TABLE IF NOT EXISTS lookup (key UBIGINT, batch_no INTEGER);
CREATE TABLE IF NOT EXISTS catalog_info (name VARCHAR PRIMARY KEY, value BIGINT);
-- One row per run is kept in `materializations` (the history); this is the current one of each
-- asset partition, the one to count.
CREATE VIEW IF NOT EXISTS current_materializations AS SELECT * FROM materializations
    QUALIFY row_number() OVER (PARTITION BY asset, crawl_batch ORDER BY created_at DESC, run_id DESC) = 1;
"""

# (table, key column, the string column it is computed from). Every key of a per-document table
# goes into `lookup` with its batch number.
KEYS: list[tuple[str, str, str]] = [
    ("documents", "url_key", "url"),
    ("documents", "doc_key", "doc_id"),
    ("removed", "url_key", "url"),
    ("removed", "doc_key", "doc_id"),
    ("removed", "duplicate_key", "duplicate_of"),
    ("synthetic", "doc_key", "doc_id"),
    ("synthetic", "source_key", "source_doc_id"),
    ("token_index", "doc_key", "doc_id"),
    ("token_index", "source_key", "source_doc_id"),
    ("takedown_matches", "doc_key", "doc_id"),
]
PER_BATCH = ("documents", "removed", "synthetic", "token_index")
# What a synthetic document adds to its provenance in the catalog (the `synthetic` table).
SYNTHETIC_COLUMNS: list[str] = ["doc_id", *SYNTHETIC_LINEAGE_COLUMNS]
# `lookup` is sorted again when its unsorted tail is this long and a quarter of the sorted part:
# a lookup scans the tail whole (about 10 ms per million rows).
COMPACT_MIN_TAIL = 1_000_000
# Catalog files this process has brought up to date (schema, queued records) once.
_UP_TO_DATE: set[str] = set()


def _key_columns(table: str) -> str:
    return "".join(f", {KEY_SQL.format(source)} AS {key}" for t, key, source in KEYS if t == table)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create what is missing; a catalog from before the lookup columns gets them in place."""
    con.execute(SCHEMA)
    existing = set(con.execute("SELECT table_name, column_name FROM duckdb_columns()").fetchall())
    if all((table, key) in existing for table, key, _ in KEYS):
        return
    con.execute("BEGIN")
    for table in PER_BATCH:
        if (table, "batch_no") not in existing:
            con.execute(f"ALTER TABLE {table} ADD COLUMN batch_no INTEGER")
    for table, key, source in KEYS:
        if (table, key) not in existing:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {key} UBIGINT")
            con.execute(f"UPDATE {table} SET {key} = {KEY_SQL.format(source)}")
    seen = " UNION ".join(f"SELECT crawl_batch FROM {table}" for table in PER_BATCH)
    con.execute(
        "INSERT INTO partition_numbers SELECT crawl_batch, (SELECT coalesce(max(batch_no), 0) FROM partition_numbers)"
        f" + row_number() OVER (ORDER BY registered_at NULLS LAST, crawl_batch) FROM ({seen}) LEFT JOIN crawl_batches"
        " USING (crawl_batch) WHERE crawl_batch NOT IN (SELECT crawl_batch FROM partition_numbers)"
    )
    for table in PER_BATCH:
        con.execute(
            f"UPDATE {table} SET batch_no = p.batch_no FROM partition_numbers p"
            f" WHERE {table}.crawl_batch = p.crawl_batch AND {table}.batch_no IS NULL"
        )
        for t, key, _ in KEYS:
            if t == table:
                con.execute(f"INSERT INTO lookup SELECT DISTINCT {key}, batch_no FROM {table} WHERE {key} IS NOT NULL")
    con.execute("COMMIT")
    _compact_lookup(con, force=True)


class CatalogSettings(Section):
    path: str = DEFAULT_PATH
    lock_timeout_s: float = Field(
        default=120.0, gt=0, description="how long a writer waits for another process's DuckDB lock"
    )


class LineageCatalog:
    """Short-lived connections, retried while another process holds DuckDB's file lock, so
    parallel partition steps can all record into one file."""

    def __init__(self, path: str, lock_timeout_s: float = 120.0) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self.pending_dir = Path(path + ".pending")

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, once DuckDB's file lock is free; `CatalogLocked` after `lock_timeout_s`.
        A write connection (or the first one, which creates the file) first brings the schema up
        to date and applies what earlier writers queued."""
        read_only = read_only and self.path in _UP_TO_DATE  # a reader's first use may migrate the schema
        writes = not (read_only and os.path.exists(self.path))
        with open_catalog(self.path, read_only, self.lock_timeout_s) as con:
            if writes:
                ensure_schema(con)
                self._apply_pending(con)
                _UP_TO_DATE.add(self.path)
            yield con

    # -- recording ---------------------------------------------------------------------
    def record_batch(self, crawl_batch: str, crawl: str, files: list[str]) -> bool:
        """True when recorded now, False when queued because another process held the catalog."""
        return self._record({"kind": "batch", "crawl_batch": crawl_batch, "crawl": crawl, "files": files}, {})

    def record_materialization(
        self,
        manifest: Manifest,
        documents: pl.DataFrame | None = None,
        removed: pl.DataFrame | None = None,
        token_index: pl.DataFrame | None = None,
    ) -> bool:
        """Replace everything known about this asset partition with what the manifest says.
        `documents` holds PROVENANCE_COLUMNS (and SYNTHETIC_COLUMNS for rewrites), `removed`
        REMOVED_COLUMNS, `token_index` a token shard index with the `file` each row indexes.
        True when recorded now, False when queued because another process held the catalog."""
        given = (("documents", documents), ("removed", removed), ("token_index", token_index))
        frames = {name: frame for name, frame in given if frame is not None}
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

    def record_checkpoint(
        self, checkpoint: dict[str, object], inputs: list[dict[str, object]], output: bool = False
    ) -> None:
        """A checkpoint (one step directory) and the token shard files it trained on, as
        `resources.lineage.checkpoints` reads them from its manifest; `output`: the checkpoint
        asset materializes it now (it is the latest, however long ago it was trained)."""
        with self.connect() as con:
            con.execute("BEGIN")
            if output:
                con.execute("INSERT INTO checkpoint_outputs VALUES (?, current_timestamp)", [checkpoint["checkpoint"]])
            con.execute("DELETE FROM checkpoint_inputs WHERE checkpoint = ?", [checkpoint["checkpoint"]])
            columns = list(checkpoint)
            con.execute(
                f"INSERT OR REPLACE INTO checkpoints ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [checkpoint[c] for c in columns],
            )
            if inputs:
                frame = pl.DataFrame(inputs).with_columns(checkpoint=pl.lit(checkpoint["checkpoint"]))
                con.register("incoming", frame.to_arrow())
                con.execute("INSERT INTO checkpoint_inputs BY NAME SELECT * FROM incoming")
                con.unregister("incoming")
            con.execute("COMMIT")

    def record_takedown(
        self, request: dict[str, object], patterns: list[tuple[str, str]], matches: pl.DataFrame
    ) -> None:
        """A takedown request (its record as stored), its patterns (kind, value) and the documents
        its content matching resolved to (request_id, doc_id, url, kind, similarity)."""
        request_id = request["request_id"]
        with self.connect() as con:
            con.execute("BEGIN")
            for table in ("takedowns", "takedown_patterns", "takedown_matches"):
                con.execute(f"DELETE FROM {table} WHERE request_id = ?", [request_id])
            con.execute(
                "INSERT INTO takedowns VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    request_id,
                    request["created_at"],
                    request["requested_by"],
                    request["reason"],
                    request["match"],
                    request["source"],
                    json.dumps(request),
                ],
            )
            con.executemany(
                "INSERT INTO takedown_patterns VALUES (?, ?, ?)",
                [[request_id, kind, value] for kind, value in patterns],
            )
            if matches.height:
                con.register("incoming", matches.to_arrow())
                con.execute(
                    f"INSERT INTO takedown_matches BY NAME SELECT *{_key_columns('takedown_matches')} FROM incoming"
                )
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
        with self.connect(read_only=True) as con:
            where = keyed(con, "url_key", url)
            found = con.sql(
                "SELECT url, doc_id, asset, crawl_batch, crawl, warc_path, warc_record_id, fetch_time, data_version"
                f" FROM documents WHERE {where} AND url = ? ORDER BY asset, crawl_batch",
                params=[url],
            )
            return pl.from_arrow(found.to_arrow_table())

    # -- rebuilding --------------------------------------------------------------------
    def rebuild(self, store: ShardStore, batches: dict[str, dict]) -> dict[str, int]:
        """Recreate the catalog from storage: batch specs and every manifest (checkpoints and
        takedown requests are added by `resources.lineage.rebuild`)."""
        Path(self.path).unlink(missing_ok=True)
        Path(self.path + ".wal").unlink(missing_ok=True)
        shutil.rmtree(self.pending_dir, ignore_errors=True)  # storage is the truth the queue came from
        for key, spec in sorted(batches.items()):
            self.record_batch(key, spec["crawl"], spec["files"])
        counts = {"crawl_batches": len(batches), "materializations": 0, "documents": 0, "token_index": 0}
        manifests = list(store.iter_manifests())
        # Token shards last: their synthetic rows take their source from the `synthetic` table.
        for manifest in sorted(manifests, key=lambda m: TOKEN_INDEX in m.tables()):
            documents = _table(store, manifest, DOCUMENTS, PROVENANCE_COLUMNS)
            if documents is not None and set(SYNTHETIC_COLUMNS) <= set(store.shard_schema(manifest)):
                documents = _table(store, manifest, DOCUMENTS, PROVENANCE_COLUMNS + SYNTHETIC_COLUMNS[1:])
            removed = _table(store, manifest, REMOVED, REMOVED_COLUMNS)
            index = token_index_frame(store, manifest) if TOKEN_INDEX in manifest.tables() else None
            counts["documents"] += 0 if documents is None else documents.height
            counts["token_index"] += 0 if index is None else index.height
            self.record_materialization(manifest, documents, removed, index)
            counts["materializations"] += 1
        with self.connect() as con:
            _compact_lookup(con, force=True)
        return counts

    def compact(self) -> None:
        """Sort `lookup` now (rebuild does; recording does when its tail is long)."""
        with self.connect() as con:
            _compact_lookup(con, force=True)


def token_index_frame(store: ShardStore, manifest: Manifest) -> pl.DataFrame:
    """A token partition's index rows (doc_id, offset, length, split) with the tokens `file` each
    row indexes: shard files pair up by their number, as the trainer pairs them."""
    tokens = sorted(f.path for f in manifest.files if f.table == TOKENS)
    indexes = sorted(f.path for f in manifest.files if f.table == TOKEN_INDEX)
    directory = store.partition_dir(manifest.asset, manifest.partition)
    frames = [
        store.read_shard(posixpath.join(directory, index), ["doc_id", "offset", "length", "split"]).with_columns(
            file=pl.lit(file)
        )
        for file, index in zip(tokens, indexes, strict=True)
    ]
    empty = {"doc_id": pl.String, "offset": pl.Int64, "length": pl.Int64, "split": pl.String, "file": pl.String}
    return pl.concat(frames) if frames else pl.DataFrame(schema=empty)


def _batch_no(con: duckdb.DuckDBPyConnection, crawl_batch: str) -> int:
    """The partition's number, given on first sight (registration order for crawl batches)."""
    con.execute(
        "INSERT INTO partition_numbers SELECT ?, (SELECT coalesce(max(batch_no), 0) + 1 FROM partition_numbers)"
        " WHERE NOT EXISTS (SELECT 1 FROM partition_numbers WHERE crawl_batch = ?)",
        [crawl_batch, crawl_batch],
    )
    return con.execute("SELECT batch_no FROM partition_numbers WHERE crawl_batch = ?", [crawl_batch]).fetchone()[0]


def _insert(con: duckdb.DuckDBPyConnection, table: str, select: str, params: list[object], batch_no: int) -> None:
    """Rows of `select` (the table's columns but keys and batch number) into a per-document table,
    and their keys into `lookup`."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE incoming_rows AS SELECT *{_key_columns(table)} FROM ({select})", params)
    con.execute(f"INSERT INTO {table} BY NAME SELECT *, ? AS batch_no FROM incoming_rows", [batch_no])
    keys = " UNION ".join(f"SELECT {key} AS key FROM incoming_rows" for t, key, _ in KEYS if t == table)
    con.execute(f"INSERT INTO lookup SELECT key, ? FROM ({keys}) WHERE key IS NOT NULL", [batch_no])
    con.execute("DROP TABLE incoming_rows")


def _insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, manifest: Manifest) -> None:
    incoming = frame.with_columns(
        asset=pl.lit(manifest.asset), crawl_batch=pl.lit(manifest.partition), data_version=pl.lit(manifest.data_version)
    )
    con.register("incoming", incoming.to_arrow())
    _insert(con, table, "SELECT * FROM incoming", [], _batch_no(con, manifest.partition))
    con.unregister("incoming")


def _replace_token_index(con: duckdb.DuckDBPyConnection, manifest: Manifest, index: pl.DataFrame) -> None:
    """The partition's new index rows and per-file counts. Rows of earlier data versions stay while
    a checkpoint names them; a synthetic document's row carries its source document, from the
    `synthetic` rows of the partition this one was tokenized from."""
    key = [manifest.asset, manifest.partition]
    batch_no = _batch_no(con, manifest.partition)
    for table, batch in (("token_index", "batch_no = ? AND "), ("token_files", "")):
        con.execute(
            f"DELETE FROM {table} WHERE {batch}asset = ? AND crawl_batch = ? AND (data_version = ? OR data_version"
            " NOT IN (SELECT data_version FROM checkpoint_inputs WHERE asset = ? AND crawl_batch = ?))",
            [*([batch_no] if batch else []), *key, manifest.data_version, *key],
        )
    upstream = [name.split("[", 1)[0] for name in manifest.inputs if name.endswith(f"[{manifest.partition}]")]
    incoming = index.select("doc_id", "file", "offset", "length", "split").with_columns(
        asset=pl.lit(manifest.asset), crawl_batch=pl.lit(manifest.partition), data_version=pl.lit(manifest.data_version)
    )
    con.register("incoming_index", incoming.to_arrow())
    _insert(
        con,
        "token_index",
        "SELECT i.*, s.source_doc_id FROM incoming_index i LEFT JOIN (SELECT doc_id, source_doc_id FROM synthetic"
        " WHERE batch_no = ? AND list_contains(?, asset)) s USING (doc_id)",
        [batch_no, upstream],
        batch_no,
    )
    con.execute(
        "INSERT INTO token_files SELECT asset, crawl_batch, file, data_version, count(*), count(*) FILTER (split = ?),"
        " sum(length + 1), coalesce(sum(length + 1) FILTER (split = ?), 0) FROM incoming_index GROUP BY ALL",
        [TRAIN, TRAIN],
    )
    con.unregister("incoming_index")


def _compact_lookup(con: duckdb.DuckDBPyConnection, force: bool = False) -> None:
    """Sort `lookup` by key (and drop repeated entries) when its unsorted tail has grown long."""
    total = con.execute("SELECT count(*) FROM lookup").fetchone()[0]
    found = con.execute("SELECT value FROM catalog_info WHERE name = 'lookup_sorted_rows'").fetchone()
    tail = total - (found[0] if found else 0)
    if force or tail > max(COMPACT_MIN_TAIL, total // 4):
        con.execute("CREATE OR REPLACE TABLE lookup AS SELECT DISTINCT * FROM lookup ORDER BY key, batch_no")
        sorted_rows = con.execute("SELECT count(*) FROM lookup").fetchone()[0]
        con.execute("INSERT OR REPLACE INTO catalog_info VALUES ('lookup_sorted_rows', ?)", [sorted_rows])


def _apply(con: duckdb.DuckDBPyConnection, entry: dict, frames: dict[str, pl.DataFrame]) -> None:
    if entry["kind"] == "batch":
        _apply_batch(con, entry["crawl_batch"], entry["crawl"], entry["files"], entry["queued_at"])
    else:
        manifest = Manifest.from_json(entry["manifest"])
        _apply_materialization(con, manifest, frames.get("documents"), frames.get("removed"), frames.get("token_index"))


def _apply_batch(con: duckdb.DuckDBPyConnection, crawl_batch: str, crawl: str, files: list[str], when: str) -> None:
    con.execute("BEGIN")
    con.execute("INSERT OR REPLACE INTO crawl_batches VALUES (?, ?, ?, ?)", [crawl_batch, crawl, len(files), when])
    con.executemany(
        "INSERT OR REPLACE INTO crawl_files VALUES (?, ?, ?, ?)", [[path, crawl, crawl_batch, when] for path in files]
    )
    _batch_no(con, crawl_batch)
    con.execute("COMMIT")


def _apply_materialization(
    con: duckdb.DuckDBPyConnection,
    manifest: Manifest,
    documents: pl.DataFrame | None,
    removed: pl.DataFrame | None,
    token_index: pl.DataFrame | None,
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
    synthetic = documents if documents is not None and "source_doc_id" in documents.columns else None
    for table, frame, columns in (
        ("documents", documents, PROVENANCE_COLUMNS),
        ("removed", removed, REMOVED_COLUMNS),
        ("synthetic", synthetic, SYNTHETIC_COLUMNS),
    ):
        if frame is not None:
            # batch_no first: only the batch's row groups are read
            con.execute(
                f"DELETE FROM {table} WHERE batch_no = ? AND asset = ? AND crawl_batch = ?",
                [_batch_no(con, manifest.partition), *key],
            )
            _insert_frame(con, table, frame.select(columns), manifest)
    if token_index is not None:
        _replace_token_index(con, manifest, token_index)
    con.execute("COMMIT")
    _compact_lookup(con)


def _table(store: ShardStore, manifest: Manifest, table: str, columns: list[str]) -> pl.DataFrame | None:
    """A table's catalog columns, or None where the asset writes no such table (e.g. a model)."""
    if table not in manifest.tables() or not set(columns) <= set(store.shard_schema(manifest, table)):
        return None
    return pl.concat(list(store.iter_frames(manifest, columns, table)))
