"""The dedup engine's contract: first-seen wins, exact and near duplicates name what they
duplicate, partitions are checked against the segments of the ones before them, and the same
inputs give the same bytes whatever the run or shard order."""

from __future__ import annotations

import io
import itertools
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from resources.common.schemas import REMOVED_SCHEMA, doc_id_of
from resources.common.storage import ShardStore
from resources.dedup.engine import EXACT, NEAR, DedupResult, NearDedup
from resources.dedup.index import IndexSegment
from resources.dedup.minhash import normalize, shingle_hashes
from resources.dedup.settings import DedupSettings

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    return ["".join(rng.choices(_LETTERS, k=rng.randint(3, 9))) for _ in range(size)]


def make_texts(count: int, seed: int = 0, words: tuple[int, int] = (120, 300)) -> list[str]:
    """Random-word documents with sentence punctuation: unrelated to each other by construction."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng)
    texts = []
    for _ in range(count):
        tokens = rng.choices(vocabulary, k=rng.randint(*words))
        for position in range(0, len(tokens), 12):
            tokens[position] = tokens[position].capitalize()
            tokens[min(position + 11, len(tokens) - 1)] += "."
        texts.append(" ".join(tokens))
    return texts


def edit(text: str, rate: float, seed: int) -> str:
    """A copy with about `rate` of its words replaced, inserted or deleted, in spans of 1-3 words."""
    rng = random.Random(seed)
    words = text.split()
    budget = round(rate * len(words))
    while budget > 0:
        span, position = min(rng.randint(1, 3), budget), rng.randrange(len(words))
        new = ["".join(rng.choices(_LETTERS, k=6)) for _ in range(span)]
        operation = rng.randrange(3)
        if operation == 0:
            words[position : position + span] = new
        elif operation == 1:
            words[position:position] = new
        else:
            del words[position : position + span]
        budget -= span
    return " ".join(words)


def documents(texts: list[str], batch: str = "A") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "doc_id": [doc_id_of(t) for t in texts],
            "text": texts,
            "url": [f"https://example.org/{batch}/{i}" for i in range(len(texts))],
            "crawl_batch": [batch] * len(texts),
        },
        schema={"doc_id": pl.String, "text": pl.String, "url": pl.String, "crawl_batch": pl.String},
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[NearDedup]:
    with NearDedup(DedupSettings(workers=1)) as dedup:
        yield dedup


def _removed(result: DedupResult) -> dict[str, tuple[str, str]]:
    return {row["doc_id"]: (row["rule"], row["duplicate_of"]) for row in result.removed.iter_rows(named=True)}


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def test_planted_near_duplicates_point_at_the_first_seen_document(engine: NearDedup) -> None:
    originals = make_texts(300, seed=1)
    copies = [(i, edit(originals[i], (0.02, 0.05, 0.1)[i % 3], seed=i)) for i in range(0, 300, 5)]
    texts = list(originals)
    for position, (source, copy) in enumerate(copies):  # each copy somewhere after its source
        texts.insert(source + 1 + position + (position % 7), copy)
    frame = documents(texts)

    result = engine.dedup_partition([frame], [])

    removed = _removed(result)
    expected = {doc_id_of(copy): ("dedup_near", doc_id_of(originals[source])) for source, copy in copies}
    assert removed == expected
    assert result.removed.get_column("similarity").min() >= 0.5
    assert result.stats["kept"] == 300
    assert result.segment.to_frame().get_column("doc_id").to_list() == [doc_id_of(t) for t in originals]


def test_within_a_partition_row_order_decides_which_copy_is_kept(engine: NearDedup) -> None:
    original = make_texts(1, seed=2)[0]
    copy = edit(original, 0.05, seed=2)
    result = engine.dedup_partition([documents([copy, *make_texts(20, seed=3), original])], [])
    assert _removed(result) == {doc_id_of(original): (NEAR, doc_id_of(copy))}


def test_exact_duplicates_by_normalized_text(engine: NearDedup) -> None:
    text = make_texts(1, seed=4)[0]
    variant = "  " + text.upper().replace(" ", "\n ")  # same doc_id: case and whitespace are normalized
    frame = documents([text, *make_texts(5, seed=5), variant, text])
    assert frame.get_column("doc_id")[0] == frame.get_column("doc_id")[6]

    result = engine.dedup_partition([frame], [])

    assert result.removed.select("rule", "duplicate_of", "similarity").rows() == [(EXACT, doc_id_of(text), 1.0)] * 2
    assert result.stats["kept"] == 6


def test_partition_is_checked_against_earlier_segments(engine: NearDedup) -> None:
    a_texts = make_texts(200, seed=6)
    a = engine.dedup_partition([documents(a_texts, "A")], [])
    assert a.removed.height == 0
    near = [edit(a_texts[i], 0.08, seed=i) for i in range(0, 40, 2)]
    b_texts = [*make_texts(100, seed=7), *near, a_texts[5], a_texts[7]]

    b = engine.dedup_partition([documents(b_texts, "B")], [a.segment])

    expected = {doc_id_of(copy): (NEAR, doc_id_of(a_texts[2 * k])) for k, copy in enumerate(near)}
    expected |= {doc_id_of(a_texts[i]): (EXACT, doc_id_of(a_texts[i])) for i in (5, 7)}
    assert _removed(b) == expected
    assert b.stats["earlier_documents_matched"] >= len(expected)
    assert set(b.segment.to_frame().get_column("doc_id")) == {doc_id_of(t) for t in make_texts(100, seed=7)}

    # A third partition sees A's and B's kept documents, never B's removed ones.
    c = engine.dedup_partition([documents([b_texts[0], near[0]], "C")], [a.segment, b.segment])
    assert _removed(c) == {
        doc_id_of(b_texts[0]): (EXACT, doc_id_of(b_texts[0])),
        doc_id_of(near[0]): (NEAR, doc_id_of(a_texts[0])),
    }


def test_segments_round_trip_through_shard_store(engine: NearDedup, tmp_path: Path) -> None:
    a_texts = make_texts(150, seed=8)
    a = engine.dedup_partition([documents(a_texts)], [])
    store = ShardStore(str(tmp_path))
    frame = a.segment.to_frame()
    shards = [store.write_parquet_shard("dedup_index", "A", i, part) for i, part in enumerate(frame.iter_slices(60))]
    paths = [str(tmp_path / "dedup_index" / "A" / shard.path) for shard in shards]
    scanned = IndexSegment.from_frame(pl.scan_parquet(paths))
    assert scanned.to_frame().equals(frame)

    b_frame = documents([edit(t, 0.05, seed=i) for i, t in enumerate(a_texts[:30])] + make_texts(30, seed=9), "B")
    from_disk = engine.dedup_partition([b_frame], [scanned])
    in_memory = engine.dedup_partition([b_frame], [a.segment])
    assert from_disk.removed.equals(in_memory.removed)
    assert from_disk.removed.height == 30


def test_result_does_not_depend_on_shard_or_segment_order(engine: NearDedup) -> None:
    a1_texts, a2_texts = make_texts(120, seed=10), make_texts(120, seed=11)
    a1 = engine.dedup_partition([documents(a1_texts)], [])
    a2 = engine.dedup_partition([documents(a2_texts)], [a1.segment])
    b_frame = documents(
        [edit(t, 0.05, seed=i) for i, t in enumerate(a1_texts[:20] + a2_texts[:20])] + a2_texts[50:55], "B"
    )
    reference = engine.dedup_partition([b_frame], [a1.segment, a2.segment])
    assert reference.removed.height == 45

    def shuffled(segment: IndexSegment, seed: int) -> IndexSegment:
        shards = list(segment.to_frame().sample(fraction=1.0, shuffle=True, seed=seed).iter_slices(25))
        random.Random(seed).shuffle(shards)
        return IndexSegment.from_frame(pl.concat(shards))

    for seed in range(3):
        again = engine.dedup_partition([b_frame], [shuffled(a1.segment, seed), shuffled(a2.segment, seed + 10)])
        assert again.removed.equals(reference.removed)
        assert _parquet_bytes(again.segment.to_frame()) == _parquet_bytes(reference.segment.to_frame())
    swapped = engine.dedup_partition([b_frame], [a2.segment, a1.segment])
    assert swapped.removed.equals(reference.removed)  # each document matches one earlier partition only


def test_rerun_is_idempotent_and_rematerializing_gives_the_same_bytes(tmp_path: Path) -> None:
    a_texts = make_texts(150, seed=12)
    a_frame = documents([*a_texts, edit(a_texts[0], 0.05, seed=1)])
    b_frame = documents([edit(t, 0.05, seed=i) for i, t in enumerate(a_texts[:10])] + make_texts(10, seed=13), "B")
    store = ShardStore(str(tmp_path))
    runs = []
    for _ in range(2):
        with NearDedup(DedupSettings(workers=1)) as fresh:  # a new engine, as in a new Dagster run
            a = fresh.dedup_partition(iter([a_frame]), iter([]))
            b = fresh.dedup_partition([b_frame], [a.segment])
        runs.append((store.write_parquet_shard("dedup_index", "A", 0, a.segment.to_frame()), a, b))
    (shard_1, a_1, b_1), (shard_2, a_2, b_2) = runs
    assert shard_1.sha256 == shard_2.sha256
    assert a_1.removed.equals(a_2.removed) and b_1.removed.equals(b_2.removed)
    assert _parquet_bytes(b_1.segment.to_frame()) == _parquet_bytes(b_2.segment.to_frame())


def test_splitter_gives_removed_rows_and_checks_the_order(engine: NearDedup) -> None:
    texts = make_texts(40, seed=14)
    frame = documents([*texts, edit(texts[3], 0.05, seed=3), texts[9]])
    shards = [frame.slice(0, 25), frame.slice(25, 17)]
    result = engine.dedup_partition(shards, [])

    split = result.splitter()
    parts = [split(shard) for shard in shards]
    kept = pl.concat([k for k, _ in parts])
    removed = pl.concat([r for _, r in parts])
    assert kept.equals(documents(texts))
    assert dict(removed.schema) == REMOVED_SCHEMA
    assert removed.get_column("stage").to_list() == ["dedup", "dedup"]
    assert removed.get_column("detail").cast(pl.Float64).min() >= 0.5
    assert removed.get_column("duplicate_of").to_list() == [doc_id_of(texts[3]), doc_id_of(texts[9])]
    with pytest.raises(ValueError, match="not the one"):
        result.splitter()(shards[1])


def test_bad_inputs(engine: NearDedup) -> None:
    huge_words = " ".join(make_texts(1, seed=15, words=(20, 20))[0].split() * 90_000)  # ~10 MB, one line
    texts = [
        "",
        "   \n\t ",  # same doc_id as "": an exact duplicate
        "!!! ... ???",  # no words: never a near duplicate
        "*** --- ###",
        "Hello world",  # fewer words than n: one shingle of the whole document
        "hello, WORLD!",
        "x",
        huge_words,
        "z" * 10_000_000,  # ~10 MB without a single space
    ]
    frame = documents(texts).with_columns(
        pl.when(pl.int_range(pl.len()) == 6).then(None).otherwise("text").alias("text")
    )
    started = time.perf_counter()
    result = engine.dedup_partition([frame], [])
    assert time.perf_counter() - started < 30
    assert _removed(result) == {
        doc_id_of(""): (EXACT, doc_id_of("")),
        doc_id_of("hello, WORLD!"): (NEAR, doc_id_of("Hello world")),
    }
    assert result.stats["without_words"] == 5  # "", whitespace, two punctuation-only, the null text
    again = engine.dedup_partition([documents(["", "??", "Hello  World", huge_words])], [result.segment])
    assert {r[0] for r in _removed(again).values()} == {EXACT}
    assert again.removed.height == 3


def test_empty_partition_and_no_earlier_segments(engine: NearDedup) -> None:
    empty = documents([])
    for frames in ([], [empty], [empty, empty]):
        result = engine.dedup_partition(frames, [])
        assert result.removed.height == 0 and result.stats["documents"] == 0
        assert result.segment.to_frame().height == 0
    later = engine.dedup_partition([documents(make_texts(5, seed=16))], [result.segment])
    assert later.removed.height == 0 and later.segment.to_frame().height == 5


def test_segments_of_other_settings_are_refused(engine: NearDedup) -> None:
    with NearDedup(DedupSettings(preset="fineweb", workers=1)) as fineweb:
        segment = fineweb.dedup_partition([documents(make_texts(5, seed=17))], []).segment
    with pytest.raises(ValueError, match="rematerialize"):
        engine.dedup_partition([documents(make_texts(5, seed=18))], [segment])
    with pytest.raises(ValueError, match="not a dedup index segment"):
        IndexSegment.from_frame(pl.DataFrame({"doc_id": ["x"]}))
    with pytest.raises(ValueError, match="doc_id and text"):
        engine.dedup_partition([pl.DataFrame({"text": ["x"]})], [])


def test_settings_presets_and_overrides() -> None:
    fineweb = DedupSettings(preset="fineweb")
    assert (fineweb.ngram, fineweb.bands, fineweb.rows, fineweb.spec.num_perm) == (5, 14, 8, 112)
    assert DedupSettings(preset="fineweb", ngram=4).ngram == 4
    assert DedupSettings().preset == "high_recall"
    assert "workers" not in DedupSettings().output_shaping()
    with pytest.raises(ValidationError):
        DedupSettings(treshold=0.5)


def test_signatures_ignore_case_punctuation_and_spacing(engine: NearDedup) -> None:
    sketches = engine.signatures(pl.DataFrame({"text": ["The cat, sat on the MAT.", "the cat sat  on the mat", "..."]}))
    assert np.array_equal(sketches.signatures[0], sketches.signatures[1])
    assert np.array_equal(sketches.band_keys[0], sketches.band_keys[1])
    assert sketches.has_shingles.tolist() == [True, True, False]


def test_shingles_are_the_word_ngrams_of_each_document() -> None:
    long = "Donaudampfschifffahrtsgesellschaftskapitän"  # > 32 bytes: hashed apart from the vectorized path
    texts = [
        "alpha beta gamma delta",
        "alpha beta gamma",
        "beta gamma delta",
        "Alpha, BETA!",  # fewer words than n: one shingle
        "alpha beta",
        f"{long} abcdefghijklmnopq gamma",  # a 17-byte word spans three 8-byte chunks
        f"zeta {long} abcdefghijklmnopq gamma",
        f"{long} abcdefghijklmnopX gamma",  # differs in the 17th byte only
    ]
    hashes, offsets = shingle_hashes(normalize(pl.Series(texts)), 3)
    shingles = [set(hashes[start:stop].tolist()) for start, stop in itertools.pairwise(offsets)]
    assert shingles[0] == shingles[1] | shingles[2] and len(shingles[0]) == 2
    assert shingles[3] == shingles[4] and len(shingles[3]) == 1
    assert shingles[5] < shingles[6]
    assert not shingles[5] & shingles[7]

    # Any mix of lengths: a document's shingles are those of its n-word windows taken alone.
    rng = random.Random(0)
    vocabulary = [*_vocabulary(rng, 30), long, "", "!"]
    docs = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 7))) for _ in range(200)]
    hashes, offsets = shingle_hashes(normalize(pl.Series(docs)), 3)
    for doc, start, stop in zip(docs, offsets[:-1], offsets[1:], strict=True):
        words = normalize(pl.Series([doc]))[0].split()
        windows = [" ".join(words[i : i + 3]) for i in range(max(len(words) - 2, 1 if words else 0))]
        alone, ends = shingle_hashes(normalize(pl.Series(windows, dtype=pl.String)), 3)
        assert hashes[start:stop].tolist() == alone.tolist() and len(ends) == len(windows) + 1


def test_helper_processes_give_the_same_result() -> None:
    texts = make_texts(400, seed=19)
    shards = [
        documents(texts[:200]),
        documents(texts[200:] + [edit(t, 0.05, seed=i) for i, t in enumerate(texts[:50])]),
    ]
    settings = DedupSettings(workers=1, batch_bytes=32 << 10)
    with NearDedup(settings) as alone:
        expected = alone.dedup_partition(shards, [])
    with NearDedup(settings.model_copy(update={"workers": 2})) as pooled:
        pooled.dedup_partition(shards, [])  # starts the helper; it takes batches once it is up
        pooled._sketcher._ready.result(timeout=60)
        result = pooled.dedup_partition(shards, [])
    assert result.removed.equals(expected.removed) and expected.removed.height == 50
    assert result.segment.to_frame().equals(expected.segment.to_frame())
