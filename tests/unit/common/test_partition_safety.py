"""What keeps one asset partition's files safe: keys that cannot leave their folder, one writer at
a time (real processes, SIGKILL included, locally and on S3 via moto), and temporary files of
dead writers collected."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from resources.common.partition_lock import PartitionLocked
from resources.common.storage import MANIFEST_NAME, TMP_PREFIX, Manifest, ShardStore, UnsafeName
from resources.ingest.sources import BatchRegistry
from resources.settings import PROJECT_ROOT
from tests.unit.common.test_storage import s3_endpoint  # noqa: F401 - the moto server fixture

BAD_KEYS = [
    "../raw_documents/CC-SAMPLE-2024-22-00000",
    "..",
    ".",
    "",
    "a/b",
    "a\\b",
    ".hidden",
    "nul\0byte",
    "/etc",
    "x" * 201,
    "space key",
    "ünïcode",
]


def frame(n: int, label: str = "x") -> pl.DataFrame:
    return pl.DataFrame({"doc_id": [f"{label}{i}" for i in range(n)], "text": [label] * n})


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_partition_key_fails_before_anything_is_written(tmp_path: Path, key: str) -> None:
    store = ShardStore(str(tmp_path / "store"))
    raw = store.write_parquet_shard("raw_documents", "CC-SAMPLE-2024-22-00000", 0, frame(3))
    store.commit(Manifest("raw_documents", "CC-SAMPLE-2024-22-00000", [raw]))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeName, match="partition key"):
        store.write_parquet_shard("filtered_documents", key, 0, frame(2))
    with pytest.raises(UnsafeName):
        store.commit(Manifest("filtered_documents", key, []))
    with pytest.raises(UnsafeName), store.writing("filtered_documents", key, "test"):
        pass
    with pytest.raises(UnsafeName):
        BatchRegistry(store).spec(key)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_unsafe_asset_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeName, match="asset"):
        ShardStore(str(tmp_path)).partition_dir("../elsewhere", "p1")


def test_partition_folder_linked_outside_its_asset_is_refused(tmp_path: Path) -> None:
    """A safe-looking key whose folder is a symbolic link out of the asset's folder."""
    store = ShardStore(str(tmp_path / "store"))
    (tmp_path / "store" / "raw_documents").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "store" / "raw_documents" / "p1").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeName, match="outside"):
        store.write_parquet_shard("raw_documents", "p1", 0, frame(1))
    assert not any((tmp_path / "outside").iterdir())


def test_keys_the_sensor_makes_are_safe(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    for key in ["CC-MAIN-2024-22.CC-MAIN-20240518-00000", "crawl_1-a..b", "__all__", "-x"]:
        assert store.partition_dir("raw_documents", key).endswith(f"/raw_documents/{key}")


def test_temporary_files_of_a_dead_writer_are_collected(tmp_path: Path) -> None:
    """A writer killed inside `write_bytes` leaves `.tmp-*`; the next commit of the partition
    removes those older than its own writing, and never one another write may still be filling."""
    store = ShardStore(str(tmp_path))
    directory = tmp_path / "a" / "p1"
    directory.mkdir(parents=True)
    dead = directory / f"{TMP_PREFIX}0123-part-00000-abc.parquet"
    dead.write_bytes(b"half a shard")
    old = time.time() - 3600
    os.utime(dead, (old, old))
    with store.writing("a", "p1", "test"):
        shard = store.write_parquet_shard("a", "p1", 0, frame(3))
        live = directory / f"{TMP_PREFIX}4567-part-00001-def.parquet"
        live.write_bytes(b"being written")
        store.commit(Manifest("a", "p1", [shard]))
    assert sorted(p.name for p in directory.iterdir()) == sorted([MANIFEST_NAME, shard.path, live.name])


# -- two writers, real processes ------------------------------------------------------------------
def start_writer(
    root: Path, label: str, shards: int, pause_s: float, timeout_s: float = 60, release: Path | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.partition_writer", str(root), "a", "p1", label, str(shards), str(pause_s),
         str(timeout_s), *([str(release)] if release else [])],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_line(process: subprocess.Popen, text: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never printed: {''.join(lines)}")


def assert_manifest_names_existing_files(root: Path) -> Manifest:
    manifest = Manifest.from_json((root / "a" / "p1" / MANIFEST_NAME).read_text())
    for info in manifest.files:
        data = (root / "a" / "p1" / info.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info.sha256, info.path
    return manifest


def test_two_writers_on_one_partition_take_turns(tmp_path: Path) -> None:
    """Different content from each writer (two configs): the second waits, says for whom, then
    commits; the manifest names only files that exist with their sha256, all of one writer."""
    root = tmp_path / "store"
    release = tmp_path / "release"
    first = start_writer(root, "first", shards=3, pause_s=0.5, release=release)
    wait_for_line(first, "holding")
    second = start_writer(root, "second", shards=3, pause_s=0.0)
    waited = wait_for_line(second, "waiting for writer first")  # the first holds until released
    release.touch()
    first_out, _ = first.communicate(timeout=120)
    second_out, _ = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first_out + second_out
    assert "waiting for writer first" in "".join(waited)
    manifest = assert_manifest_names_existing_files(root)
    assert manifest.run_id == "second"
    assert {name for name in os.listdir(root / "a" / "p1")} == {MANIFEST_NAME, *(f.path for f in manifest.files)}
    kept = pl.concat(pl.read_parquet(root / "a" / "p1" / f.path) for f in manifest.files)
    assert kept.get_column("doc_id").str.starts_with("second-").all()


def test_identical_writers_give_identical_bytes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    writers = [start_writer(root, "same", shards=2, pause_s=0.3) for _ in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in writers]
    versions = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("committed")}
    assert all(w.returncode == 0 for w in writers) and len(versions) == 1, outputs
    assert assert_manifest_names_existing_files(root).data_version in versions


def test_a_writer_waits_a_bounded_time_and_names_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "store"
    holder = start_writer(root, "slow", shards=1, pause_s=30)
    wait_for_line(holder, "holding")
    try:
        store = ShardStore(str(root), lock_timeout_s=1)
        started = time.monotonic()
        holder_named = r"a\[p1\] is being written by writer slow \(pid \d+"
        with pytest.raises(PartitionLocked, match=holder_named), store.writing("a", "p1", "me", log=print):
            pass
        assert time.monotonic() - started < 10
        assert not (root / "a" / "p1").exists() or not list((root / "a" / "p1").glob("part-*"))
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_writer_frees_the_partition_at_once(tmp_path: Path) -> None:
    """SIGKILL inside the write: the lock goes with the process, the half-written partition is
    never published, and the next writer commits without waiting."""
    root = tmp_path / "store"
    holder = start_writer(root, "doomed", shards=5, pause_s=1.0)
    wait_for_line(holder, "holding")
    time.sleep(1.5)  # one shard written, the others not
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not (root / "a" / "p1" / MANIFEST_NAME).exists()
    store = ShardStore(str(root), lock_timeout_s=2)
    with store.writing("a", "p1", "next", log=pytest.fail):
        shard = store.write_parquet_shard("a", "p1", 0, frame(4, "next"))
        store.commit(Manifest("a", "p1", [shard]))
    assert assert_manifest_names_existing_files(root).files == [shard]
    assert sorted(os.listdir(root / "a" / "p1")) == sorted([MANIFEST_NAME, shard.path])


# -- the same on an object store: a lease object ---------------------------------------------------
def test_lease_on_s3_is_exclusive_and_stale_leases_are_taken_over(s3_endpoint: str) -> None:  # noqa: F811
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "use_listings_cache": False}
    s3fs.S3FileSystem(**options).mkdir("lake")
    store = ShardStore("s3://lake/root", options, lock_timeout_s=1, lock_lease_s=10)
    other = ShardStore("s3://lake/root", options, lock_timeout_s=1, lock_lease_s=10)
    lease = store.path(".locks", "a", "p1.lock")
    with store.writing("a", "p1", "run one", log=lambda m: None):
        assert b"run one" in store.fs.cat_file(lease)
        with pytest.raises(PartitionLocked, match="run one"), other.writing("a", "p1", "run two", log=lambda m: None):
            pass
    assert not store.fs.exists(lease)
    # A lease left by a process of this machine that no longer exists is taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {
        "owner": "killed run",
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "expires": time.time() + 3600,
    }
    store.fs.pipe_file(lease, json.dumps(stale).encode())
    taken = []
    with other.writing("a", "p1", "run three", log=taken.append):
        assert b"run three" in store.fs.cat_file(lease)
    assert any("stale lease of killed run" in message for message in taken)
