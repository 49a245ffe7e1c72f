"""Lineage audits and a takedown on the shipped sample, through the whole graph (rewriting with the
tiny model behind a real vLLM server): audits name the WARC records the files hold; taking down a
trained URL that has a rewrite and a near copy in a later batch recomputes its batch's partitions,
deduplicates the later batches again (only the copy's batch changes: the copy is kept now) and the
corpus-wide assets after them, and leaves nothing of it in any output; `--match content` then
removes the copy too."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from assets.dedup import DEDUPED
from assets.filter import FILTERED, SCORED
from assets.reports import TAKEDOWN_REPORT
from assets.rewrite import SYNTHETIC
from assets.tokenize import TOKEN_SHARDS
from definitions import SYNTHETIC_TOKEN_SHARDS, build_definitions
from resources.cli import main
from resources.common.catalog import LineageCatalog
from resources.common.storage import ShardStore
from tests.automation_driver import materialize_stale, needs_run, new_batches, tick_sensor
from tests.conftest import chain_settings
from tests.warc_factory import html_page, response_record, write_warc

pytestmark = pytest.mark.vllm

PER_BATCH = [FILTERED, SCORED, DEDUPED, SYNTHETIC, TOKEN_SHARDS, SYNTHETIC_TOKEN_SHARDS]
CORPUS = [  # recomputed after a takedown; the quality classifier and tokenizer are kept (automation.py)
    "training_mixture",
    "checkpoint",
    "evaluation",
    "model_comparison",
    "decontamination_report",
    "report",
    TAKEDOWN_REPORT,
]
MIRROR = "https://mirror.example/copied-article"


def audit(config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    assert main(["--config", str(config), "lineage", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def takedown(config: Path, capsys: pytest.CaptureFixture[str], url: str, *args: str) -> dict:
    path = config.parent / "takedown.txt"
    path.write_text(url + "\n")
    capsys.readouterr()
    assert main(["--config", str(config), "takedown", "--urls", str(path), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def warc_record_ids(path: str) -> dict[str, str]:
    """URL -> WARC-Record-ID of the response records, read from the file itself."""
    with open(path, "rb") as stream:
        return {
            r.headers["WARC-Target-URI"]: r.headers["WARC-Record-ID"]
            for r in ArchiveIterator(stream, record_types=WarcRecordType.response)
        }


def versions(store: ShardStore, batches: list[str]) -> dict[tuple[str, str], str]:
    return {(a, b): store.read_manifest(a, b).data_version for a in PER_BATCH for b in batches}


def test_audits_and_a_takedown_that_recomputes_only_what_it_touches(
    tmp_path: Path,
    crawl_dir: Path,
    instance: dg.DagsterInstance,
    tiny_model: Path,
    vllm_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = chain_settings(
        tmp_path,
        crawl_dir,
        source={"files_per_partition": 1},
        rewrite={
            "model": {"source": "hf_dir", "path": str(tiny_model)},
            "backend": "endpoint",
            "endpoint": {"url": vllm_server, "served_model": str(tiny_model), "timeout_s": 120},
            "max_model_len": 512,
            "recipes": {"encyclopedic": {"sampling": {"max_tokens": 8}, "selection": {"sample_fraction": 1.0}}},
            "post_filter": {"drop_truncated": False},
        },
        tokenizer={"vocab_size": 600},
        token_shards={"validation_fraction": 0.1},
        training={"max_steps": 4, "checkpoint_every": 4, "seq_len": 32, "micro_batch_size": 4, "warmup_steps": 1},
        evaluation={"max_tokens_per_set": 20_000, "generation": {"backend": "none"}},
    )
    config = tmp_path / "settings.yaml"
    config.write_text(json.dumps(settings.model_dump()))
    defs = build_definitions(settings)
    catalog, store = LineageCatalog(settings.catalog.path), settings.storage.store()
    tick_sensor(defs, instance)
    materialize_stale(defs, instance)

    # The URL to take down: a document of the first batch that reached training and has a rewrite.
    first = instance.get_dynamic_partitions("crawl_batches")[0]
    doc_id, url, rewrite = catalog.query(
        "SELECT t.doc_id, d.url, s.doc_id AS rewrite FROM token_index t JOIN documents d ON d.doc_id = t.doc_id"
        " AND d.asset = 'raw_documents' JOIN synthetic s ON s.source_doc_id = t.doc_id"
        " WHERE t.asset = ? AND t.crawl_batch = ? AND t.split = 'train' ORDER BY t.doc_id LIMIT 1",
        [TOKEN_SHARDS, first],
    ).row(0)
    # A near copy of it arrives in a new crawl file: a later batch, where dedup removes it.
    text = pl.concat(list(store.iter_frames(store.read_manifest("raw_documents", first), ["doc_id", "text"])))
    paragraphs = text.filter(pl.col("doc_id") == doc_id).get_column("text").item().split("\n")
    edited = [" ".join("zebra" if i % 25 == 24 else w for i, w in enumerate(p.split())) for p in paragraphs]
    write_warc(crawl_dir / "CC-SAMPLE-2024-22-00003.warc.gz", [response_record(MIRROR, html_page(*edited))])
    (mirror_batch,) = new_batches(tick_sensor(defs, instance))
    materialize_stale(defs, instance)
    batches = instance.get_dynamic_partitions("crawl_batches")
    (copy,) = catalog.query("SELECT doc_id, rule, duplicate_of FROM removed WHERE url = ?", [MIRROR]).rows()
    assert copy[1:] == ("dedup_near", doc_id)

    # Audits: the WARC record ids are those in the files; the checkpoint names every batch and file.
    before = audit(config, capsys, "url", url)
    (document,) = before["documents"]
    origin = document["provenance"]
    assert warc_record_ids(origin["warc_path"])[url] == origin["warc_record_id"]
    assert [s["doc_id"] for s in document["synthetic"]] == [rewrite]
    assert [d["url"] for d in document["duplicates_of_it"]] == [MIRROR]
    trained_before = {c["checkpoint"] for c in document["checkpoints"]}
    assert len(trained_before) == 2  # both generations, before and after the mirror's batch arrived
    lineage = audit(config, capsys, "checkpoint")
    # every batch with tokens (dedup left none in the mirror's batch, so no checkpoint names it)
    assert {b["crawl_batch"] for b in lineage["crawl_batches"]} == set(batches) - {mirror_batch}
    for batch in lineage["crawl_batches"]:
        assert batch["warc_files"] == sorted(ShardStore(settings.storage.root).read_json(
            store.path("crawl_batches", f"{batch['crawl_batch']}.json"))["files"])  # fmt: skip
    assert {s["source"] for s in lineage["sources"]} == {"crawl", "synthetic"}
    old = versions(store, batches)

    # Take the URL down: only its batch's partitions and the corpus-wide assets after them recompute.
    request = takedown(config, capsys, url, "--reason", "site owner request")
    assert request["recorded"] and request["crawl_batches"] == [first]
    tick_sensor(defs, instance, name="takedown_sensor")
    done = materialize_stale(defs, instance)
    # Deduplication is first-seen-wins across batches, so every later batch is deduplicated again
    # against the changed history (automation's earlier_batch_changed); only the mirror's batch
    # changes: its copy is a duplicate of nothing kept any more (`--match url` takes down the URL,
    # not its content), and its stages after dedup follow. Every other batch keeps its versions.
    later, after_dedup = [b for b in batches if b != first], [SYNTHETIC, TOKEN_SHARDS, SYNTHETIC_TOKEN_SHARDS]
    required = {(a, first) for a in PER_BATCH} | {(DEDUPED, b) for b in later} | {(a, None) for a in CORPUS}
    assert required <= set(done) <= required | {(a, mirror_batch) for a in after_dedup}
    new = versions(store, batches)
    assert {k for k in old if old[k] != new[k]} <= {(a, first) for a in PER_BATCH} | {
        (a, mirror_batch) for a in [DEDUPED, *after_dedup]
    }
    assert all(old[(a, b)] == new[(a, b)] for a in PER_BATCH for b in batches if b not in (first, mirror_batch))
    assert catalog.query("SELECT doc_id FROM documents WHERE url = ? AND asset = ?", [MIRROR, DEDUPED]).height == 1

    # Nothing of it is left: stages, rewrite, token shards, the latest checkpoint; the report proves it.
    kept = catalog.query(
        "SELECT asset FROM documents WHERE (url = ? OR doc_id IN (?, ?)) AND asset <> 'raw_documents'",
        [url, doc_id, rewrite],
    )
    assert kept.height == 0
    after = audit(config, capsys, "url", url)
    assert [t["reason"] for t in after["takedowns"]] == ["site owner request"]
    (document,) = after["documents"]
    assert not any(t["current"] for t in document["token_shards"])
    assert {c["checkpoint"] for c in document["checkpoints"]} == trained_before  # history, not the new one
    latest = audit(config, capsys, "checkpoint")["checkpoint"]
    assert latest not in trained_before
    report = instance.get_latest_materialization_event(dg.AssetKey(TAKEDOWN_REPORT)).asset_materialization
    assert report.metadata["left_in_outputs"].value == 0
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(TAKEDOWN_REPORT), "nothing_left")]
    )
    assert all(e.status.value == "SUCCEEDED" for e in check.values())
    assert request["request_id"] in report.metadata["requests_table"].value

    # --match content: the near copy under the other URL goes too, from its own batch's filter on.
    content = takedown(config, capsys, url, "--match", "content", "--reason", "and every copy")
    # The copy is kept now, so the dedup index finds it (deduplication's removal of it is gone).
    assert content["content_matches"].get("near") == 1
    tick_sensor(defs, instance, name="takedown_sensor")
    done = materialize_stale(defs, instance)
    assert {b for _, b in done if b} == {first, mirror_batch}
    assert {a for a, b in done if b == first} == {FILTERED}  # same output: the URL request still names it
    removed = catalog.query("SELECT stage, rule, detail FROM removed WHERE url = ?", [MIRROR]).rows()
    assert removed == [("takedown", "takedown_content", f"{content['request_id']} near:{copy_similarity(catalog)}")]
    assert not needs_run(defs, instance, TAKEDOWN_REPORT, None)
    report = instance.get_latest_materialization_event(dg.AssetKey(TAKEDOWN_REPORT)).asset_materialization
    assert report.metadata["requests"].value == 2
    assert report.metadata["left_in_outputs"].value == 0, report.metadata["requests_table"].value


def copy_similarity(catalog: LineageCatalog) -> str:
    """How the content request resolved the copy: its estimated similarity, as its removal recorded it."""
    similarity = catalog.query("SELECT similarity FROM takedown_matches WHERE url = ?", [MIRROR]).item()
    return f"{similarity:.3f}"
