"""Opening the lineage catalog's DuckDB file, and the lookup keys it indexes.

Kept apart from `catalog.py` (which records materializations with polars and reads storage) so
that an audit from the shell imports nothing but DuckDB: `crawl2ckpt lineage ...` must answer
in under a second, start-up included.

DuckDB locks its file for one writing process at a time. Connections are short-lived and retried
while another process holds the lock, so parallel partition steps can all record into one file
and an audit run during a materialization waits instead of failing.

Lookup keys: URLs and doc ids are found through 64-bit keys (`md5_number_upper(text)` in SQL,
`lookup_key(text)` here: the same number) and the `lookup` table of the batches holding each key
(see catalog.py). Queries write keys and batch numbers as integer literals, which DuckDB can
check against row group statistics before reading: numbers computed here, never text from a
user; the string itself is always compared through a bound parameter.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

LOCK_WAIT_S = 120.0
DEFAULT_PATH = ".data/catalog.duckdb"
KEY_SQL = "md5_number_upper({})"  # DuckDB: the first 8 bytes of the md5, little-endian


class CatalogLocked(RuntimeError):
    pass


@contextmanager
def open_catalog(
    path: str, read_only: bool = False, wait_s: float = LOCK_WAIT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the catalog file, retried while another process holds its lock. A
    read-only open of a file that does not exist yet opens it for writing (DuckDB refuses
    otherwise); callers that must not create one check first."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only and os.path.exists(path))
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() > deadline:
                raise CatalogLocked(
                    f"lineage catalog {path} is locked by another process for over {wait_s:g} s "
                    f"(catalog.lock_timeout_s): {exc}"
                ) from exc
            time.sleep(0.05 + random.random() * 0.2)
    try:
        yield con
    finally:
        con.close()


def lookup_key(text: str) -> int:
    """The catalog's key for a string: equal to DuckDB's `md5_number_upper(text)`."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:8], "little")


def key_literal(text: str) -> str:
    """`lookup_key(text)` as SQL text (an unsigned integer literal), so DuckDB can use the index."""
    return f"{int(lookup_key(text))}::UBIGINT"


def batches_of(con: duckdb.DuckDBPyConnection, text: str) -> list[int]:
    """The numbers of the crawl batches whose rows hold `text` (a URL or a doc id) in a key column."""
    found = con.execute(f"SELECT DISTINCT batch_no FROM lookup WHERE key = {key_literal(text)}").fetchall()
    return sorted(b for (b,) in found)


def keyed(con: duckdb.DuckDBPyConnection, key_column: str, text: str) -> str:
    """A WHERE clause for the rows of a per-document table whose `key_column` is `text`'s key: only
    the row groups of the crawl batches `lookup` names are read. Integers only: the string itself
    must still be compared through a bound parameter (keys may collide)."""
    batches = ", ".join(str(int(b)) for b in batches_of(con, text)) or "NULL"
    return f"batch_no IN ({batches}) AND {key_column} = {key_literal(text)}"
