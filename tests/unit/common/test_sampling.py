"""Corpus samples for the corpus-wide models: the smallest doc_ids, from a bounded number of
partitions picked by key hash, whatever the shard layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from resources.common.sampling import sample_texts, smallest_doc_ids
from resources.common.storage import Manifest, ShardStore


def test_smallest_doc_ids_whatever_the_shard_layout() -> None:
    frame = pl.DataFrame({"doc_id": [f"{i:04x}" for i in range(200)], "text": [f"text {i}" for i in range(200)]})
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    expected = [f"text {i}" for i in range(10)]

    def texts(frames: list[pl.DataFrame], documents: int) -> list[str]:
        return smallest_doc_ids(frames, documents, ["text"]).get_column("text").to_list()

    assert texts([frame], 10) == expected
    assert texts([shuffled.slice(0, 70), shuffled.slice(70, 0), shuffled.slice(70)], 10) == expected
    assert texts([frame.slice(0, 5), frame.slice(0, 5), frame.slice(5, 3)], 10) == expected[:8]  # no repeats
    assert texts([], 10) == []


def test_a_sample_reads_a_bounded_number_of_partitions(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    for p in range(40):
        ids, texts = [f"{p:02d}{i:04d}" for i in range(30)], [f"p{p} d{i}" for i in range(30)]
        frame = pl.DataFrame({"doc_id": ids, "text": texts})
        shards = [store.write_parquet_shard("docs", f"b{p:02d}", k, s) for k, s in enumerate(frame.iter_slices(7))]
        store.commit(Manifest("docs", f"b{p:02d}", shards))
    store.fs.makedirs(store.path("docs", "uncommitted"), exist_ok=True)  # a partition without a manifest

    texts, inputs = sample_texts(store, "docs", 50, 8)
    picked = sorted(store.partition_keys("docs"), key=lambda k: hashlib.sha256(k.encode()).digest())[:8]
    assert sorted(inputs) == sorted(f"docs[{key}]" for key in picked)
    assert len(texts) == 50 and texts[0] == f"p{int(min(picked)[1:])} d0"
    assert sample_texts(store, "docs", 50, 100)[1].keys() == {f"docs[b{p:02d}]" for p in range(40)}
    assert sample_texts(store, "nothing", 5, 3) == ([], {})
