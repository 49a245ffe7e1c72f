"""Filtering, quality scoring, incremental dedup and decontamination as real materializations,
on a planted crawl: an original article, its near and exact copies in a later batch, a page
that quotes the evaluation set, and a batch with no HTML at all."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.dedup import DEDUPED
from assets.filter import FILTERED, QUALITY_CLASSIFIER, SCORED
from definitions import build_definitions
from resources.common.catalog import LineageCatalog
from resources.common.storage import ShardStore
from resources.dedup.index import EarlierBatchNotDeduplicated
from resources.filter.decontamination import DecontaminationSettings
from resources.filter.quality_classifier import QualityModelError
from resources.filter.text_sources import read_documents
from resources.settings import PROJECT_ROOT, Settings
from tests.automation_driver import materialize, materialize_stale, needs_run, new_batches, tick_sensor
from tests.conftest import chain_settings
from tests.warc_factory import html_page, response_record, write_warc

REFERENCE = read_documents(str(PROJECT_ROOT / "data/reference/wikitext2_reference.txt"))
EVAL = read_documents(str(PROJECT_ROOT / "data/eval/wikitext2_valid_small.txt"))
CRAWL = "CC-TEST-2024-01"


def article(index: int) -> list[str]:
    return [p for p in REFERENCE[index].split("\n") if len(p.split()) > 20][:6]


def edited(paragraphs: list[str], every: int) -> list[str]:
    """Every `every`-th word replaced: a near copy (every=20 is a 5% edit)."""
    out = []
    for paragraph in paragraphs:
        words = paragraph.split()
        out.append(" ".join("zebra" if i % every == every - 1 else w for i, w in enumerate(words)))
    return out


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    crawl = tmp_path / "planted"
    crawl.mkdir()
    leak = [*article(3)[:2], next(p for p in EVAL[2].split("\n") if len(p.split()) > 40)]
    write_warc(
        crawl / f"{CRAWL}-00000.warc.gz",
        [
            response_record("https://a.example/original", html_page(*article(0))),
            response_record("https://a.example/other", html_page(*article(1))),
            response_record("https://a.example/leak", html_page(*leak)),
        ],
    )
    write_warc(
        crawl / f"{CRAWL}-00001.warc.gz",
        [
            response_record("https://b.example/near", html_page(*edited(article(0), 20))),
            response_record("https://b.example/exact", html_page(*article(0))),
            response_record("https://b.example/new", html_page(*article(2))),
        ],
    )
    write_warc(
        crawl / f"{CRAWL}-00002.warc.gz",
        [response_record("https://c.example/x.png", b"\x89PNG", content_type="image/png")],
    )
    return crawl


def planted_settings(tmp_path: Path, crawl: Path, **overrides: dict[str, object]) -> Settings:
    sections = {
        "source": {"files_per_partition": 1},
        "evaluation": {"max_tokens_per_set": 20_000, "generation": {"backend": "none"}},
        **overrides,
    }
    return chain_settings(tmp_path, crawl, **sections)


def removed(settings: Settings, **where: str) -> pl.DataFrame:
    clause = " AND ".join(f"{column} = ?" for column in where) or "TRUE"
    return LineageCatalog(settings.catalog.path).query(
        f"SELECT * FROM removed WHERE {clause} ORDER BY url", list(where.values())
    )


def doc_id_of_url(settings: Settings, asset: str, url: str) -> str:
    return (
        LineageCatalog(settings.catalog.path)
        .query("SELECT doc_id FROM documents WHERE asset = ? AND url = ?", [asset, url])
        .item()
    )


def test_chain_removes_with_reasons_and_dedups_across_batches(
    tmp_path: Path, planted: Path, instance: dg.DagsterInstance
) -> None:
    settings = planted_settings(tmp_path, planted)
    defs = build_definitions(settings)
    a, b, c = new_batches(tick_sensor(defs, instance))
    for key in (a, b, c):
        materialize(defs, instance, ["raw_documents", FILTERED], key)
    materialize(defs, instance, [QUALITY_CLASSIFIER])
    for key in (a, b, c):
        materialize(defs, instance, [SCORED], key)

    # Dedup needs the earlier batches first, whatever order runs come in: a clear error, no output.
    with pytest.raises(EarlierBatchNotDeduplicated, match=a):
        materialize(defs, instance, [DEDUPED], b)
    assert ShardStore(settings.storage.root).read_manifest(DEDUPED, b) is None
    for key in (a, b, c):
        materialize(defs, instance, [DEDUPED], key)

    original = doc_id_of_url(settings, "raw_documents", "https://a.example/original")
    dedup = removed(settings, stage="dedup")
    assert dedup.select("url", "rule", "duplicate_of").rows() == [
        ("https://b.example/exact", "dedup_exact", original),
        ("https://b.example/near", "dedup_near", original),
    ]
    assert 0.7 < float(dedup.filter(pl.col("rule") == "dedup_near").get_column("detail").item()) < 1.0
    (leak,) = removed(settings, rule="decontamination_ngram_overlap").rows(named=True)
    assert leak["url"] == "https://a.example/leak" and leak["detail"].startswith("wikitext2_valid:")

    store = ShardStore(settings.storage.root)
    kept = pl.concat(list(store.iter_frames(store.read_manifest(DEDUPED, b))))
    assert kept.get_column("url").to_list() == ["https://b.example/new"]
    assert {"language", "language_score", "quality_score"} <= set(kept.columns)
    assert kept.get_column("language").to_list() == ["en"]
    assert store.read_manifest(DEDUPED, c).rows == 0 and store.read_manifest(FILTERED, c).rows == 0

    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [
            dg.AssetCheckKey(dg.AssetKey(asset), name)
            for asset in (FILTERED, SCORED, DEDUPED)
            for name in ("keep_rate_in_bounds", "no_row_both_kept_and_removed")
        ]
        + [dg.AssetCheckKey(dg.AssetKey(DEDUPED), "dedup_idempotent")]
    )
    assert len(checks) == 7 and all(e.status.value == "SUCCEEDED" for e in checks.values())

    materialize(defs, instance, ["decontamination_report"])
    report = instance.get_latest_materialization_event(dg.AssetKey("decontamination_report")).asset_materialization
    assert report.metadata["removed"].value == 1 and "wikitext2_valid" in report.metadata["by_eval_set"].value

    # Rematerializing an old batch unchanged shifts nothing: same versions, later batch still fresh.
    before = store.read_manifest(DEDUPED, b).data_version
    index_before = store.read_manifest(DEDUPED, a).data_version
    materialize(defs, instance, [DEDUPED], a)
    assert store.read_manifest(DEDUPED, a).data_version == index_before
    assert not needs_run(defs, instance, DEDUPED, b)
    materialize(defs, instance, [DEDUPED], b)
    assert store.read_manifest(DEDUPED, b).data_version == before


def test_settings_stale_only_what_they_shape(tmp_path: Path, planted: Path, instance: dg.DagsterInstance) -> None:
    settings = planted_settings(tmp_path, planted)
    defs = build_definitions(settings)
    tick_sensor(defs, instance)
    materialize_stale(defs, instance)
    keys = instance.get_dynamic_partitions("crawl_batches")
    assert not any(needs_run(defs, instance, asset, k) for asset in (FILTERED, SCORED, DEDUPED) for k in keys)

    # A filter threshold: filtered_documents goes stale, ingest and the rest stay fresh until it changes data.
    stricter = build_definitions(
        planted_settings(tmp_path, planted, filter={"language": {"languages": ["en"], "min_score": 0.99}})
    )
    assert all(needs_run(stricter, instance, FILTERED, k) for k in keys)
    assert not any(needs_run(stricter, instance, "raw_documents", k) for k in keys)
    assert not any(needs_run(stricter, instance, SCORED, k) for k in keys)

    # Retraining the classifier differently restales the scored batches, not the filtered ones.
    retrained = build_definitions(
        planted_settings(
            tmp_path,
            planted,
            quality={"classifier": {"reference_files": ["data/reference/wikitext2_reference.txt"],
                                    "keep_threshold": 0.0, "epoch": 3, "dim": 16}},
        )
    )  # fmt: skip
    assert needs_run(retrained, instance, QUALITY_CLASSIFIER, None)
    materialize(retrained, instance, [QUALITY_CLASSIFIER])
    assert all(needs_run(retrained, instance, SCORED, k) for k in keys)
    assert not any(needs_run(retrained, instance, FILTERED, k) for k in keys)


def test_bad_filter_configuration_fails_clearly(tmp_path: Path, planted: Path, instance: dg.DagsterInstance) -> None:
    with pytest.raises(ValueError, match="xx"):
        build_definitions(planted_settings(tmp_path, planted, filter={"language": {"languages": ["en", "xx"]}}))
    with pytest.raises(Exception, match="missing_eval"):
        build_definitions(
            planted_settings(
                tmp_path, planted, decontamination={"eval_sets": {"missing_eval": str(tmp_path / "no.txt")}}
            )
        )

    corrupt = tmp_path / "quality.bin"
    corrupt.write_bytes(b"\xba\x16\x4f\x2f" + b"not a model" * 10)
    settings = planted_settings(
        tmp_path, planted, quality={"classifier": {"mode": "load", "model_path": str(corrupt), "keep_threshold": 0.5}}
    )
    defs = build_definitions(settings)
    with pytest.raises(QualityModelError, match=str(corrupt)):
        materialize(defs, instance, [QUALITY_CLASSIFIER])
    assert isinstance(settings.decontamination, DecontaminationSettings)
