"""Faults a team meets over weeks, through real Dagster materializations: a bad partition key, a
sensor that died half-way through registering, a fresh instance on old storage, hostile crawl
file names, a catalog reader holding DuckDB's lock, and two instances writing one partition."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from definitions import build_definitions
from resources.common.catalog import LineageCatalog
from resources.common.storage import MANIFEST_NAME, ShardStore, UnsafeName
from resources.ingest.sources import BatchRegistry, plan_batches
from resources.settings import PROJECT_ROOT, Settings
from tests.automation_driver import materialize, new_batches, tick_sensor
from tests.conftest import SAMPLE_DIR, chain_settings, make_settings
from tests.unit.common.test_catalog_lock import hold_catalog


def registered(instance: dg.DagsterInstance) -> list[str]:
    return instance.get_dynamic_partitions("crawl_batches")


def assert_manifests_sound(root: Path) -> None:
    """Every manifest names files that exist, with their sha256; nothing else sits beside them."""
    for path in root.glob("*/*/" + MANIFEST_NAME):
        body = json.loads(path.read_text())
        named = {f["path"].split("/", 1)[0] for f in body["files"]}
        for info in body["files"]:
            assert hashlib.sha256((path.parent / info["path"]).read_bytes()).hexdigest() == info["sha256"]
        assert {p.name for p in path.parent.iterdir()} <= named | {MANIFEST_NAME}, path.parent


def test_partition_key_leaving_its_folder_fails_before_writing(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    """The key that once made filtered_documents overwrite raw_documents' manifest and delete its shard."""
    defs = build_definitions(settings)
    (first, *_) = new_batches(tick_sensor(defs, instance))
    assert materialize(defs, instance, ["raw_documents"], first).success
    store = ShardStore(settings.storage.root)
    raw = store.read_manifest("raw_documents", first)
    evil = f"../raw_documents/{first}"
    instance.add_dynamic_partitions("crawl_batches", [evil])
    with pytest.raises(UnsafeName, match="partition key"):
        materialize(defs, instance, ["filtered_documents"], evil)
    assert store.read_manifest("raw_documents", first) == raw
    assert_manifests_sound(Path(settings.storage.root))
    assert not (Path(settings.storage.root) / "filtered_documents").exists()


def test_batches_registered_by_a_tick_that_died_are_adopted(settings: Settings, instance: dg.DagsterInstance) -> None:
    """The registry was written, the process died before Dagster added the partitions: the next
    tick adds them and requests their runs; nothing is registered twice."""
    defs = build_definitions(settings)
    registry = defs.resources["storage"].batches()
    files = sorted(str(p) for p in Path(settings.source.url).iterdir())
    registry.register(plan_batches(files, settings.source.files_per_partition, None, set()))
    assert registered(instance) == []
    tick = tick_sensor(defs, instance)
    assert sorted(new_batches(tick)) == sorted(registered(instance)) == registry.batch_keys()
    assert len(registry.all_specs()) == len(registered(instance))
    # Ingest of an adopted batch works like any other.
    assert materialize(defs, instance, ["raw_documents"], registered(instance)[0]).success


def test_a_fresh_instance_on_old_storage_adopts_every_batch(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    defs = build_definitions(settings)
    first = tick_sensor(defs, instance)
    (tmp_path / "second_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "second_home")) as fresh:
        adopted = tick_sensor(defs, fresh)
        assert registered(fresh) == registered(instance)
        assert new_batches(adopted) == new_batches(first)


def test_hostile_crawl_file_names(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """Spaces, unicode, `..` inside names and a symbolic link loop in the source folder: the loop
    is skipped with its reason, the others become safe keys and keep their real names as provenance."""
    crawl = tmp_path / "crawl dir"
    crawl.mkdir()
    sample = sorted(SAMPLE_DIR.iterdir())
    names = [
        "CC-SAMPLE-2024-22 with spaces.warc.gz",
        "CC-SAMPLE-2024-22-ünïcödé.warc.gz",
        "CC-SAMPLE-2024-22..x.warc.gz",
    ]
    for name, source in zip(names, sample, strict=True):
        shutil.copy(source, crawl / name)
    (crawl / "loop-a.warc.gz").symlink_to(crawl / "loop-b.warc.gz")
    (crawl / "loop-b.warc.gz").symlink_to(crawl / "loop-a.warc.gz")
    (crawl / "..warc.gz").symlink_to(crawl / "loop-a.warc.gz")
    settings = make_settings(tmp_path, crawl)
    settings = settings.model_copy(update={"source": settings.source.model_copy(update={"files_per_partition": 1})})
    defs = build_definitions(settings)
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = defs.get_repository_def().get_sensor_def("crawl_sensor")(context)
    keys = new_batches(result)
    assert len(keys) == 3
    instance.add_dynamic_partitions("crawl_batches", keys)
    store = ShardStore(settings.storage.root)
    for key in keys:
        assert store.partition_dir("raw_documents", key)  # a safe key
        assert materialize(defs, instance, ["raw_documents"], key).success
    manifests = [store.read_manifest("raw_documents", key) for key in keys]
    paths = pl.concat([frame for m in manifests for frame in store.iter_frames(m, ["warc_path"])])
    assert sorted(Path(p).name for p in paths.get_column("warc_path").unique()) == sorted(names)
    assert "loop" not in json.dumps(BatchRegistry(store).index())
    assert_manifests_sound(Path(settings.storage.root))


def test_loop_and_listing_skips_are_logged(
    tmp_path: Path, instance: dg.DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "loop.warc.gz").symlink_to(crawl / "loop.warc.gz")
    defs = build_definitions(make_settings(tmp_path, crawl))
    result = tick_sensor(defs, instance)
    assert not new_batches(result)
    assert "loop.warc.gz': unreadable (symbolic link loop)" in capfd.readouterr().err


def test_reader_holding_the_catalog_never_fails_committed_work(
    tmp_path: Path, crawl_dir: Path, instance: dg.DagsterInstance
) -> None:
    """Someone keeps the catalog open in the DuckDB shell: the ingest run still succeeds (its data
    is committed), the record waits in the queue, and the next catalog write applies it."""
    raw = {
        "storage": {"root": str(tmp_path / "store")},
        "catalog": {"path": str(tmp_path / "catalog.duckdb"), "lock_timeout_s": 1},
        "source": {"url": str(crawl_dir)},
        "ingest": {"workers": 1},
    }
    settings = Settings.model_validate(raw).resolved()
    defs = build_definitions(settings)
    keys = new_batches(tick_sensor(defs, instance))
    holder = hold_catalog(settings.catalog.path, "read", 120)
    try:
        result = materialize(defs, instance, ["raw_documents"], keys[0])
        assert result.success
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
        assert any("stayed locked by another process for 1 s: this record is queued" in m for m in messages)
    finally:
        holder.kill()
        holder.wait()
    catalog = LineageCatalog(settings.catalog.path)
    assert len(catalog.pending()) == 1
    assert catalog.sync() == 1
    manifest = ShardStore(settings.storage.root).read_manifest("raw_documents", keys[0])
    assert catalog.query("SELECT count(*) FROM documents WHERE crawl_batch = ?", [keys[0]]).item() == manifest.rows


TWO_INSTANCES = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from definitions import build_definitions
    from tests.automation_driver import materialize
    from resources.settings import Settings
    settings = Settings.model_validate_json(open(sys.argv[1]).read())
    defs = build_definitions(settings)
    with dg.DagsterInstance.from_config(sys.argv[2]) as instance:
        instance.add_dynamic_partitions("crawl_batches", [sys.argv[3]])
        print("success" if materialize(defs, instance, ["raw_documents"], sys.argv[3]).success else "failed")
    """
)


def test_two_instances_ingest_one_partition_at_once(tmp_path: Path, crawl_dir: Path) -> None:
    """Two Dagster instances (two teams' daemons, say) materialize the same partition against one
    storage root and catalog at the same moment: one waits for the other, both succeed with
    identical bytes, the manifest names only sound files, and the counts take one of them."""
    settings = chain_settings(tmp_path, crawl_dir)
    spec = tmp_path / "settings.json"
    spec.write_text(settings.model_dump_json())
    store = ShardStore(settings.storage.root)
    registry = BatchRegistry(store)
    batch = plan_batches([str(p) for p in sorted(crawl_dir.iterdir())[:1]], 1, None, set())
    registry.register(batch)
    key = batch[0].key
    homes = [tmp_path / f"home{i}" for i in range(2)]
    for home in homes:
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-c", TWO_INSTANCES, str(spec)]
    runs = [
        subprocess.Popen([*command, str(home), key], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for home in homes
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert [out.split()[-1] for out in outputs] == ["success", "success"]
    assert_manifests_sound(Path(settings.storage.root))
    catalog = LineageCatalog(settings.catalog.path)
    versions = catalog.query("SELECT DISTINCT data_version FROM materializations WHERE asset = 'raw_documents'")
    assert versions.height == 1
    assert catalog.query("SELECT count(*) FROM materializations").item() == 2
    current = catalog.query("SELECT rows FROM current_materializations WHERE asset = 'raw_documents'")
    assert current.rows() == [(store.read_manifest("raw_documents", key).rows,)]


def test_crawl_file_gone_between_tick_and_ingest(settings: Settings, instance: dg.DagsterInstance) -> None:
    """The batch whose file vanished fails alone, naming the file and why, and writes nothing;
    the other batch ingests."""
    defs = build_definitions(settings)
    keys = new_batches(tick_sensor(defs, instance))
    store = ShardStore(settings.storage.root)
    gone = BatchRegistry(store).spec(keys[0])["files"][0]
    Path(gone).unlink()
    with pytest.raises(FileNotFoundError, match=f"{gone}: gone since the crawl sensor registered it"):
        materialize(defs, instance, ["raw_documents"], keys[0])
    assert store.read_manifest("raw_documents", keys[0]) is None
    assert not list((Path(settings.storage.root) / "raw_documents" / keys[0]).glob("*"))
    assert materialize(defs, instance, ["raw_documents"], keys[1]).success
