"""`shard_executor: ray`: the map stages' per-shard work as tasks of a real Ray cluster (a head started
here on a free port, stopped at the end): the same bytes as local mode through ingest, filter,
scoring, dedup and tokenization; a worker killed in the middle of a shard is replaced and the
partition holds only what its manifest names; a cluster that does not answer fails the step at
once, before anything is written.

Ray resolves 127.0.0.1 to the machine's own address and listens on all interfaces; the cluster
lives only for this module, on a random port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import ray
from pydantic import ValidationError

from definitions import build_definitions
from resources.common.executor import RayMapper, RaySettings, RayUnavailable, disconnect
from resources.common.partition_stage import run_partition_stage
from resources.common.storage import MANIFEST_NAME, ShardStore
from resources.common.versioning import OutputVersion
from resources.settings import PROJECT_ROOT, Settings
from tests.automation_driver import materialize, new_batches, tick_sensor
from tests.conftest import chain_settings, one_file_crawl
from tests.integration.ray_tasks import dying_filter

STAGES = [  # (asset, partitioned), in the order they must run
    ("raw_documents", True),
    ("filtered_documents", True),
    ("quality_classifier", False),
    ("scored_documents", True),
    ("deduplicated_documents", True),
    ("tokenizer", False),
    ("token_shards", True),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Ray cluster (2 CPUs) whose workers import this checkout."""
    port, temp = _free_port(), tmp_path_factory.mktemp("ray")
    log = (temp / "head.log").open("wb")
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}"]
    command += ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    command += [f"--temp-dir={temp}"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _answers(port):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{(temp / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        disconnect()
        os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started
        try:
            head.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


def _run_chain(settings: Settings, instance: dg.DagsterInstance) -> dict[str, object]:
    """Every stage on the crawl's one batch: each partition's data version (the hash of its
    files' names and checksums), and the number of raw document shards."""
    defs = build_definitions(settings)
    (key,) = new_batches(tick_sensor(defs, instance))
    for asset, partitioned in STAGES:
        materialize(defs, instance, [asset], key if partitioned else None)
    store = ShardStore(settings.storage.root)
    versions: dict[str, object] = {
        asset: store.read_manifest(asset, key if partitioned else None).data_version for asset, partitioned in STAGES
    }
    versions["raw_shards"] = len(store.read_manifest("raw_documents", key).files)
    return versions


def test_ray_writes_the_same_bytes_as_local(tmp_path: Path, ray_address: str) -> None:
    """Small shards, so every stage runs several tasks: every partition matches local mode."""
    crawl = one_file_crawl(tmp_path)
    versions = {}
    for kind in ("local", "ray"):
        settings = chain_settings(tmp_path / kind, crawl, ingest={"shard_rows": 15})
        settings = settings.model_copy(update={"shard_executor": kind, "ray": RaySettings(address=ray_address)})
        (home := tmp_path / kind / "dagster").mkdir(parents=True)
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            versions[kind] = _run_chain(settings, instance)
    assert versions["local"]["raw_shards"] >= 3
    assert versions["ray"] == versions["local"]


def _upstream(store: ShardStore) -> None:
    frames = [
        pl.DataFrame({"doc_id": [f"{s}-{i}" for i in range(4)], "url": "u", "crawl_batch": "b", "text": texts})
        for s, texts in enumerate([["a", "bb", "ccc", "dddd"], ["kill me", "x", "yy", "zzz"], ["e", "ff", "g", "hh"]])
    ]
    files = [store.write_parquet_shard("upstream", "b", i, frame) for i, frame in enumerate(frames)]
    store.commit(OutputVersion("1", {}).manifest("upstream", "b", "run", files))


def _stage(store: ShardStore, marker: Path, mapper: RayMapper | None) -> dict[str, object]:
    output = run_partition_stage(
        store,
        OutputVersion("1", {}),
        asset="judged",
        upstream="upstream",
        partition="b",
        run_id="run",
        process=partial(dying_filter, str(marker)),
        mapper=mapper,
    )
    return {"version": output.manifest.data_version, "rows_in": output.rows_in, "removed": output.removed_by_rule}


def test_a_killed_worker_is_retried_and_leaves_no_partial_shard(tmp_path: Path, ray_address: str) -> None:
    local, remote = ShardStore(str(tmp_path / "local")), ShardStore(str(tmp_path / "ray"))
    _upstream(local)
    _upstream(remote)
    survived = tmp_path / "local-marker"
    survived.write_text("no kill in local mode")
    expected = _stage(local, survived, None)

    marker = tmp_path / "marker"
    got = _stage(remote, marker, RayMapper(RaySettings(address=ray_address, max_retries=2)))
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker died, and it was not us
    assert got == expected
    manifest = remote.read_manifest("judged", "b")
    on_disk = sorted(p.name for p in (tmp_path / "ray" / "judged" / "b").iterdir())
    assert on_disk == sorted([MANIFEST_NAME, *(f.path for f in manifest.files)])


def test_a_worker_that_keeps_dying_fails_the_stage(tmp_path: Path, ray_address: str) -> None:
    """No retries left: the stage raises and commits nothing."""
    store = ShardStore(str(tmp_path))
    _upstream(store)
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        _stage(store, tmp_path / "marker", RayMapper(RaySettings(address=ray_address, max_retries=0)))
    assert store.read_manifest("judged", "b") is None


def test_an_address_that_does_not_answer_fails_before_any_work(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    crawl = one_file_crawl(tmp_path)
    dead = f"127.0.0.1:{_free_port()}"
    settings = chain_settings(tmp_path, crawl).model_copy(
        update={"shard_executor": "ray", "ray": RaySettings(address=dead, connect_timeout_s=5)}
    )
    defs = build_definitions(settings)
    (key,) = new_batches(tick_sensor(defs, instance))
    started = time.monotonic()
    with pytest.raises(RayUnavailable, match=f"Ray cluster at {dead} does not answer"):
        materialize(defs, instance, ["raw_documents"], key)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "store" / "raw_documents").exists()


def test_ray_needs_an_address() -> None:
    with pytest.raises(ValidationError, match=r"ray\.address must be host:port"):
        Settings.model_validate({"shard_executor": "ray"})
    with pytest.raises(ValidationError, match=r"ray\.address must be host:port"):
        Settings.model_validate({"shard_executor": "ray", "ray": {"address": "head-without-port"}})
