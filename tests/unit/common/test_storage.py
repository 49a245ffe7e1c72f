"""Atomic shards and manifests, locally and over the S3 protocol (moto server on loopback)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.reports import REPORT
from definitions import build_definitions
from resources.common.catalog import LineageCatalog
from resources.common.storage import MANIFEST_NAME, Manifest, ShardStore
from resources.evaluate.history import RESULTS, read_history
from resources.ingest.sources import BatchRegistry
from resources.settings import Settings
from tests.automation_driver import materialize, materialize_stale, needs_run, new_batches, tick_sensor
from tests.conftest import SAMPLE_DIR, chain_settings, one_file_crawl


def frame(n: int, offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"doc_id": [f"d{i}" for i in range(offset, offset + n)], "text": ["x"] * n})


def commit(store: ShardStore, frames: list[pl.DataFrame], partition: str = "p1") -> Manifest:
    shards = [store.write_parquet_shard("a", partition, i, f) for i, f in enumerate(frames)]
    return store.commit(Manifest(asset="a", partition=partition, files=shards))


def test_manifest_is_the_commit_point(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    first = commit(store, [frame(3), frame(2, 3)])
    assert first.rows == 5 and len(first.files) == 2

    # A run that dies after writing a shard but before its manifest: readers see the old data.
    store.write_parquet_shard("a", "p1", 0, frame(7, 100))
    current = store.read_manifest("a", "p1")
    assert current.data_version == first.data_version
    assert pl.concat(list(store.iter_frames(current))).height == 5

    # The next commit collects the orphan; no temporary files are ever left behind.
    second = commit(store, [frame(4)])
    names = sorted(p.name for p in (tmp_path / "a" / "p1").iterdir())
    assert names == sorted([MANIFEST_NAME, *(f.path for f in second.files)])


def test_data_version_depends_on_content_only(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    one = commit(store, [frame(3)])
    again = commit(store, [frame(3)])
    assert one.data_version == again.data_version
    assert commit(store, [frame(4)]).data_version != one.data_version
    relabelled = Manifest(asset="a", partition="p1", files=one.files, code_version="other", run_id="r2")
    assert relabelled.data_version == one.data_version


def test_manifest_round_trip(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    manifest = commit(store, [frame(2)])
    manifest_json = (tmp_path / "a" / "p1" / MANIFEST_NAME).read_text()
    assert Manifest.from_json(manifest_json).data_version == manifest.data_version
    assert [m.partition for m in store.iter_manifests("a")] == ["p1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    # moto keeps its buckets in process-wide state: each test starts from an empty S3.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).close()
    try:
        yield url
    finally:
        server.stop()


def test_ingest_from_and_to_s3(tmp_path: Path, instance: dg.DagsterInstance, s3_endpoint: str) -> None:
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "use_listings_cache": False}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("crawls")
    fs.mkdir("lake")
    for path in sorted(SAMPLE_DIR.iterdir())[:2]:
        fs.put_file(str(path), f"crawls/CC-SAMPLE-2024-22/{path.name}")
    settings = Settings.model_validate(
        {
            "storage": {"root": "s3://lake/c2c", "storage_options": options},
            "catalog": {"path": str(tmp_path / "catalog.duckdb")},
            "source": {"url": "s3://crawls/CC-SAMPLE-2024-22", "storage_options": options},
            "ingest": {"workers": 1},
        }
    )
    defs = build_definitions(settings)
    (key,) = new_batches(tick_sensor(defs, instance))
    assert materialize(defs, instance, ["raw_documents"], key).success
    store = ShardStore("s3://lake/c2c", options)
    manifest = store.read_manifest("raw_documents", key)
    documents = pl.concat(list(store.iter_frames(manifest)))
    assert documents.height == manifest.rows > 0
    assert documents.get_column("warc_path").str.starts_with("s3://crawls/").all()
    assert not [p for p in fs.find("lake") if "/.tmp-" in p]


def test_crawl_to_report_on_s3(
    tmp_path: Path, instance: dg.DagsterInstance, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stage with its shards, models and checkpoints on S3: training and evaluation work on
    local mirrors (memory maps and PyTorch need local files) and publish back."""
    import s3fs

    monkeypatch.setenv("CRAWL2CKPT_CACHE", str(tmp_path / "cache"))
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "use_listings_cache": False}
    s3fs.S3FileSystem(**options).mkdir("lake")
    settings = chain_settings(
        tmp_path,
        one_file_crawl(tmp_path),
        storage={"root": "s3://lake/c2c", "storage_options": options},
        tokenizer={"vocab_size": 600},
        training={"max_steps": 4, "checkpoint_every": 2, "seq_len": 32, "micro_batch_size": 4},
        evaluation={"max_tokens_per_set": 5_000, "generation": {"backend": "transformers", "max_tokens": 4}},
    )
    defs = build_definitions(settings)
    tick_sensor(defs, instance)
    materialize_stale(defs, instance)
    store = ShardStore("s3://lake/c2c", options)
    checkpoint = store.read_manifest("checkpoint", None)
    weights = f"{store.partition_dir('checkpoint', None)}/{checkpoint.stats['checkpoint']}/model.safetensors"
    assert store.fs.size(weights) == next(f.bytes for f in checkpoint.files if f.path.endswith("model.safetensors"))
    results = read_history(store, RESULTS)
    assert results.get_column("checkpoint").unique().to_list() == [checkpoint.stats["checkpoint"]]
    assert "Training loss" in store.read_bytes(f"{store.partition_dir(REPORT, None)}/report.html").decode()
    assert not needs_run(defs, instance, REPORT, None)
    # Another machine recreates the lineage catalog from the bucket alone.
    rebuilt = LineageCatalog(str(tmp_path / "rebuilt.duckdb"))
    rebuilt.rebuild(store, BatchRegistry(store).all_specs())
    count = "SELECT count(*) FROM documents"
    assert rebuilt.query(count).item() == LineageCatalog(settings.catalog.path).query(count).item() > 0
