"""A content takedown resolved against a real store and catalog: the requested URL's document, the
one deduplication removed as its duplicate, a near copy kept in another batch's dedup index
segment; recorded append-only; and applied by the filter step to a batch that arrives later."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from resources.common.catalog import LineageCatalog
from resources.common.schemas import PROVENANCE_COLUMNS
from resources.common.storage import ShardStore
from resources.common.versioning import OutputVersion
from resources.dedup.engine import NearDedup
from resources.dedup.index import INDEX
from resources.dedup.settings import DedupSettings
from resources.lineage.requests import read_requests
from resources.lineage.takedown import CONTENT_RULE, URL_RULE, TakedownFilter, submit

ARTICLE = " ".join(
    f"the harbour of the old town number {i} was rebuilt after the flood of the year {1900 + i}" for i in range(30)
)


def near_copy(text: str, every: int) -> str:
    return " ".join("zebra" if i % every == every - 1 else w for i, w in enumerate(text.split()))


def documents(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={"doc_id": pl.String, "url": pl.String, "text": pl.String}, orient="row")
    return frame.with_columns(
        domain=pl.col("url").str.extract(r"https://([^/]+)/"),
        crawl=pl.lit("CC-TEST"),
        warc_path=pl.lit("/crawl/x.warc.gz"),
        warc_record_id=pl.format("<urn:uuid:{}>", pl.col("doc_id")),
        fetch_time=pl.lit(None, pl.Datetime("us", "UTC")),
    )


def test_content_takedown_finds_copies_records_them_and_the_filter_removes_later_ones(tmp_path: Path) -> None:
    store, catalog = ShardStore(str(tmp_path / "store")), LineageCatalog(str(tmp_path / "catalog.duckdb"))
    settings = DedupSettings(workers=1)
    batches = {
        "b1": [("orig", "https://a.example/article", ARTICLE), ("other", "https://a.example/x", "something else")],
        "b2": [("dup", "https://b.example/copy", near_copy(ARTICLE, 30))],
        "b3": [("kept", "https://c.example/mirror", near_copy(ARTICLE, 20))],
    }
    version = OutputVersion("test")
    for batch, rows in batches.items():
        docs = documents(rows)
        raw = store.commit(
            version.manifest(
                "raw_documents", batch, "run", [store.write_parquet_shard("raw_documents", batch, 0, docs)]
            )
        )
        catalog.record_materialization(raw, docs.select(PROVENANCE_COLUMNS))
        kept = docs.filter(pl.col("doc_id") != "dup")
        with NearDedup(settings) as engine:
            segment = engine.dedup_partition([kept.select("doc_id", "text")], []).segment.to_frame()
        files = [store.write_parquet_shard("deduplicated_documents", batch, 0, segment, INDEX)]
        removed = pl.DataFrame(
            {"doc_id": ["dup"], "url": ["https://b.example/copy"], "stage": ["dedup"], "rule": ["dedup_near"],
             "detail": ["0.8667"], "duplicate_of": ["orig"]}
        ) if batch == "b2" else None  # fmt: skip
        dedup = store.commit(version.manifest("deduplicated_documents", batch, "run", files))
        catalog.record_materialization(dedup, kept.select(PROVENANCE_COLUMNS), removed)

    done = submit(
        store,
        catalog,
        b"https://a.example/article\n",
        reason="copyright",
        match="content",
        requested_by="legal",
        source="cli:test",
        spec=settings.spec,
        threshold=settings.min_similarity,
    )
    assert done.request is not None and done.crawl_batches == ["b1", "b2", "b3"]
    assert done.content_matches == {"source": 1, "duplicate": 1, "near": 1}
    ((request, matches),) = read_requests(store)
    assert request.request_id == done.request.request_id and request.sketch["id"] == settings.spec.sketch_id
    assert dict(matches.select("doc_id", "kind").rows()) == {"orig": "source", "dup": "duplicate", "kept": "near"}
    assert matches.filter(pl.col("kind") != "source").get_column("signature").null_count() == 2  # no copy kept
    assert catalog.query("SELECT count(*) FROM takedown_matches").item() == 3

    # The same request again is a no-op; a batch arriving later loses its own near copy too.
    again = submit(store, catalog, b"https://a.example/article\n", reason="x", match="content", requested_by="legal",
                   source="cli:test", spec=settings.spec, threshold=settings.min_similarity)  # fmt: skip
    assert again.request is None and again.refused == {"already_requested": 1} and len(read_requests(store)) == 1
    later = documents(
        [("late", "https://d.example/late", near_copy(ARTICLE, 15)), ("fine", "https://d.example/ok", "unrelated")]
    ).with_columns(crawl_batch=pl.lit("b4"))
    kept, removed = TakedownFilter.load(store).process(later)
    assert kept.get_column("doc_id").to_list() == ["fine"]
    assert removed.get_column("rule").to_list() == [CONTENT_RULE]
    assert removed.get_column("detail").item().startswith(f"{done.request.request_id} near:")
    assert URL_RULE not in removed.get_column("rule").to_list()
