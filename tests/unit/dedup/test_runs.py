"""Sorted runs: fenced lookups agree with numpy's searchsorted, merged runs equal a run built from
everything at once, and empty runs and large buckets behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resources.dedup import runs as runs_module
from resources.dedup.runs import FENCE_STRIDE, SortedRun, _bisect, as_doc_id_bytes, id_keys, merge_runs


def random_run(rng: np.random.Generator, documents: int, bands: int = 4, start: int = 0) -> SortedRun:
    """Documents named d<start+i>; few distinct band keys, so buckets are large and span fence pages."""
    doc_ids = as_doc_id_bytes([f"d{start + i}" for i in range(documents)])
    signatures = rng.integers(0, 1 << 32, (documents, 8), dtype=np.uint64).astype(np.uint32)
    keys = rng.integers(0, 50, (documents, bands)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    has = rng.random(documents) > 0.1
    return SortedRun.build(doc_ids, signatures, keys, has, {"sketch_id": "test"})


def test_fenced_bisect_is_searchsorted() -> None:
    rng = np.random.default_rng(0)
    for size in (0, 1, FENCE_STRIDE - 1, FENCE_STRIDE, 5 * FENCE_STRIDE + 17):
        keys = np.sort(rng.integers(0, 40, size).astype(np.uint64))  # long runs of equal keys across pages
        fence = keys[::FENCE_STRIDE]
        probes = np.arange(-1, 42).astype(np.uint64)
        for right in (False, True):
            expected = np.searchsorted(keys, probes, "right" if right else "left")
            assert np.array_equal(_bisect(keys, fence, probes, right), expected)


def test_bucket_members_are_first_seen_first_and_capped() -> None:
    run = random_run(np.random.default_rng(1), 3000)
    key = run.band_keys[1500]
    members = np.sort(run.band_docs[run.band_keys == key])
    probe, documents = run.bucket_members(np.array([key, 7, key], np.uint64), cap=40)
    assert probe.tolist() == [0] * 40 + [2] * 40
    assert documents[:40].tolist() == members[:40].tolist() == documents[40:].tolist()
    everything = run.bucket_members(np.array([key], np.uint64), cap=10**9)[1]
    assert everything.tolist() == members.tolist()


def test_merged_run_equals_one_built_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs_module, "PROBE_CHUNK", 64)  # many probe chunks and page releases
    rng = np.random.default_rng(2)
    parts = [random_run(rng, n, start=s) for n, s in ((700, 0), (0, 700), (1300, 700), (5, 2000))]
    for index, part in enumerate(parts):  # on disk and memory-mapped, as merges see them
        part.write(tmp_path / f"p{index}")
    opened = [SortedRun.open(tmp_path / f"p{index}") for index in range(len(parts))]
    merge_runs(opened, tmp_path / "merged", {"sketch_id": "test"}, piece_entries=300)  # many key pieces
    merged = SortedRun.open(tmp_path / "merged")

    doc_ids = np.concatenate([p.doc_ids for p in parts])
    signatures = np.concatenate([p.signatures for p in parts])
    assert merged.documents == len(doc_ids) == 2005
    assert np.array_equal(merged.doc_ids, doc_ids) and np.array_equal(merged.signatures, signatures)
    offsets = np.cumsum([0, *(p.documents for p in parts)])
    band_docs = np.concatenate([p.band_docs.astype(np.int64) + o for p, o in zip(parts, offsets, strict=False)])
    band_keys = np.concatenate([p.band_keys for p in parts])
    order = np.lexsort((band_docs, band_keys))
    assert np.array_equal(merged.band_keys, band_keys[order]) and np.array_equal(merged.band_docs, band_docs[order])
    assert np.array_equal(merged.band_fence, merged.band_keys[::FENCE_STRIDE])
    assert np.array_equal(merged.id_fence, merged.id_keys[::FENCE_STRIDE])

    probe_ids = as_doc_id_bytes(["d3", "d1999", "nope", "d700"])
    assert merged.contains(probe_ids, id_keys(probe_ids)).tolist() == [True, True, False, True]
    found_ids, found_signatures = merged.gather(np.array([2004, 0, 999]))
    assert found_ids.tolist() == [b"d2004", b"d0", b"d999"]
    assert np.array_equal(found_signatures, signatures[[2004, 0, 999]])
    assert merged.meta["documents"] == 2005 and merged.meta["sketch_id"] == "test"
    for run in (*opened, merged):
        run.close()


def test_empty_runs(tmp_path: Path) -> None:
    nothing = np.zeros((0, 4), np.uint64)
    empty = SortedRun.build(as_doc_id_bytes([]), nothing.astype(np.uint32), nothing, np.zeros(0, bool))
    empty.write(tmp_path / "empty")
    opened = SortedRun.open(tmp_path / "empty")
    assert opened.documents == 0
    assert opened.bucket_members(np.array([1, 2], np.uint64), 5)[0].size == 0
    assert not opened.contains(as_doc_id_bytes(["x"]), np.array([3], np.uint64)).any()
    merge_runs([opened, opened], tmp_path / "merged", {}, piece_entries=10)
    assert SortedRun.open(tmp_path / "merged").documents == 0
    opened.close()
