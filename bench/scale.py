"""Scale benchmark: does the per-batch cost of each stage stay flat as the corpus grows?

    .venv/bin/python bench/scale.py --sizes 10000 100000 [1000000] [--batch-docs 2000] [--workdir DIR]

A synthetic crawl is built from the real pages of ../shared/corpora/web-warc: their main text
(extracted by our ingest) is cut into paragraphs, grouped by language (lid.176), and every new
document is 3-10 paragraphs of one language drawn at random, under a new URL, as an HTML page in a
gzipped WARC `response` record. Planted copies: --exact-share of the documents repeat an earlier
document (any earlier batch) word for word, --near-share repeat one with every 20th word replaced
(a ~5% edit). One WARC file per crawl batch of --batch-docs records; the crawl sensor registers
the batches as it would on a real crawl.

The chain, rewriting off, runs as real Dagster materializations in this process (an instance in
the work directory, one run per asset and crawl batch, as the sensor and automation would start
them): raw_documents -> filtered_documents -> scored_documents -> deduplicated_documents ->
token_shards per batch; the quality classifier and the tokenizer are trained once, after the first
batch, and kept (their default). The corpus grows batch by batch; each size in --sizes is a
checkpoint of the same run, and after the largest size one more batch is added.

Measured per asset partition: wall time of the run (Dagster's overhead included: the run wall time
minus the engine's own `seconds` from the materialization metadata), CPU seconds of this process
and its worker processes, and peak resident memory of the process tree (sampled every 0.2 s).
Printed per stage: documents/s of wall time, documents per CPU-second (= per core), the growth
exponent k of the cumulative time between sizes (time ~ documents**k: 1.0 is a constant cost per
document), peak RSS, and the first batch against the batch added after the largest size.

The machine is shared and noisy: CPU seconds are steadier than wall time, so k is given for both.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

if TYPE_CHECKING:
    import dagster as dg

    from resources.settings import Settings

# Everything else is imported where it is used: ingest's extraction workers are spawned processes
# that import this script again, and should not pay for Dagster, polars and torch each time.

CORPORA = ROOT.parent / "shared" / "corpora"
CRAWL = "CC-SCALE-2024-30"
PER_BATCH = ("raw_documents", "filtered_documents", "scored_documents", "deduplicated_documents", "token_shards")
MODELS = {"filtered_documents": "quality_classifier", "deduplicated_documents": "tokenizer"}  # trained after these
MIN_PARAGRAPH_WORDS = 12


# -- the synthetic crawl ------------------------------------------------------------------------
def paragraph_pools(min_paragraphs: int = 50) -> dict[str, list[str]]:
    """Distinct paragraphs of the real pages, by language (lid.176 on each page's main text)."""
    import polars as pl

    from resources.common.storage import ShardInfo
    from resources.filter.language_id import LanguageIdentifier, LanguageSettings
    from resources.ingest.engine import IngestSettings, ingest_files

    texts: list[str] = []

    def keep(index: int, frame: pl.DataFrame) -> ShardInfo:
        texts.extend(frame.get_column("text").to_list())
        return ShardInfo(path=f"memory-{index}", rows=frame.height, bytes=0, sha256="")

    files = sorted(str(p) for p in (CORPORA / "web-warc").glob("*.warc.gz"))
    ingest_files(files, crawl_batch="pools", settings=IngestSettings(), write_shard=keep)
    languages, _ = LanguageIdentifier(LanguageSettings(languages=["en"], min_score=0.0)).predict(texts)
    pools: dict[str, dict[str, None]] = defaultdict(dict)
    for text, language in zip(texts, languages, strict=True):
        for line in text.split("\n"):
            if len(line.split()) >= MIN_PARAGRAPH_WORDS:
                pools[language][line.strip()] = None
    return {language: list(p) for language, p in sorted(pools.items()) if len(p) >= min_paragraphs}


class SyntheticCrawl:
    """Deterministic batches of new documents and planted copies, written as WARC files."""

    def __init__(self, pools: dict[str, list[str]], directory: Path, exact: float, near: float, seed: int) -> None:
        from tests.warc_factory import gzip_member, response_record

        self.gzip_member, self.response_record = gzip_member, response_record
        self.pools, self.directory = pools, directory
        self.languages = list(pools)
        self.weights = [len(pools[language]) for language in self.languages]
        self.exact, self.near = exact, near
        self.rng = random.Random(seed)
        self.earlier: list[tuple[str, tuple[int, ...]]] = []  # a uniform reservoir of earlier documents
        self.documents = 0
        self.planted: dict[str, int] = defaultdict(int)
        self.sites = [f"site{n:04d}" for n in range(2000)]

    def write_batch(self, index: int, records: int) -> Path:
        path = self.directory / f"{CRAWL}-{index:05d}.warc.gz"
        with open(path, "wb") as out:
            for _ in range(records):
                out.write(self.gzip_member(self._record(), level=3))
        return path

    def _record(self) -> bytes:
        rng, number = self.rng, self.documents
        self.documents += 1
        draw = rng.random()
        if self.earlier and draw < self.exact + self.near:
            language, paragraphs = rng.choice(self.earlier)
            kind = "exact" if draw < self.exact else "near"
        else:
            language = rng.choices(self.languages, self.weights)[0]
            pool = self.pools[language]
            paragraphs = tuple(rng.sample(range(len(pool)), min(len(pool), rng.randint(3, 10))))
            kind = "new"
        self.planted[kind] += 1
        if len(self.earlier) < 100_000:
            self.earlier.append((language, paragraphs))
        elif (slot := rng.randrange(number)) < len(self.earlier):
            self.earlier[slot] = (language, paragraphs)
        texts = [self.pools[language][p] for p in paragraphs]
        if kind == "near":
            texts = [" ".join("zebra" if i % 20 == 19 else w for i, w in enumerate(t.split())) for t in texts]
        title = html.escape(" ".join(texts[0].split()[:8]))
        body = "\n".join(f"<p>{html.escape(t)}</p>" for t in texts)
        page = (
            f'<!DOCTYPE html>\n<html lang="{language}"><head><title>{title}</title></head>\n'
            f"<body><article><h1>{title}</h1>\n{body}\n</article></body></html>\n"
        )
        url = f"https://www.{rng.choice(self.sites)}.example/{language}/{number:08d}.html"
        return self.response_record(url, page)


# -- measuring ----------------------------------------------------------------------------------
class Meter:
    """CPU seconds and peak resident memory of this process and its children (workers)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return [self.process]

    def rss(self) -> int:
        total = 0
        for member in self._tree():
            with suppress(psutil.Error):
                total += member.memory_info().rss
        return total

    def cpu(self) -> float:
        times = self.process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self._tree()[1:]:
            with suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self.rss())

    @contextmanager
    def window(self) -> Iterator[dict[str, float]]:
        self.peak = self.rss()
        cpu, started = self.cpu(), time.perf_counter()
        out: dict[str, float] = {}
        yield out
        out.update(wall=time.perf_counter() - started, cpu=self.cpu() - cpu, rss=max(self.peak, self.rss()))

    def close(self) -> None:
        self._stop.set()


@dataclass
class Step:
    asset: str
    batch: int
    documents: int
    wall: float
    cpu: float
    rss: int
    engine: float  # the engine's own seconds, from the materialization metadata


@dataclass
class Ledger:
    steps: list[Step] = field(default_factory=list)
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    sizes: dict[int, dict[str, float]] = field(default_factory=dict)  # documents -> wall and CPU so far
    dagster: list[float] = field(default_factory=list)  # wall seconds of a no-op asset partition

    def totals(self, asset: str, batches: int) -> tuple[float, float, float, int]:
        """Wall, CPU and engine seconds and documents of a stage over the first `batches` batches."""
        chosen = [s for s in self.steps if s.asset == asset and s.batch < batches]
        return (
            sum(s.wall for s in chosen),
            sum(s.cpu for s in chosen),
            sum(s.engine for s in chosen),
            sum(s.documents for s in chosen),
        )


def step_numbers(instance: dg.DagsterInstance, asset: str, key: str) -> tuple[int, float]:
    """Documents in and the engine's seconds of the latest materialization of an asset partition."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.partition == key
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    if asset == "raw_documents":
        return int(meta["records_read"]), float(meta["seconds"])
    if asset == "token_shards":
        seconds = meta["tokens"] / meta["tokens_per_second"] if meta["tokens_per_second"] else 0.0
        return int(meta["documents"]), float(seconds)
    return int(meta["documents_in"]), float(meta["seconds"]) + float(meta.get("dedup_seconds", 0.0))


# -- running ----------------------------------------------------------------------------------
def bench_settings(workdir: Path, shard_rows: int, documents_in_memory: int) -> Settings:
    """The demo's settings (languages, heuristics, classifier) on the synthetic crawl, rewriting off."""
    import yaml

    from resources.settings import Settings

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw.pop("rewrite", None)
    raw.get("evaluation", {}).pop("reference", None)  # its default model is the rewriter's: off with rewriting
    raw["storage"] = {"root": str(workdir / "store")}
    raw["catalog"] = {"path": str(workdir / "catalog.duckdb")}
    raw["source"] = {"url": str(workdir / "crawl"), "files_per_partition": 1, "max_files_per_tick": 100_000}
    raw["ingest"] = {**raw.get("ingest", {}), "shard_rows": shard_rows}
    raw["dedup"] = {"wait_retries": 0, "near": {"preset": "high_recall", "documents_in_memory": documents_in_memory}}
    return Settings.model_validate(raw).resolved()


def run(args: argparse.Namespace, checkpoint: Callable[[Ledger], None]) -> Ledger:
    """The growing corpus through the chain; `checkpoint(ledger)` at each size and at the end."""
    import dagster as dg

    from assets.partitions import crawl_batches
    from definitions import build_definitions
    from tests.automation_driver import materialize, tick_sensor

    @dg.asset(partitions_def=crawl_batches)
    def noop() -> None:
        """Nothing: what Dagster itself costs per asset partition, materialized like the stages."""

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scale-bench-"))
    (workdir / "crawl").mkdir(parents=True, exist_ok=True)
    settings = bench_settings(workdir, args.shard_rows, args.documents_in_memory)
    defs = build_definitions(settings)
    started = time.perf_counter()
    pools = paragraph_pools()
    print(
        f"paragraph pools from {CORPORA / 'web-warc'}: "
        + ", ".join(f"{language} {len(pool)}" for language, pool in pools.items())
        + f" ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    crawl = SyntheticCrawl(pools, workdir / "crawl", args.exact_share, args.near_share, args.seed)
    (workdir / "dagster_home").mkdir(exist_ok=True)
    instance = dg.DagsterInstance.local_temp(str(workdir / "dagster_home"))
    meter, ledger = Meter(), Ledger()
    cursor: str | None = None
    batches, generated, chain_wall = 0, 0.0, 0.0
    targets = [*sorted(args.sizes), max(args.sizes) + args.batch_docs]  # the last: one batch after the largest
    try:
        for target in targets:
            first_new = batches
            while batches * args.batch_docs < target:
                begin = time.perf_counter()
                crawl.write_batch(batches, args.batch_docs)
                generated += time.perf_counter() - begin
                batches += 1
            tick = tick_sensor(defs, instance, cursor)
            cursor = tick.cursor or cursor
            keys = instance.get_dynamic_partitions("crawl_batches")
            begin = time.perf_counter()
            for index in range(first_new, batches):
                for asset in PER_BATCH:
                    with meter.window() as measured:
                        result = materialize(defs, instance, [asset], keys[index])
                    assert result.success, f"{asset}[{keys[index]}] failed"
                    documents, engine = step_numbers(instance, asset, keys[index])
                    ledger.steps.append(Step(asset, index, documents, **measured, engine=engine))
                    if asset == PER_BATCH[0]:
                        with meter.window() as measured:
                            assert dg.materialize([noop], instance=instance, partition_key=keys[index]).success
                        ledger.dagster.append(measured["wall"])
                    if index == 0 and asset in MODELS:
                        with meter.window() as model:
                            assert materialize(defs, instance, [MODELS[asset]]).success
                        ledger.models[MODELS[asset]] = model
                if (index + 1) % 10 == 0:
                    print(f"  {(index + 1) * args.batch_docs:,} documents through the chain", flush=True)
            chain_wall += time.perf_counter() - begin
            documents = batches * args.batch_docs
            if target in args.sizes:
                ledger.sizes[documents] = {"chain_wall": chain_wall, "batches": batches}
                print(f"{documents:,} documents, {batches} batches: chain {chain_wall:,.0f} s wall", flush=True)
            checkpoint(ledger)
    finally:
        meter.close()
        instance.dispose()
    print(
        f"synthetic crawl: {crawl.documents:,} records ({dict(crawl.planted)}), written in {generated:.0f} s; "
        f"work directory {workdir}",
        flush=True,
    )
    return ledger


# -- reporting --------------------------------------------------------------------------------
def exponent(small: float, large: float, n_small: int, n_large: int) -> float:
    return math.log(large / small) / math.log(n_large / n_small) if small > 0 and large > 0 else float("nan")


def report(ledger: Ledger, args: argparse.Namespace) -> str:
    sizes = sorted(ledger.sizes)
    batches = {n: int(ledger.sizes[n]["batches"]) for n in sizes}
    last = max(s.batch for s in ledger.steps)
    header = ["stage", "docs/s wall", "docs/CPU-s", "peak RSS MB", "s outside engine"]
    header += [f"k {a:,}->{b:,} wall/CPU/engine" for a, b in itertools.pairwise(sizes)]
    header += ["first batch s", "last batch s", "last/first"]
    rows = []
    for asset in PER_BATCH:
        wall, cpu, _, docs = ledger.totals(asset, batches[sizes[-1]])
        steps = [s for s in ledger.steps if s.asset == asset and s.batch < batches[sizes[-1]]]
        first = next(s for s in ledger.steps if s.asset == asset and s.batch == 0)
        final = next(s for s in ledger.steps if s.asset == asset and s.batch == last)
        row = [asset, f"{docs / wall:,.0f}", f"{docs / cpu:,.0f}", f"{max(s.rss for s in steps) / 2**20:,.0f}"]
        row.append(f"{sum(s.wall - s.engine for s in steps) / len(steps):.2f}")
        for a, b in itertools.pairwise(sizes):
            small, large = ledger.totals(asset, batches[a]), ledger.totals(asset, batches[b])
            row.append("/".join(f"{exponent(x, y, a, b):.2f}" for x, y in zip(small[:3], large[:3], strict=True)))
        row += [f"{first.wall:.2f}", f"{final.wall:.2f}", f"{final.wall / first.wall:.2f}"]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    noop = sorted(ledger.dagster)
    lines.append(
        f"s outside engine: run wall time minus the engine's seconds (Dagster, catalog writes, model loading); "
        f"Dagster alone (a no-op asset partition, materialized the same way): median {noop[len(noop) // 2]:.2f} s. "
        "k: growth exponent of the stage's total time between two sizes (time ~ documents**k). Last batch: the "
        "one added after the largest size, once the run gets there."
    )
    for name, numbers in ledger.models.items():
        lines.append(
            f"{name}: trained once after the first batch, {numbers['wall']:.1f} s wall, "
            f"peak RSS {numbers['rss'] / 2**20:,.0f} MB"
        )
    for n in sizes:
        wall = ledger.sizes[n]["chain_wall"]
        lines.append(
            f"{n:,} documents ingest -> tokens: {wall:,.0f} s wall ({batches[n]} batches of {args.batch_docs})"
        )
    from resources.common.cpus import available_cpus

    lines.append(
        f"{available_cpus()} CPUs available, load average {psutil.getloadavg()[0]:.1f} at the end (shared machine: "
        "wall times carry other work; CPU seconds less so). Peak RSS: this process and its workers, set by "
        f"ingest.shard_rows={args.shard_rows} and dedup documents_in_memory={args.documents_in_memory}."
    )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes, in documents")
    parser.add_argument("--batch-docs", type=int, default=2000, help="WARC records per crawl batch")
    parser.add_argument("--exact-share", type=float, default=0.04, help="documents that copy an earlier one exactly")
    parser.add_argument("--near-share", type=float, default=0.06, help="documents that copy one with a 5%% edit")
    parser.add_argument("--shard-rows", type=int, default=2000, help="ingest.shard_rows: bounds every stage's memory")
    parser.add_argument("--documents-in-memory", type=int, default=100_000, help="dedup's sub-batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep everything here (default: a new temporary directory, kept)")
    parser.add_argument("--json", type=Path, help="also write every step's numbers here")
    args = parser.parse_args(argv)
    if len(args.sizes) < 2:
        parser.error("give at least two sizes: the growth exponent is measured between them")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    def checkpoint(ledger: Ledger) -> None:
        if len(ledger.sizes) >= 1:
            print(report(ledger, args), flush=True)
        if args.json:
            body = {"args": vars(args) | {"json": str(args.json)}, "steps": [vars(s) for s in ledger.steps]}
            args.json.write_text(json.dumps(body | {"models": ledger.models, "sizes": ledger.sizes}, indent=1))

    run(args, checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
