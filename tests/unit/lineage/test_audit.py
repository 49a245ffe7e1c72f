"""Audits over a catalog recorded the way the pipeline records it: two crawl batches, a duplicate,
a rewrite, token shards, two generations of checkpoints and a takedown; and the CLI around them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from resources.cli import main
from resources.common.catalog import LineageCatalog
from resources.common.storage import Manifest, ShardInfo
from resources.lineage import audit
from resources.lineage.checkpoints import checkpoint_record
from resources.settings import PROJECT_ROOT

URL = "https://a.example/story"


def manifest(asset: str, batch: str, tag: str = "1", upstream: Manifest | None = None) -> Manifest:
    """A manifest built on `upstream` (same batch), as the pipeline's manifests name their inputs."""
    inputs = {f"{upstream.asset}[{batch}]": upstream.data_version} if upstream else {}
    return Manifest(asset, batch, [ShardInfo(f"{asset}-{tag}.parquet", 1, 1, tag)], code_version="1-abc", inputs=inputs)


def docs(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "doc_id": [d for d, _ in rows],
            "url": [u for _, u in rows],
            "domain": [u.split("/")[2] for _, u in rows],
            "crawl": ["CC-TEST"] * len(rows),
            "warc_path": [f"/crawl/{u.split('/')[2]}.warc.gz" for _, u in rows],
            "warc_record_id": [f"<urn:uuid:{d}>" for d, _ in rows],
            "fetch_time": [None] * len(rows),
        }
    )


def tokens(catalog: LineageCatalog, asset: str, batch: str, ids: list[str], tag: str, upstream: Manifest) -> str:
    m = manifest(asset, batch, tag, upstream)
    index = pl.DataFrame({"doc_id": ids, "offset": [i * 10 for i in range(len(ids))], "length": [9] * len(ids)})
    index = index.with_columns(split=pl.lit("train"), file=pl.lit(f"tokens-{tag}.bin"))
    catalog.record_materialization(m, token_index=index)
    return m.data_version


def checkpoint(catalog: LineageCatalog, name: str, shards: list[tuple[str, str, str, str]], parent: str | None) -> None:
    files = [{"path": f"/store/{a}/{b}/{f}", "data_version": v, "train_tokens": 9} for a, b, f, v in shards]
    step = {
        "step": 4,
        "created_at": f"2024-06-0{len(name) % 9 + 1}T00:00:00+00:00" if parent is None else "2024-06-09T00:00:00+00:00",
        "tokens_seen": 512,
        "total_tokens_seen": 1024 if parent else 512,
        "data": [
            {"source": source, "weight": 0.5, "files": [f for f in files if (f"/{asset}/" in f["path"])]}
            for source, asset in (("crawl", "token_shards"), ("synthetic", "synthetic_token_shards"))
        ],
        "trained_on": [{"path": f["path"], "data_version": f["data_version"]} for f in files],
        "continued_from": {"path": f"/store/checkpoint/__all__/{parent}", "step": 4} if parent else None,
        "config": {"preset": "tiny", "max_steps": 4},
        "model": {"architecture": "LlamaForCausalLM", "params": 1000},
        "loss_history": [5.0, 4.0],
    }
    found = checkpoint_record(name, step)
    catalog.record_checkpoint(found.row, found.inputs)


@pytest.fixture
def catalog(tmp_path: Path) -> LineageCatalog:
    catalog = LineageCatalog(str(tmp_path / "catalog.duckdb"))
    catalog.record_batch("b1", "CC-TEST", ["/crawl/a.warc.gz"])
    catalog.record_batch("b2", "CC-TEST", ["/crawl/b.warc.gz", "/crawl/c.warc.gz"])
    first_batch = docs([("story", URL), ("other", "https://a.example/o")])
    raw1, raw2 = manifest("raw_documents", "b1"), manifest("raw_documents", "b2")
    dedup1 = manifest("deduplicated_documents", "b1", upstream=raw1)
    dedup2 = manifest("deduplicated_documents", "b2", upstream=raw2)
    catalog.record_materialization(raw1, first_batch)
    catalog.record_materialization(dedup1, first_batch)
    catalog.record_materialization(raw2, docs([("copy", "https://b.example/copy")]))
    removed = pl.DataFrame(
        {"doc_id": ["copy"], "url": ["https://b.example/copy"], "stage": ["dedup"], "rule": ["dedup_near"],
         "detail": ["0.93"], "duplicate_of": ["story"]}
    )  # fmt: skip
    catalog.record_materialization(dedup2, docs([]), removed)
    rewrite = docs([("rewrite", URL)]).with_columns(
        source_doc_id=pl.lit("story"), recipe=pl.lit("encyclopedic"), model=pl.lit("tiny-rewriter")
    )
    synthetic = manifest("synthetic_documents", "b1", upstream=dedup1)
    catalog.record_materialization(synthetic, rewrite)
    v1 = tokens(catalog, "token_shards", "b1", ["story", "other"], "1", dedup1)
    s1 = tokens(catalog, "synthetic_token_shards", "b1", ["rewrite"], "1", synthetic)
    v2b = tokens(catalog, "token_shards", "b2", ["x"], "1", dedup2)
    checkpoint(catalog, "run-aaa/step-000004", [("token_shards", "b1", "tokens-1.bin", v1)], None)
    shards = [
        ("token_shards", "b1", "tokens-1.bin", v1),
        ("synthetic_token_shards", "b1", "tokens-1.bin", s1),
        ("token_shards", "b2", "tokens-1.bin", v2b),
    ]
    checkpoint(catalog, "run-bbb/step-000004", shards, "run-aaa/step-000004")
    request = {"request_id": "req000000001", "created_at": "2024-06-10T00:00:00+00:00", "requested_by": "legal",
               "reason": "site owner asked", "match": "url", "source": "cli:test"}  # fmt: skip
    empty = pl.DataFrame(schema={"request_id": pl.String, "doc_id": pl.String, "url": pl.String, "kind": pl.String,
                                 "similarity": pl.Float64})  # fmt: skip
    catalog.record_takedown(request, [("url", URL)], empty)
    taken = pl.DataFrame(
        {"doc_id": ["story"], "url": [URL], "stage": ["takedown"], "rule": ["takedown_url"],
         "detail": ["req000000001 url"], "duplicate_of": [None]}
    )  # fmt: skip
    catalog.record_materialization(manifest("filtered_documents", "b1", "2"), first_batch.slice(1), taken)
    tokens(catalog, "token_shards", "b1", ["other"], "2", dedup1)
    return catalog


def test_checkpoint_lineage_goes_down_to_warc_files_versions_and_takedowns(catalog: LineageCatalog) -> None:
    with audit.connect(catalog.path) as con:
        latest = audit.checkpoint_lineage(con)
        first = audit.checkpoint_lineage(con, "run-aaa/4")
    assert latest["checkpoint"] == "run-bbb/step-000004" and latest["generation"] == 2
    assert latest["continued_from"] == "run-aaa/step-000004" and first["continued_from"] is None
    sources = {s["source"]: s for s in latest["sources"]}
    assert sources["crawl"]["crawl_batches"] == 2 and sources["crawl"]["documents"] == 3
    assert latest["synthetic_by_recipe"] == [
        {"recipe": "encyclopedic", "model": "tiny-rewriter", "documents": 1, "tokens": 10}
    ]
    assert {b["crawl_batch"]: b["warc_files"] for b in latest["crawl_batches"]} == {
        "b1": ["/crawl/a.warc.gz"],
        "b2": ["/crawl/b.warc.gz", "/crawl/c.warc.gz"],
    }
    chain = next(p for p in latest["partitions"] if p["asset"] == "token_shards" and p["crawl_batch"] == "b1")["chain"]
    assert [c["asset"] for c in chain] == ["token_shards", "deduplicated_documents", "raw_documents"]
    assert [w["request_id"] for w in latest["withdrawn_by"]] == ["req000000001"]
    summary = {row["source"]: row for row in audit.checkpoint_summary(latest)}
    assert summary["crawl"]["data_versions"] == 2 and summary["synthetic"]["documents"] == 1


def test_an_earlier_generation_materialized_again_is_the_latest(catalog: LineageCatalog) -> None:
    """A rerun on the data generation 1 trained on finds its run complete and names it the
    output again: audits and the takedown report then mean generation 1 by "latest"."""
    name = "run-aaa/step-000004"
    with audit.connect(catalog.path) as con:
        (first,) = audit.rows(con, "SELECT * FROM checkpoints WHERE checkpoint = ?", [name])
        inputs = audit.rows(con, "SELECT * EXCLUDE (checkpoint) FROM checkpoint_inputs WHERE checkpoint = ?", [name])
        assert audit.checkpoint_lineage(con)["checkpoint"] == "run-bbb/step-000004"
    catalog.record_checkpoint(first, inputs, output=True)
    with audit.connect(catalog.path) as con:
        again = audit.checkpoint_lineage(con)
    assert again["checkpoint"] == name and again["generation"] == 1
    assert {b["crawl_batch"] for b in again["crawl_batches"]} == {"b1"}  # its inputs kept


def test_url_lineage_follows_the_document_everywhere(catalog: LineageCatalog) -> None:
    with audit.connect(catalog.path) as con:
        answer = audit.url_lineage(con, URL)
        rewrite = audit.doc_lineage(con, "rewrite")
        diff = audit.checkpoint_diff(con, "run-aaa", "run-bbb")
    (story,) = answer["documents"]  # its rewrite carries the URL too, and is listed under it
    assert story["doc_id"] == "story"
    assert story["provenance"]["warc_record_id"] == "<urn:uuid:story>"
    statuses = {(s["asset"], s["status"], s.get("rule")) for s in story["stages"]}
    assert ("filtered_documents", "removed", "takedown_url") in statuses
    assert [d["doc_id"] for d in story["duplicates_of_it"]] == ["copy"]
    assert [s["doc_id"] for s in story["synthetic"]] == ["rewrite"]
    shards = {(t["asset"], t["doc_id"], t["current"]) for t in story["token_shards"]}
    assert shards == {("token_shards", "story", False), ("synthetic_token_shards", "rewrite", True)}
    assert [c["checkpoint"] for c in story["checkpoints"]] == ["run-aaa/step-000004", "run-bbb/step-000004"]
    assert [t["reason"] for t in answer["takedowns"]] == ["site owner asked"]
    assert rewrite["derived_from"] == [{"source_doc_id": "story", "recipe": "encyclopedic", "model": "tiny-rewriter"}]
    crawl = next(s for s in diff["sources"] if s["source"] == "crawl")
    assert crawl["batches_added"] == 1 and crawl["documents_added"] == 1


def test_unknown_checkpoint_url_or_document_is_a_clear_error(
    catalog: LineageCatalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(json.dumps({"catalog": {"path": catalog.path}}))
    for argv, message in (
        (["lineage", "url", "https://never.example/"], "in no crawl batch"),
        (["lineage", "doc", "0" * 32], "in no stage"),
        (["lineage", "checkpoint", "run-nope"], "no checkpoint 'run-nope'"),
        (["lineage", "diff", "run-aaa", "run-nope"], "no checkpoint"),
    ):
        assert main(["--config", str(config), *argv]) == 1
        assert message in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    missing.write_text(json.dumps({"catalog": {"path": str(tmp_path / "none.duckdb")}}))
    assert main(["--config", str(missing), "lineage", "checkpoint"]) == 1
    assert "no lineage catalog" in capsys.readouterr().err
    assert not (tmp_path / "none.duckdb").exists()
    assert main(["--config", str(config), "lineage", "url", URL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["takedowns"][0]["request_id"] == "req000000001"


def test_the_audit_cli_imports_nothing_heavy() -> None:
    heavy = "{'torch', 'transformers', 'dagster', 'polars', 'pydantic', 'vllm', 'fsspec', 'numpy'}"
    probe = f"import sys, resources.cli; print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
