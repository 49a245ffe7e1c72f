"""The persisted dedup index: batches looked up in sorted runs give exactly the result of comparing
with every earlier segment; any run order gives the same bytes; the runs are derived (deleted,
rebuilt or mirrored from S3 with the same result); a rematerialized earlier batch is caught; a
batch far larger than the others is deduplicated in bounded sub-batches; a corpus of duplicates."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from resources.common.partition_stage import StageOutput, run_partition_stage
from resources.common.schemas import doc_id_of
from resources.common.storage import Manifest, ShardStore
from resources.common.versioning import OutputVersion
from resources.dedup import engine as engine_module
from resources.dedup.engine import EXACT, NEAR, NearDedup
from resources.dedup.index import (
    CHAIN,
    INDEX,
    INDEX_DIR,
    DedupIndex,
    EarlierBatchNotDeduplicated,
    IndexSegment,
    StaleEarlierBatch,
    chain_of,
)
from resources.dedup.settings import DedupSettings
from tests.unit.common.test_storage import s3_endpoint  # noqa: F401  (the moto S3 server fixture)
from tests.unit.dedup.test_dedup import documents, edit, make_texts

ASSET, UPSTREAM = "deduplicated_documents", "scored_documents"
SETTINGS = DedupSettings(workers=1, index_fanout=2, index_max_level=3)


def planted_batches(count: int, size: int = 40, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Batches of new documents, near copies (5-10% edited) and exact copies of earlier batches' documents."""
    rng = random.Random(seed)
    originals = make_texts(count * size, seed=seed, words=(40, 120))
    batches, seen = {}, []
    for b in range(count):
        texts = originals[b * size : (b + 1) * size]
        for k in range(size // 4 if seen else 0):
            source = rng.choice(seen)
            texts.insert(rng.randrange(len(texts)), source if k % 3 == 0 else edit(source, 0.05 + 0.05 * (k % 2), k))
        seen += texts
        batches[f"b{b:03d}"] = documents(texts, f"b{b:03d}")
    return batches


def publish_upstream(store: ShardStore, batches: dict[str, pl.DataFrame]) -> None:
    for key, frame in batches.items():
        shards = [store.write_parquet_shard(UPSTREAM, key, i, s) for i, s in enumerate(frame.iter_slices(25))]
        store.commit(Manifest(UPSTREAM, key, shards))


def deduplicate(
    store: ShardStore, engine: NearDedup, keys: list[str], key: str, settings: DedupSettings = SETTINGS
) -> StageOutput:
    """One batch as the asset does it: its earlier runs, the engine, the partition with its segment
    and the chain record, committed."""
    with DedupIndex.for_settings(store, ASSET, settings).earlier(keys[: keys.index(key)]) as earlier:
        source = store.read_manifest(UPSTREAM, key)
        result = engine.dedup_partition(store.iter_frames(source, ["doc_id", "text"]), earlier.runs)
        assert engine.recheck(result.segment, earlier.runs).removed.height == 0
        return run_partition_stage(
            store,
            OutputVersion("test"),
            asset=ASSET,
            upstream=UPSTREAM,
            partition=key,
            run_id="run",
            process=result.splitter,
            extra_inputs=earlier.inputs(ASSET),
            finish=lambda: {INDEX: result.segment.frames()},
            stats={CHAIN: earlier.record()},
        )


@pytest.fixture(scope="module")
def engine() -> Iterator[NearDedup]:
    with NearDedup(SETTINGS) as dedup:
        yield dedup


def removed_of(store: ShardStore, key: str) -> pl.DataFrame:
    return pl.concat(list(store.iter_frames(store.read_manifest(ASSET, key), table="removed")))


def test_runs_give_what_every_earlier_segment_gives(tmp_path: Path, engine: NearDedup) -> None:
    batches = planted_batches(19)
    keys = list(batches)
    store = ShardStore(str(tmp_path))
    publish_upstream(store, batches)
    segments: list[IndexSegment] = []
    for position, key in enumerate(keys):
        output = deduplicate(store, engine, keys, key)
        plain = engine.dedup_partition([batches[key]], segments)  # the reference: every segment, no index
        segments.append(plain.segment)
        expected = plain.removed.select("doc_id", "duplicate_of").rows()
        assert (
            removed_of(store, key).select("doc_id", "duplicate_of").rows() if output.removed.height else []
        ) == expected
        manifest = store.read_manifest(ASSET, key)
        assert manifest.stats[CHAIN]["earlier_batches"] == position
        if position:
            assert manifest.inputs[f"{ASSET}[{keys[position - 1]}].chain"] == chain_of(
                store.read_manifest(ASSET, keys[position - 1])
            )
    rules = pl.concat([removed_of(store, k) for k in keys[1:]]).get_column("rule").value_counts()
    assert set(rules.get_column("rule")) == {EXACT, NEAR}

    # Batch 19 = 8 + 8 + 2 + 1 (fanout 2, levels up to 3): two level-3 runs, one of level 1, one segment.
    index = DedupIndex.for_settings(store, ASSET, SETTINGS)
    assert index.blocks(19) == [(3, 0), (3, 8), (1, 16), (0, 18)]
    with index.earlier(keys) as earlier:
        assert [r.meta.get("level") for r in earlier.runs] == [3, 3, 1, None]
        assert sum(r.documents for r in earlier.runs) == sum(s.to_frame().height for s in segments)
    built = sorted(p.name.split("-")[0] for p in (tmp_path / INDEX_DIR).glob("*/L*"))
    assert built.count("L3") == 2 and built.count("L2") == 4 and built.count("L1") == 9


def test_any_run_order_and_a_lost_index_give_the_same_bytes(tmp_path: Path, engine: NearDedup) -> None:
    batches = planted_batches(9, seed=3)
    keys = list(batches)
    in_order = ShardStore(str(tmp_path / "in_order"))
    publish_upstream(in_order, batches)
    for key in keys:
        deduplicate(in_order, engine, keys, key)

    shuffled = ShardStore(str(tmp_path / "shuffled"))
    publish_upstream(shuffled, batches)
    pending, rng = keys[::-1], random.Random(0)
    while pending:  # each batch retried until the batches before it are done, as the asset's retries do
        key = pending.pop(rng.randrange(len(pending)))
        try:
            deduplicate(shuffled, engine, keys, key)
        except EarlierBatchNotDeduplicated:
            pending.insert(0, key)
            assert shuffled.read_manifest(ASSET, key) is None
    shutil.rmtree(tmp_path / "shuffled" / INDEX_DIR)  # derived: lost, rebuilt on demand
    deduplicate(shuffled, engine, keys, keys[-1])
    for key in keys:
        assert shuffled.read_manifest(ASSET, key).data_version == in_order.read_manifest(ASSET, key).data_version


def test_a_rematerialized_earlier_batch_is_caught(tmp_path: Path, engine: NearDedup) -> None:
    batches = planted_batches(5, seed=4)
    keys = list(batches)
    store = ShardStore(str(tmp_path))
    publish_upstream(store, batches)
    for key in keys:
        deduplicate(store, engine, keys, key)
    before = {key: store.read_manifest(ASSET, key).data_version for key in keys}

    deduplicate(store, engine, keys, keys[0])  # unchanged: same bytes, nothing moves
    assert store.read_manifest(ASSET, keys[0]).data_version == before[keys[0]]

    publish_upstream(store, {keys[1]: batches[keys[1]].head(20)})  # batch 1 changes
    deduplicate(store, engine, keys, keys[1])
    shutil.rmtree(tmp_path / INDEX_DIR)
    with pytest.raises(StaleEarlierBatch, match=keys[2]):  # batch 2 was deduplicated against the old batch 1
        deduplicate(store, engine, keys, keys[4])
    for key in keys[2:]:  # rematerialized in order, everything is consistent again
        deduplicate(store, engine, keys, key)
    assert store.read_manifest(ASSET, keys[4]).stats[CHAIN]["against"] == chain_of(store.read_manifest(ASSET, keys[3]))


def test_a_batch_far_larger_than_the_others_is_deduplicated_in_bounded_sub_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = planted_batches(4, seed=5)
    keys = list(batches)
    texts = batches[keys[3]].get_column("text").to_list()
    large = [*make_texts(400, seed=6, words=(40, 80)), *texts]
    large = [*large, *(edit(t, 0.05, seed=i) for i, t in enumerate(large[:200]))]  # copies across sub-batches
    batches[keys[3]] = documents(large, keys[3])
    sizes: list[int] = []
    decide = NearDedup._decide
    monkeypatch.setattr(
        engine_module.NearDedup, "_decide", lambda self, ids, *a: sizes.append(len(ids)) or decide(self, ids, *a)
    )

    results = {}
    for documents_in_memory in (10_000, 64):
        settings = SETTINGS.model_copy(update={"documents_in_memory": documents_in_memory})
        store = ShardStore(str(tmp_path / str(documents_in_memory)))
        publish_upstream(store, batches)
        sizes.clear()
        with NearDedup(settings) as engine:
            for key in keys:
                deduplicate(store, engine, keys, key, settings)
        manifests = [store.read_manifest(ASSET, key) for key in keys]
        results[documents_in_memory] = [
            pl.concat(list(store.iter_frames(m, table=table)))
            for m in manifests
            for table in ("documents", "removed", INDEX)
            if table in m.tables()
        ]
        assert max(sizes) <= documents_in_memory
    assert max(sizes) == 64 and len(sizes) > 10
    manifest = store.read_manifest(ASSET, keys[3])
    assert manifest.stats["removed_by_rule"][NEAR] >= 200 and len(store.shard_paths(manifest, INDEX)) > 5
    # No bucket overflows here: the same documents, removals and segments (in more shards).
    assert all(a.equals(b) for a, b in zip(results[64], results[10_000], strict=True))


def test_a_corpus_of_duplicates(tmp_path: Path, engine: NearDedup) -> None:
    original = documents(make_texts(30, seed=7), "a")
    batches = {
        "a": original,
        "b": original.with_columns(pl.col("text").str.to_uppercase()),  # the same documents again
        # one document, 50 times, with its punctuation changed (distinct doc_ids, as ingest leaves them)
        "c": documents([original.get_column("text")[0] + "!" * k for k in range(50)], "c"),
        "d": documents(["", "!!", "..."], "d"),  # no words at all: exact matching only
        "e": original,
        "f": documents(["", "!!", *make_texts(2, seed=8)], "f"),
    }
    keys = list(batches)
    store = ShardStore(str(tmp_path))
    publish_upstream(store, batches)
    for key in keys:
        deduplicate(store, engine, keys, key)
    kept = {key: store.read_manifest(ASSET, key).rows for key in keys}
    assert kept == {"a": 30, "b": 0, "c": 0, "d": 3, "e": 0, "f": 2}
    assert set(removed_of(store, "c").get_column("duplicate_of")) == {original.get_column("doc_id")[0]}
    assert set(removed_of(store, "f").get_column("duplicate_of")) == {doc_id_of(""), doc_id_of("!!")}
    with DedupIndex.for_settings(store, ASSET, SETTINGS).earlier(keys) as earlier:
        assert sum(r.documents for r in earlier.runs) == 35
        assert len(earlier.runs) == 2  # [a..d] and [e, f]: runs with empty batches inside


def test_runs_on_s3_are_uploaded_and_mirrored(
    tmp_path: Path,
    engine: NearDedup,
    s3_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "use_listings_cache": False}
    s3fs.S3FileSystem(**options).mkdir("lake")
    monkeypatch.setenv("CRAWL2CKPT_CACHE", str(tmp_path / "machine-1"))
    store = ShardStore("s3://lake/c2c", options)
    batches = planted_batches(5, seed=9)
    keys = list(batches)
    publish_upstream(store, batches)
    for key in keys:
        deduplicate(store, engine, keys, key)
    runs = [p for p in store.fs.find(f"lake/c2c/{INDEX_DIR}") if p.endswith("run.json")]
    assert len(runs) == 3  # [0,2) [2,4) [0,4)

    monkeypatch.setenv("CRAWL2CKPT_CACHE", str(tmp_path / "machine-2"))  # another machine: mirrors, never rebuilds
    index = DedupIndex.for_settings(store, ASSET, SETTINGS)
    monkeypatch.setattr(DedupIndex, "_build", lambda *a: pytest.fail("rebuilt a run the store holds"))
    with index.earlier(keys) as earlier:
        assert [r.meta["level"] for r in earlier.runs[:1]] == [2]
        assert np.array_equal(earlier.runs[0].band_fence, earlier.runs[0].band_keys[::512])
    assert not [p for p in store.fs.find("lake") if "/.tmp-" in p]
