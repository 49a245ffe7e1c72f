"""Dedup index benchmark: the cost of deduplicating one crawl batch against K earlier ones.

    .venv/bin/python bench/dedup_index.py [--earlier 0 32 128 512] [--docs 1000]

Why: before the persisted index, every batch opened the index segment of every earlier batch, so
its cost grew with the corpus (~15 ms and ~2.7 MB per earlier segment in the issue's measurement).
The index (`resources.dedup.index.DedupIndex`) looks a batch up in at most (F - 1) x log_F(K) sorted
runs, touching pages in proportion to the batch.

For each K: K earlier batches of --docs documents each are written the way the stage writes
them (a segment shard and a manifest carrying the dedup chain), with random MinHash signatures;
the batch to deduplicate has --docs documents, a tenth of them copies of earlier documents
(exact and near, so both lookups find something). Both systems run `NearDedup.recheck` on it (the
matching from stored signatures; sketching costs the same whatever K, so it is left out):

- **index**: `DedupIndex.earlier(...)` then matching against its runs. The first call builds the
  runs (once in the life of a corpus: shown apart, as "build"); the timed calls find them built;
- **reference: every segment**: matching against the K segments read from Parquet, one after
  another, as the stage did before the index.

Printed per K: seconds per batch (best of --repeats) and the growth of resident memory during the
call (sampled), for both, and their ratio. Both give the same removals (checked).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from scale import Meter  # noqa: E402

from resources.common.storage import Manifest, ShardStore  # noqa: E402
from resources.dedup.engine import NearDedup  # noqa: E402
from resources.dedup.index import CHAIN, INDEX, DedupIndex, IndexSegment, chain_of, genesis, segment_schema  # noqa: E402
from resources.dedup.minhash import band_keys  # noqa: E402
from resources.dedup.settings import DedupSettings  # noqa: E402

ASSET = "deduplicated_documents"


def segment(rng: np.random.Generator, settings: DedupSettings, batch: int, signatures: np.ndarray) -> pl.DataFrame:
    spec = settings.spec
    keys = band_keys(signatures, spec.bands, spec.rows)
    columns = {
        "doc_id": [f"{batch:06d}-{i:08d}" for i in range(len(signatures))],
        "seq": np.arange(len(signatures), dtype=np.uint32),
        "sketch": [spec.sketch_id] * len(signatures),
        "signature": pl.Series(signatures),
        **{f"band_{b:03d}": keys[:, b] for b in range(spec.bands)},
    }
    return pl.DataFrame(columns).cast(segment_schema(spec))


def earlier_corpus(store: ShardStore, settings: DedupSettings, batches: int, docs: int, seed: int) -> list[str]:
    """K batches as the stage leaves them: a segment shard each and a manifest with the chain."""
    rng = np.random.default_rng(seed)
    against, keys = genesis(settings.spec), []
    for batch in range(batches):
        key = f"b{batch:06d}"
        signatures = rng.integers(0, 1 << 32, (docs, settings.spec.num_perm), dtype=np.uint64).astype(np.uint32)
        shard = store.write_parquet_shard(ASSET, key, 0, segment(rng, settings, batch, signatures), INDEX)
        manifest = store.commit(Manifest(ASSET, key, [shard], stats={CHAIN: {"against": against}}))
        against = chain_of(manifest)
        keys.append(key)
    return keys


def probe_batch(store: ShardStore, settings: DedupSettings, keys: list[str], docs: int, seed: int) -> IndexSegment:
    """A new batch: random documents, 5% exact and 5% near (a quarter of the values changed) copies."""
    rng = np.random.default_rng(seed + 1)
    signatures = rng.integers(0, 1 << 32, (docs, settings.spec.num_perm), dtype=np.uint64).astype(np.uint32)
    frame = segment(rng, settings, 999_999, signatures)
    if keys:
        copies = docs // 10
        sources = pl.concat(
            [
                pl.concat(list(store.iter_frames(store.read_manifest(ASSET, keys[k]), table=INDEX)))
                for k in rng.choice(len(keys), min(len(keys), 8), replace=False)
            ]
        ).sample(copies, seed=seed)
        copied = np.stack(sources.get_column("signature").to_numpy())
        copied[copies // 2 :, : settings.spec.num_perm // 4] += 1  # near copies: Jaccard ~0.75
        signatures[:copies] = copied
        ids = frame.get_column("doc_id").to_list()
        ids[: copies // 2] = sources.get_column("doc_id").to_list()[: copies // 2]  # exact copies: same doc_id
        frame = segment(rng, settings, 999_999, signatures).with_columns(doc_id=pl.Series(ids))
    return IndexSegment.from_frame(frame)


def indexed(engine: NearDedup, index: DedupIndex, keys: list[str], probe: IndexSegment) -> pl.DataFrame:
    with index.earlier(keys) as earlier:
        return engine.recheck(probe, earlier.runs).removed


def every_segment(engine: NearDedup, store: ShardStore, keys: list[str], probe: IndexSegment) -> pl.DataFrame:
    paths = [store.shard_paths(store.read_manifest(ASSET, key), INDEX) for key in keys]
    return engine.recheck(probe, [IndexSegment.from_frame(pl.scan_parquet(p)) for p in paths]).removed


def measure(meter: Meter, call: Callable[[], pl.DataFrame], repeats: int) -> tuple[float, float, pl.DataFrame]:
    best, growth, result = float("inf"), 0.0, pl.DataFrame()
    for _ in range(repeats):
        before = meter.rss()
        with meter.window() as numbers:
            result = call()
        best = min(best, numbers["wall"])
        growth = max(growth, numbers["rss"] - before)
    return best, growth, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--earlier", type=int, nargs="+", default=[0, 32, 128, 512], help="earlier batches (K)")
    parser.add_argument("--docs", type=int, default=1000, help="documents per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = DedupSettings(workers=1)
    meter = Meter(interval=0.02)
    rows = []
    with NearDedup(settings) as engine, tempfile.TemporaryDirectory(prefix="dedup-index-bench-") as scratch:
        for k in args.earlier:
            store = ShardStore(f"{scratch}/k{k}")
            keys = earlier_corpus(store, settings, k, args.docs, args.seed)
            probe = probe_batch(store, settings, keys, args.docs, args.seed)
            index = partial(indexed, engine, DedupIndex.for_settings(store, ASSET, settings), keys, probe)
            reference = partial(every_segment, engine, store, keys, probe)
            build, _, _ = measure(meter, index, 1)
            fast, fast_rss, removed = measure(meter, index, args.repeats)
            slow, slow_rss, expected = measure(meter, reference, args.repeats)
            assert removed.equals(expected), f"K={k}: the index and the segments disagree"
            rows.append((k, build, fast, fast_rss, slow, slow_rss, removed.height))
            print(f"K={k}: done", file=sys.stderr, flush=True)
    meter.close()
    print(f"one batch of {args.docs} documents (matching only, from signatures) against K earlier batches")
    print(f"{'K':>5} {'index build s':>14} {'index s':>9} {'index +MB':>10} {'segments s':>11} {'segments +MB':>13} "
          f"{'segments/index':>15} {'removed':>8}")  # fmt: skip
    for k, build, fast, fast_rss, slow, slow_rss, removed in rows:
        print(
            f"{k:>5} {build:>14.2f} {fast:>9.3f} {fast_rss / 2**20:>10.0f} {slow:>11.3f} {slow_rss / 2**20:>13.0f} "
            f"{slow / fast:>14.1f}x {removed:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
