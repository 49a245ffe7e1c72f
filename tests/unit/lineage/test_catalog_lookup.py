"""The catalog's layout for fast audits: keys equal in Python and SQL, lookups by batch, a compacted
lookup table, token index history kept while checkpoints name it, and old catalogs refused."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

import resources.common.catalog as catalog_module
from resources.common.catalog import LineageCatalog
from resources.common.catalog_file import batches_of, lookup_key
from resources.common.storage import Manifest, ShardInfo
from resources.lineage.checkpoints import checkpoint_record


def manifest(asset: str, partition: str, tag: str = "1", inputs: dict[str, str] | None = None) -> Manifest:
    return Manifest(asset, partition, [ShardInfo(f"part-{tag}.parquet", 1, 1, tag)], inputs=inputs or {})


def documents(prefix: str, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "doc_id": [f"{prefix}{i:04d}" for i in range(n)],
            "url": [f"https://{prefix}.example/{i}" for i in range(n)],
            "domain": [f"{prefix}.example"] * n,
            "crawl": ["CC-TEST"] * n,
            "warc_path": [f"/crawl/{prefix}.warc.gz"] * n,
            "warc_record_id": [f"<urn:uuid:{prefix}-{i}>" for i in range(n)],
            "fetch_time": [None] * n,
        }
    )


def test_python_and_sql_keys_agree() -> None:
    texts = ["https://a.example/page?x=1", "0f" * 16, "", "ünïcode/ページ", "quote'or'1'='1"]
    sql = duckdb.sql("SELECT md5_number_upper(t) FROM unnest(?) AS u(t)", params=[texts]).fetchall()
    assert [lookup_key(t) for t in texts] == [k for (k,) in sql]


def test_lookups_name_the_batches_holding_a_key_and_compaction_sorts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "COMPACT_MIN_TAIL", 10)
    catalog = LineageCatalog(str(tmp_path / "catalog.duckdb"))
    for batch in ("b1", "b2", "b3"):
        catalog.record_batch(batch, "CC-TEST", [f"/crawl/{batch}.warc.gz"])
    for batch, prefix in (("b1", "a"), ("b2", "b"), ("b3", "c")):
        catalog.record_materialization(manifest("raw_documents", batch), documents(prefix, 30))
    # the same document in a later stage and another batch: both batches are named
    catalog.record_materialization(manifest("filtered_documents", "b3"), documents("a", 2))
    with catalog.connect(read_only=True) as con:
        assert batches_of(con, "a0001") == [1, 3]
        assert batches_of(con, "https://b.example/4") == [2]
        assert batches_of(con, "https://never.example/") == []
        keys = [k for (k,) in con.execute("SELECT key FROM lookup").fetchall()]
        sorted_rows = con.execute("SELECT value FROM catalog_info WHERE name = 'lookup_sorted_rows'").fetchone()[0]
    # compacted on the way (tail > 10 rows): sorted and without repeats up to its last compaction
    assert keys[:sorted_rows] == sorted(set(keys[:sorted_rows]))
    found = catalog.find_url("https://a.example/1")
    assert sorted(found.get_column("crawl_batch").to_list()) == ["b1", "b3"]


def test_token_index_versions_stay_while_a_checkpoint_names_them(tmp_path: Path) -> None:
    catalog = LineageCatalog(str(tmp_path / "catalog.duckdb"))
    synthetic = documents("s", 2).with_columns(
        source_doc_id=pl.Series(["a0000", "a0001"]), recipe=pl.lit("encyclopedic"), model=pl.lit("tiny")
    )
    catalog.record_materialization(manifest("synthetic_documents", "b1"), synthetic)

    def tokens(tag: str, ids: list[str], asset: str = "token_shards") -> str:
        m = manifest(asset, "b1", tag, {f"{'synthetic_documents' if 'synthetic' in asset else 'dedup'}[b1]": "x"})
        index = pl.DataFrame(
            {"doc_id": ids, "offset": [0] * len(ids), "length": [5] * len(ids), "split": ["train"] * len(ids)}
        ).with_columns(file=pl.lit(f"tokens-{tag}.bin"))
        catalog.record_materialization(m, token_index=index)
        return m.data_version

    v1 = tokens("1", ["a0000", "a0001"])
    step = {
        "step": 4,
        "trained_on": [{"path": "/store/token_shards/b1/tokens-1.bin", "data_version": v1}],
        "data": [],
        "config": {"max_steps": 4},
    }
    found = checkpoint_record("run-x/step-000004", step)
    catalog.record_checkpoint(found.row, found.inputs)
    v2 = tokens("2", ["a0001"])  # a takedown removed a0000
    v3 = tokens("3", ["a0001", "a0002"])
    versions = catalog.query("SELECT DISTINCT data_version FROM token_index WHERE asset = 'token_shards'")
    assert set(versions.get_column("data_version")) == {v1, v3}  # v2: no checkpoint named it
    assert v2 not in set(catalog.query("SELECT data_version FROM token_files").get_column("data_version"))
    tokens("1", ["s0000", "s0001"], asset="synthetic_token_shards")
    sources = catalog.query("SELECT doc_id, source_doc_id FROM token_index WHERE asset = 'synthetic_token_shards'")
    assert sorted(sources.rows()) == [("s0000", "a0000"), ("s0001", "a0001")]


def test_a_catalog_from_before_the_lookup_keys_gets_them_in_place(tmp_path: Path) -> None:
    path = str(tmp_path / "old.duckdb")
    with duckdb.connect(path) as con:
        con.execute(
            "CREATE TABLE documents (doc_id VARCHAR, asset VARCHAR, crawl_batch VARCHAR, url VARCHAR, domain VARCHAR,"
            " crawl VARCHAR, warc_path VARCHAR, warc_record_id VARCHAR, fetch_time TIMESTAMPTZ, data_version VARCHAR)"
        )
        con.execute("INSERT INTO documents (doc_id, asset, crawl_batch, url) VALUES ('d1', 'raw', 'b9', 'https://a/')")
    catalog = LineageCatalog(path)
    assert catalog.find_url("https://a/").get_column("doc_id").to_list() == ["d1"]
    catalog.record_materialization(manifest("raw_documents", "b10"), documents("z", 1))
    assert catalog.query("SELECT crawl_batch, batch_no FROM partition_numbers ORDER BY 2").rows() == [
        ("b9", 1),
        ("b10", 2),
    ]
