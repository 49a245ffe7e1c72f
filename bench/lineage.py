"""Lineage audit benchmark: `crawl2ckpt lineage ...` on a catalog of 10 M documents.

Why: every audit must answer in under a second, measured as the wall time of the command a user
types (Python start-up, imports and the catalog's opening included), on a catalog of 10 M crawled
documents; and the layout that makes this true (batch numbers, keys and the sorted `lookup`
table, see resources/common/catalog.py) must say what it costs on disk.

The catalog is built through the real recording code (`LineageCatalog.record_materialization`,
`record_checkpoint`, `record_takedown`), one crawl batch partition at a time as the pipeline
records it, from synthetic rows:
- --documents raw documents in --batches crawl batches (URLs on --domains domains, WARC files of
  1,000 records), of which 75% pass the filter, 80% of those the quality cut and 90% of those
  deduplication (the rest removed with `duplicate_of`); 2% of the deduplicated documents get a
  synthetic rewrite;
- token shards (index rows with offset, length, split) for the deduplicated and the synthetic
  documents;
- 20 checkpoints: generation g trains on the token shards of the first g/20 of the batches (a
  corpus growing crawl by crawl), every other one continued from the previous generation;
- one takedown request, applied to one batch (its token shards rematerialized with a new data
  version, so both versions stay in the catalog).

Then each audit runs 5 times as a subprocess (`python -m resources.cli --config ... lineage ...`)
and its median wall time is printed beside the reference: the same question asked of the
catalog without the lookup (plain `WHERE url = ?` / `WHERE doc_id = ?` over the tables, what
`audit-url` did before), also as a subprocess with Python and DuckDB start-up.

    .venv/bin/python bench/lineage.py                          # 10 M documents (~1 h on 2 busy cores)
    .venv/bin/python bench/lineage.py --documents 200000 --batches 20   # a quick run
    .venv/bin/python bench/lineage.py --catalog /path/catalog.duckdb --reuse   # time an existing build
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from resources.common.catalog import LineageCatalog  # noqa: E402
from resources.common.storage import Manifest, ShardInfo  # noqa: E402
from resources.lineage.checkpoints import checkpoint_record  # noqa: E402

CRAWL = "CC-MAIN-2024-22"
STAGES = [  # (asset, share of the previous stage kept, removal rule)
    ("filtered_documents", 0.75, "gopher_short_doc"),
    ("scored_documents", 0.80, "quality_low_score"),
    ("deduplicated_documents", 0.90, "dedup_near"),
]
CHECKPOINTS = 20


def batch_key(number: int) -> str:
    return f"{CRAWL}.CC-MAIN-20240518{number:06d}-{number:05d}"


def manifest(asset: str, partition: str, tag: str) -> Manifest:
    """A manifest whose data version is fixed by (asset, partition, tag)."""
    digest = hashlib.sha256(f"{asset}/{partition}/{tag}".encode()).hexdigest()
    return Manifest(asset, partition, [ShardInfo(f"part-00000-{digest[:16]}.parquet", 1, 1, digest)], run_id=tag)


def raw_batch(number: int, per_batch: int, domains: int) -> pl.DataFrame:
    start = number * per_batch
    ids = np.arange(start, start + per_batch)
    frame = pl.DataFrame({"i": ids})
    return frame.select(
        doc_id=pl.col("i").cast(pl.String).map_batches(_md5, return_dtype=pl.String),
        url=pl.format("https://site{}.example.com/article/{}.html", pl.col("i").hash(7) % domains, pl.col("i")),
        domain=pl.format("site{}.example.com", pl.col("i").hash(7) % domains),
        crawl=pl.lit(CRAWL),
        warc_path=pl.format(
            "s3://commoncrawl/crawl-data/{}/segments/1715971057216.39/warc/CC-MAIN-{}.warc.gz",
            pl.lit(CRAWL),
            pl.col("i") // 1000,
        ),
        warc_record_id=pl.format(
            "<urn:uuid:{}>", pl.col("i").cast(pl.String).map_batches(_uuid, return_dtype=pl.String)
        ),
        fetch_time=pl.lit(1_716_000_000_000_000).cast(pl.Datetime("us", "UTC"))
        + pl.duration(seconds=pl.col("i") % 86_400),
    )


def _md5(values: pl.Series) -> pl.Series:
    return pl.Series([hashlib.md5(v.encode()).hexdigest() for v in values.to_list()], dtype=pl.String)


def _uuid(values: pl.Series) -> pl.Series:
    out = []
    for v in values.to_list():
        h = hashlib.sha1(v.encode()).hexdigest()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}")
    return pl.Series(out, dtype=pl.String)


def token_index(docs: pl.DataFrame, file: str) -> pl.DataFrame:
    lengths = (docs.get_column("doc_id").str.slice(0, 3).str.to_integer(base=16) % 900 + 100).cast(pl.Int64)
    offsets = (lengths + 1).cum_sum() - (lengths + 1)
    split = (
        pl.when(docs.get_column("doc_id").str.slice(3, 2).str.to_integer(base=16) < 13)
        .then(pl.lit("validation"))
        .otherwise(pl.lit("train"))
    )
    return docs.select("doc_id").with_columns(offset=offsets, length=lengths, split=split, file=pl.lit(file))


def record_batch(catalog: LineageCatalog, number: int, per_batch: int, domains: int) -> dict[str, str]:
    """Every stage of one crawl batch, as the pipeline records it; returns the token data versions."""
    key = batch_key(number)
    catalog.record_batch(
        key, CRAWL, [f"s3://commoncrawl/crawl-data/{CRAWL}/warc/f-{number}-{j}.warc.gz" for j in range(3)]
    )
    docs = raw_batch(number, per_batch, domains)
    catalog.record_materialization(manifest("raw_documents", key, "1"), docs)
    rng = np.random.default_rng(number)
    for asset, share, rule in STAGES:
        keep = rng.random(docs.height) < share
        kept, gone = docs.filter(pl.Series(keep)), docs.filter(pl.Series(~keep))
        duplicate_of = gone.get_column("doc_id").str.reverse() if rule == "dedup_near" else None
        removed = gone.select("doc_id", "url").with_columns(
            stage=pl.lit(asset.split("_")[0]),
            rule=pl.lit(rule),
            detail=pl.lit("0.91"),
            duplicate_of=duplicate_of if duplicate_of is not None else pl.lit(None, pl.String),
        )
        catalog.record_materialization(manifest(asset, key, "1"), kept, removed)
        docs = kept
    synthetic = docs.filter(pl.Series(rng.random(docs.height) < 0.02)).with_columns(
        source_doc_id=pl.col("doc_id"),
        doc_id=pl.col("doc_id").str.reverse(),
        recipe=pl.lit("encyclopedic"),
        model=pl.lit("SmolLM2-135M-Instruct"),
    )
    catalog.record_materialization(manifest("synthetic_documents", key, "1"), synthetic)
    versions = {}
    for asset, rows, upstream in (
        ("token_shards", docs, "deduplicated_documents"),
        ("synthetic_token_shards", synthetic, "synthetic_documents"),
    ):
        m = manifest(asset, key, "1")
        m.inputs = {f"{upstream}[{key}]": "x"}
        catalog.record_materialization(m, token_index=token_index(rows, "tokens-00000-0123456789abcdef.bin"))
        versions[asset] = m.data_version
    return versions


def _stage_docs(catalog: LineageCatalog, asset: str, key: str) -> list[str]:
    return catalog.query("SELECT doc_id FROM documents WHERE asset = ? AND crawl_batch = ?", [asset, key])[
        "doc_id"
    ].to_list()


def record_checkpoints(catalog: LineageCatalog, versions: list[dict[str, str]], root: str) -> list[str]:
    names, parent = [], None
    for g in range(1, CHECKPOINTS + 1):
        upto = max(1, round(len(versions) * g / CHECKPOINTS))
        files = [
            {
                "path": f"{root}/{asset}/{batch_key(n)}/tokens-00000-0123456789abcdef.bin",
                "data_version": versions[n][asset],
                "train_tokens": 1000,
            }
            for n in range(upto)
            for asset in ("token_shards", "synthetic_token_shards")
        ]
        name = f"run-{hashlib.sha256(str(g).encode()).hexdigest()[:12]}/step-000300"
        step_manifest = {
            "step": 300,
            "created_at": f"2024-06-{g:02d}T00:00:00+00:00",
            "tokens_seen": 1_000_000,
            "total_tokens_seen": 1_000_000 * g,
            "data": [
                {"source": source, "weight": 0.5, "files": [f for f in files if f"/{asset}/" in f["path"]]}
                for source, asset in (("crawl", "token_shards"), ("synthetic", "synthetic_token_shards"))
            ],
            "trained_on": [{"path": f["path"], "data_version": f["data_version"]} for f in files],
            "continued_from": {"path": f"{root}/checkpoint/__all__/{parent}", "step": 300}
            if parent and g % 2
            else None,
            "config": {"preset": "small", "max_steps": 300, "lr": 0.003},
            "model": {"architecture": "LlamaForCausalLM", "preset": "small", "params": 124_000_000},
            "loss_history": [3.2],
        }
        found = checkpoint_record(name, step_manifest)
        catalog.record_checkpoint(found.row, found.inputs)
        names.append(name)
        parent = name
    return names


def build(path: str, documents: int, batches: int, domains: int) -> dict[str, float]:
    Path(path).unlink(missing_ok=True)
    catalog = LineageCatalog(path)
    per_batch = documents // batches
    started = time.perf_counter()
    versions = []
    for number in range(batches):
        versions.append(record_batch(catalog, number, per_batch, domains))
        if number % 20 == 19:
            print(f"  recorded {number + 1}/{batches} batches, {time.perf_counter() - started:.0f} s", flush=True)
    recorded = time.perf_counter() - started
    names = record_checkpoints(catalog, versions, "/data/store")
    # A takedown of one URL, applied to batch 0: the filter stage and the token shards rematerialized
    # without its document (the earlier token index stays: checkpoints trained on it).
    key, docs = batch_key(0), raw_batch(0, per_batch, domains)
    url = docs.get_column("url")[0]
    request = {
        "request_id": "0123456789ab",
        "created_at": "2024-06-25T00:00:00+00:00",
        "requested_by": "bench",
        "reason": "site owner request",
        "match": "url",
        "source": "cli:bench",
    }
    matches = {"request_id": pl.String, "doc_id": pl.String, "url": pl.String, "kind": pl.String}
    catalog.record_takedown(request, [("url", url)], pl.DataFrame(schema={**matches, "similarity": pl.Float64}))
    taken = (
        docs.head(1)
        .select("doc_id", "url")
        .with_columns(
            stage=pl.lit("takedown"), rule=pl.lit("takedown_url"), detail=pl.lit("0123456789ab url"), duplicate_of=None
        )
    )
    catalog.record_materialization(manifest("filtered_documents", key, "2"), docs.slice(1), taken)
    kept = pl.DataFrame(
        {"doc_id": [r for r in _stage_docs(catalog, "deduplicated_documents", key) if r != taken["doc_id"][0]]}
    )
    m = manifest("token_shards", key, "2")
    m.inputs = {f"deduplicated_documents[{key}]": "y"}
    catalog.record_materialization(m, token_index=token_index(kept, "tokens-00000-fedcba9876543210.bin"))
    compact_started = time.perf_counter()
    catalog.compact()
    return {"record_s": recorded, "compact_s": time.perf_counter() - compact_started, "checkpoints": len(names)}


def run_cli(config: str, args: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "resources.cli", "--config", config, *args], cwd=ROOT, capture_output=True, text=True
    )
    return time.perf_counter() - started, done.returncode


REFERENCE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
kind, value = sys.argv[2], sys.argv[3]
column = "url" if kind == "url" else "doc_id"
docs = con.execute(
    f"SELECT doc_id FROM documents WHERE {column} = ? UNION SELECT doc_id FROM removed WHERE {column} = ?",
    [value, value],
).fetchall()
for (doc,) in docs:
    con.execute("SELECT * FROM documents WHERE doc_id = ?", [doc]).fetchall()
    con.execute("SELECT * FROM removed WHERE doc_id = ? OR duplicate_of = ?", [doc, doc]).fetchall()
    con.execute("SELECT * FROM token_index WHERE doc_id = ? OR source_doc_id = ?", [doc, doc]).fetchall()
"""


def run_reference(path: str, kind: str, value: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", REFERENCE, path, kind, value], check=True, capture_output=True)
    return time.perf_counter() - started


def median_of(runs: int, timed: Callable[[], float]) -> float:
    return statistics.median(timed() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--domains", type=int, default=200_000)
    parser.add_argument("--catalog", default=None, help="where to build it (default: a temporary directory)")
    parser.add_argument("--reuse", action="store_true", help="time an existing catalog at --catalog")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="lineage-bench-")
    path = args.catalog or os.path.join(workdir, "catalog.duckdb")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; catalog {path}")
    built: dict[str, float] = {}
    if not args.reuse:
        print(f"building: {args.documents:,} documents in {args.batches} crawl batches ...", flush=True)
        built = build(path, args.documents, args.batches, args.domains)
    config = os.path.join(workdir, "settings.yaml")
    Path(config).write_text(json.dumps({"catalog": {"path": path}}))
    per_batch = args.documents // args.batches
    sample = raw_batch(args.batches // 2, per_batch, args.domains).row(7, named=True)
    taken = raw_batch(0, per_batch, args.domains).row(0, named=True)
    audits = [
        ("lineage checkpoint (latest)", ["lineage", "checkpoint"], None),
        (
            "lineage checkpoint (generation 1)",
            ["lineage", "checkpoint", "run-" + hashlib.sha256(b"1").hexdigest()[:12]],
            None,
        ),
        ("lineage url", ["lineage", "url", sample["url"]], ("url", sample["url"])),
        ("lineage url (taken down)", ["lineage", "url", taken["url"]], ("url", taken["url"])),
        ("lineage doc", ["lineage", "doc", sample["doc_id"]], ("doc", sample["doc_id"])),
        (
            "lineage diff (gen 19 -> 20)",
            [
                "lineage",
                "diff",
                "run-" + hashlib.sha256(b"19").hexdigest()[:12],
                "run-" + hashlib.sha256(b"20").hexdigest()[:12],
            ],
            None,
        ),
        ("crawl2ckpt --help", ["--help"], None),
    ]
    results = []
    for name, argv, reference in audits:
        codes = set()

        def ours(argv: list[str] = argv, codes: set[int] = codes) -> float:
            seconds, code = run_cli(config, argv)
            codes.add(code)
            return seconds

        mine = median_of(args.runs, ours)
        theirs = median_of(args.runs, lambda r=reference: run_reference(path, *r)) if reference else None
        results.append({"audit": name, "seconds": mine, "exit_codes": sorted(codes), "reference_seconds": theirs})
    size = os.path.getsize(path)
    millions = args.documents / 1e6
    print()
    title = f"audit (median of {args.runs} subprocess runs)"
    print(f"{title:44} {'ours s':>8} {'scan s':>8} {'ratio':>7}  exit")
    for r in results:
        ref = r["reference_seconds"]
        ratio = f"{ref / r['seconds']:.1f}x" if ref else "-"
        print(f"{r['audit']:44} {r['seconds']:8.3f} {ref if ref else float('nan'):8.3f} {ratio:>7}  {r['exit_codes']}")
    print(
        f"\ncatalog: {size / 1e9:.2f} GB for {args.documents:,} documents = {size / 1e6 / millions:.0f} MB per million"
        + (f"; recorded in {built['record_s']:.0f} s, lookup compaction {built['compact_s']:.1f} s" if built else "")
    )
    print(
        "scan = the same lookups without batch numbers and keys (plain WHERE url = ? / doc_id = ?); ratio = scan / ours"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"documents": args.documents, "bytes": size, "build": built, "audits": results}, indent=2)
        )


if __name__ == "__main__":
    main()
