"""The filter stage's takedown step: which documents each request removes, under which rule and
detail, and the request that names them when several match."""

from __future__ import annotations

import polars as pl

from resources.common.schemas import REMOVED_SCHEMA, removed_rows
from resources.dedup.minhash import SketchSpec, sketch
from resources.lineage.requests import MATCH_SCHEMA, ParsedLines, Pattern, new_request
from resources.lineage.takedown import CONTENT_RULE, URL_RULE, TakedownFilter

SPEC = SketchSpec(ngram=3, bands=32, rows=4, seed=1)
TEXT = " ".join(f"word{i} about the history of the city and its river" for i in range(40))


def frame(rows: list[tuple[str, str | None, str | None, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={"doc_id": pl.String, "url": pl.String, "domain": pl.String, "text": pl.String}, orient="row"
    ).with_columns(crawl_batch=pl.lit("b1"))


def request(patterns: list[Pattern], match: str = "url"):
    sketch_settings = {"ngram": 3, "bands": 32, "rows": 4, "seed": 1, "threshold": 0.5} if match == "content" else None
    return new_request(
        ParsedLines(),
        patterns,
        reason="test",
        match=match,  # type: ignore[arg-type]
        requested_by="tester",
        source="test",
        source_sha256="x",
        sketch=sketch_settings,
    )


def test_url_prefix_and_domain_patterns_remove_their_documents_oldest_request_first() -> None:
    first = request([Pattern("url", "https://a.example/1"), Pattern("domain", "c.example")])
    second = request([Pattern("prefix", "https://a.example/"), Pattern("url", "https://a.example/1")])
    docs = frame(
        [
            ("d1", "https://a.example/1", "a.example", "one"),
            ("d2", "https://a.example/2", "a.example", "two"),
            ("d3", "https://news.c.example/x", "news.c.example", "three"),
            ("d4", "https://notc.example/x", "notc.example", "four"),
            ("d5", None, None, "five"),
        ]
    )
    kept, removed = TakedownFilter([first, second], {}).process(docs)
    assert kept.get_column("doc_id").to_list() == ["d4", "d5"]
    assert removed.select("doc_id", "stage", "rule", "detail").rows() == [
        ("d1", "takedown", URL_RULE, f"{first.request_id} url"),
        ("d2", "takedown", URL_RULE, f"{second.request_id} prefix"),
        ("d3", "takedown", URL_RULE, f"{first.request_id} domain"),
    ]
    assert dict(removed.schema) == REMOVED_SCHEMA


def test_content_requests_remove_copies_by_doc_id_and_near_copies_by_signature() -> None:
    asked = request([Pattern("url", "https://a.example/original")], match="content")
    signature = sketch(pl.Series([TEXT]), SPEC).signatures[0].tolist()
    matches = pl.DataFrame(
        [
            (asked.request_id, "orig", "https://a.example/original", "b0", "source", 1.0, signature),
            (asked.request_id, "dup", "https://b.example/dup", "b0", "duplicate", 0.91, None),
        ],
        schema=MATCH_SCHEMA,
        orient="row",
    )
    edited = TEXT.replace("word7 ", "zebra ").replace("word21 ", "zebra ")
    docs = frame(
        [
            ("orig", "https://mirror.example/copy", "mirror.example", TEXT),  # same text elsewhere
            ("dup", "https://b.example/dup", "b.example", "whatever"),
            ("new", "https://later.example/near", "later.example", edited),  # arrives in a later batch
            ("other", "https://o.example/", "o.example", "an unrelated page about something else entirely"),
        ]
    )
    kept, removed = TakedownFilter([asked], {asked.request_id: matches}).process(docs)
    assert kept.get_column("doc_id").to_list() == ["other"]
    details = dict(removed.select("doc_id", "detail").rows())
    assert set(removed.get_column("rule")) == {CONTENT_RULE}
    assert details["orig"] == f"{asked.request_id} exact"
    assert details["dup"] == f"{asked.request_id} duplicate:0.910"
    assert details["new"].startswith(f"{asked.request_id} near:")
    assert 0.5 <= float(details["new"].split(":")[1]) < 1.0


def test_no_request_keeps_everything_and_the_next_step_sees_only_what_is_kept() -> None:
    docs = frame([("d1", "https://a.example/1", "a.example", "one"), ("d2", "https://b.example/", "b.example", "two")])
    assert TakedownFilter([], {}).process(docs)[0].equals(docs)

    def drop_b(shard: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        gone = shard.filter(pl.col("domain") == "b.example")
        return shard.filter(pl.col("domain") != "b.example"), removed_rows(gone, "filter", "test_rule", "x")

    asked = request([Pattern("url", "https://a.example/1")])
    kept, removed = TakedownFilter([asked], {}).then(drop_b)(docs)
    assert kept.height == 0
    assert removed.select("doc_id", "rule").rows() == [("d1", URL_RULE), ("d2", "test_rule")]
