"""Dedup benchmark: our engine against datatrove's MinHash stages, datasketch and rensa.

All four run on one corpus with planted near duplicates.

Why: the dedup stage promises (1) at least 1.5x the documents per second of rensa in one process,
end to end and using every core, and (2) recall >= 0.95 at precision >= 0.99 on copies with up to
10% of their words edited, where FineWeb's settings (5-grams, 14 bands x 8 rows) find barely half.
This script measures both in one run and prints one table.

The corpus (built in memory, deterministic for a --seed):
- real text: the documents our own ingest extracts from ../shared/corpora/web-warc (Resiliparse,
  ~970 pages, mostly German and English, some Chinese and Bengali) and the paragraphs of
  WikiText-2's validation split; real documents that are already near duplicates of each other
  (exact word 3-gram Jaccard >= 0.2) are dropped, so planted copies are the only duplicates;
- synthetic recombinations up to --docs originals: 4-30 sentences drawn from all real text (sentences
  split at sentence ends and line breaks, 30-400 characters, each distinct);
- planted copies (--copy-share of --docs): a uniformly drawn original, copied with `rate` of its
  words replaced, inserted or deleted in spans of 1-3 words (replacement words drawn from the
  corpus), for each rate in --rates (0 = the same text respaced: an exact duplicate by doc_id),
  placed at a random position after their original.

Systems, all timed on the same documents, in the same order:
- ours, `resources.dedup.engine.NearDedup`, each preset: the corpus cut into --partitions partitions
  deduplicated one after another, each against the persisted index of the ones before
  (`resources.dedup.index.DedupIndex`: segments written as Parquet with ShardStore, sorted runs),
  shards of --shard-rows rows, signatures in one process per core; timed from engine start (pool
  start included) to the last partition's segment written;
- rensa and datasketch in this process: per document, lowercase + punctuation removed + 5-gram
  shingles in Python, an RMinHash / MinHash of 112 permutations, then an LSH index of 14 bands
  queried before inserting (first seen is kept), as their READMEs show;
- datatrove 0.10's four MinHash stages (bench/_datatrove_dedup.py in .venv-bench), FineWeb's
  settings, as many workers as we use; datatrove clusters with union-find and keeps one document
  per cluster, not always the first.

Quality: a planted copy counts as found when it was removed, or when its original was removed
and it was kept (the pair was resolved the other way round: datatrove does that). Precision is the
share of removed documents that have a planted duplicate; for ours, "dup_of right" is the share of
removals whose `duplicate_of` belongs to the same planted family.

    .venv/bin/python bench/dedup.py                       # ~30k documents, ~60 MB
    .venv/bin/python bench/dedup.py --docs 3000 --no-datatrove   # a quick run
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from resources.common.cpus import available_cpus  # noqa: E402
from resources.common.schemas import doc_id_of  # noqa: E402
from resources.common.storage import Manifest, ShardInfo, ShardStore  # noqa: E402
from resources.dedup.engine import NearDedup  # noqa: E402
from resources.dedup.index import CHAIN, INDEX, DedupIndex  # noqa: E402
from resources.dedup.minhash import normalize, shingle_hashes  # noqa: E402
from resources.dedup.settings import DedupSettings  # noqa: E402
from resources.ingest.engine import ingest_files  # noqa: E402
from resources.settings import IngestSettings  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
DEFAULT_REFERENCE_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
DATATROVE_SCRIPT = Path(__file__).resolve().parent / "_datatrove_dedup.py"
RENSA = "rensa"
FINEWEB = {"ngram": 5, "bands": 14, "rows": 8}
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n+")
_PUNCTUATION = re.compile(r"[^\w\s]+")


# -- the corpus --------------------------------------------------------------------------
@dataclass
class Corpus:
    """Documents in canonical order; `family` is the index of the original each one copies (its own
    index for originals); `rate` the edit rate of a planted copy, None for originals."""

    frame: pl.DataFrame  # doc_id, text, family, rate
    real: int
    seconds: float

    @property
    def megabytes(self) -> float:
        return self.frame.get_column("text").str.len_bytes().sum() / 1e6


def build_corpus(docs: int, copy_share: float, rates: list[float], seed: int, workers: int) -> Corpus:
    started = time.perf_counter()
    rng = random.Random(seed)
    real = _distinct(_warc_texts(workers) + _wikitext_paragraphs())
    sentences = list(dict.fromkeys(s.strip() for t in real for s in _SENTENCE.split(t) if 30 <= len(s.strip()) <= 400))
    vocabulary = [w for s in sentences[::7] for w in s.split()]
    copies = round(docs * copy_share)
    originals = real[: docs - copies]
    while len(originals) < docs - copies:
        originals.append(" ".join(rng.sample(sentences, rng.randint(4, 30))))
    rng.shuffle(originals)
    texts, family, rate = list(originals), list(range(len(originals))), [None] * len(originals)
    position = [float(i) for i in range(len(originals))]
    for k in range(copies):
        source, edit_rate = rng.randrange(len(originals)), rates[k % len(rates)]
        texts.append(edit(originals[source], edit_rate, rng, vocabulary))
        family.append(source)
        rate.append(edit_rate)
        position.append(rng.uniform(source + 0.01, len(originals)))
    order = sorted(range(len(texts)), key=position.__getitem__)
    frame = pl.DataFrame(
        {
            "doc_id": [doc_id_of(texts[i]) for i in order],
            "text": [texts[i] for i in order],
            "family": [family[i] for i in order],
            "rate": [rate[i] for i in order],
        },
        schema={"doc_id": pl.String, "text": pl.String, "family": pl.Int64, "rate": pl.Float64},
    )
    return Corpus(frame, min(len(real), len(originals)), time.perf_counter() - started)


def edit(text: str, rate: float, rng: random.Random, vocabulary: list[str]) -> str:
    """About `rate` of the words replaced, inserted or deleted, in spans of 1-3 words."""
    words = text.split()
    budget = round(rate * len(words))
    while budget > 0 and words:
        span, at = min(rng.randint(1, 3), budget), rng.randrange(len(words))
        new = rng.choices(vocabulary, k=span)
        operation = rng.randrange(3)
        if operation == 0:
            words[at : at + span] = new
        elif operation == 1:
            words[at:at] = new
        else:
            del words[at : at + span]
        budget -= span
    return " ".join(words)


def _warc_texts(workers: int) -> list[str]:
    frames: list[pl.DataFrame] = []

    def keep(index: int, frame: pl.DataFrame) -> ShardInfo:
        frames.append(frame)
        return ShardInfo(path=f"memory-{index}", rows=frame.height, bytes=0, sha256="")

    files = sorted(str(p) for p in (CORPORA / "web-warc").glob("*.warc.gz"))
    ingest_files(files, crawl_batch="bench", settings=IngestSettings(workers=workers), write_shard=keep)
    return [t for f in frames for t in f.get_column("text").to_list()]


def _wikitext_paragraphs() -> list[str]:
    lines = (CORPORA / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if len(line.strip()) >= 200 and not line.strip().startswith("=")]


def _distinct(texts: list[str], threshold: float = 0.2, common: int = 20) -> list[str]:
    """Drop texts without a word, and texts whose exact word 3-gram Jaccard with an earlier text
    reaches `threshold`, counting shared shingles through an inverted index (shingles in more
    than `common` texts, such as "one of the", are left out of the count)."""
    hashes, offsets = shingle_hashes(normalize(pl.Series(texts)), 3)
    shingles = pl.DataFrame({"doc": np.repeat(np.arange(len(texts)), np.diff(offsets)), "shingle": hashes}).unique()
    size = dict(shingles.group_by("doc").len().iter_rows())
    rare = shingles.filter(pl.len().over("shingle").is_between(2, common))
    shared = (
        rare.join(rare, on="shingle", suffix="_later")
        .filter(pl.col("doc") < pl.col("doc_later"))
        .group_by("doc", "doc_later")
        .len("shared")
    )
    dropped = {later for doc, later, n in shared.iter_rows() if n / (size[doc] + size[later] - n) >= threshold}
    return [text for i, text in enumerate(texts) if i in size and i not in dropped]


# -- the systems -------------------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    removed: set[str]  # doc_ids
    duplicate_of: dict[str, str] = field(default_factory=dict)


@dataclass
class System:
    name: str
    settings: str
    run: Callable[[], Run]
    repeats: int
    seconds: list[float] = field(default_factory=list)
    result: Run | None = None


def ours(corpus: Corpus, preset: str, partitions: int, shard_rows: int, workers: int) -> Callable[[], Run]:
    frame = corpus.frame.select("doc_id", "text")

    def run() -> Run:
        with tempfile.TemporaryDirectory(prefix="dedup-bench-") as scratch:
            store = ShardStore(scratch)
            started = time.perf_counter()
            removed: list[pl.DataFrame] = []
            settings = DedupSettings(preset=preset, workers=workers)
            keys: list[str] = []
            with NearDedup(settings) as engine:
                for index, part in enumerate(_split(frame, partitions)):
                    with DedupIndex.for_settings(store, "dedup", settings).earlier(keys) as earlier:
                        result = engine.dedup_partition(part.iter_slices(shard_rows), earlier.runs)
                        shards = [
                            store.write_parquet_shard("dedup", f"p{index}", i, segment, INDEX)
                            for i, segment in enumerate(result.segment.frames())
                        ]
                        store.commit(Manifest("dedup", f"p{index}", shards, stats={CHAIN: earlier.record()}))
                    keys.append(f"p{index}")
                    removed.append(result.removed)
            seconds = time.perf_counter() - started
        table = pl.concat(removed)
        return Run(seconds, set(table.get_column("doc_id")), dict(table.select("doc_id", "duplicate_of").iter_rows()))

    return run


def _split(frame: pl.DataFrame, parts: int) -> Iterator[pl.DataFrame]:
    bounds = np.linspace(0, frame.height, parts + 1).astype(int)
    for start, stop in itertools.pairwise(bounds):
        yield frame.slice(start, stop - start)


def _shingles(text: str, n: int) -> list[str]:
    """The usual per-document Python: lowercase, punctuation out, word n-grams joined by spaces."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return [" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))]


def rensa_run(corpus: Corpus) -> Callable[[], Run]:
    import rensa

    ids, texts = corpus.frame.get_column("doc_id").to_list(), corpus.frame.get_column("text").to_list()
    num_perm = FINEWEB["bands"] * FINEWEB["rows"]

    def run() -> Run:
        started = time.perf_counter()
        lsh = rensa.RMinHashLSH(threshold=0.72, num_perm=num_perm, num_bands=FINEWEB["bands"])
        removed = set()
        for key, (doc_id, text) in enumerate(zip(ids, texts, strict=True)):
            minhash = rensa.RMinHash(num_perm=num_perm, seed=1)
            minhash.update(_shingles(text, FINEWEB["ngram"]))
            if lsh.query(minhash):
                removed.add(doc_id)
            else:
                lsh.insert(key, minhash)
        return Run(time.perf_counter() - started, removed)

    return run


def datasketch_run(corpus: Corpus) -> Callable[[], Run]:
    from datasketch import MinHash, MinHashLSH

    ids, texts = corpus.frame.get_column("doc_id").to_list(), corpus.frame.get_column("text").to_list()
    num_perm = FINEWEB["bands"] * FINEWEB["rows"]

    def run() -> Run:
        started = time.perf_counter()
        lsh = MinHashLSH(num_perm=num_perm, params=(FINEWEB["bands"], FINEWEB["rows"]))
        removed = set()
        for key, (doc_id, text) in enumerate(zip(ids, texts, strict=True)):
            minhash = MinHash(num_perm=num_perm, seed=1)
            minhash.update_batch([s.encode() for s in _shingles(text, FINEWEB["ngram"])])
            if lsh.query(minhash):
                removed.add(doc_id)
            else:
                lsh.insert(key, minhash)
        return Run(time.perf_counter() - started, removed)

    return run


def datatrove_run(corpus: Corpus, python: Path, workers: int) -> Callable[[], Run]:
    def run() -> Run:
        with tempfile.TemporaryDirectory(prefix="dedup-bench-dt-") as scratch:
            folder = Path(scratch) / "corpus"
            folder.mkdir()
            # one file per worker: datatrove's signature and filter stages parallelize over files
            for index, part in enumerate(_split(corpus.frame.with_row_index("id"), workers)):
                part.select(pl.col("id").cast(pl.String), "text").write_ndjson(folder / f"{index:05d}.jsonl")
            removed_file, timing_file = Path(scratch) / "removed.txt", Path(scratch) / "timing.json"
            command = [str(python), str(DATATROVE_SCRIPT), str(folder), "--workers", str(workers)]
            command += ["--removed", str(removed_file), "--timing", str(timing_file)]
            command += ["--ngram", str(FINEWEB["ngram"]), "--bands", str(FINEWEB["bands"])]
            command += ["--rows", str(FINEWEB["rows"])]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
                raise RuntimeError(f"datatrove run failed (exit {done.returncode}):\n{tail}")
            timing = json.loads(timing_file.read_text())
            ids = corpus.frame.get_column("doc_id")
            removed = {ids[int(line)] for line in removed_file.read_text().split()}
        return Run(timing["seconds"], removed)

    return run


# -- measuring ---------------------------------------------------------------------------
def measure(systems: list[System]) -> None:
    """Interleaved rounds, so a noisy spell on this shared machine hurts every system alike."""
    for round_ in range(max(s.repeats for s in systems)):
        for system in systems:
            if round_ < system.repeats:
                result = system.run()
                system.seconds.append(result.seconds)
                system.result = system.result or result
                print(f"  round {round_ + 1}: {system.name:<28} {result.seconds:7.2f} s", file=sys.stderr)


def quality(corpus: Corpus, run: Run, rates: list[float]) -> dict[str, float]:
    """Recall per edit rate, precision, and (for ours) whether duplicate_of is the right family."""
    frame = corpus.frame.with_columns(removed=pl.col("doc_id").is_in(list(run.removed)))
    originals = frame.filter(pl.col("rate").is_null()).select("family", source_removed="removed")
    copies = frame.filter(pl.col("rate").is_not_null()).join(originals, on="family", how="left")
    found = copies.with_columns(found=pl.col("removed") | (pl.col("source_removed") & ~pl.col("removed")))
    scores = {f"recall@{r:g}": found.filter(pl.col("rate") == r).get_column("found").mean() for r in rates}
    family_size = frame.group_by("family").len("members")
    removed = frame.filter("removed").join(family_size, on="family")
    scores["removed"] = removed.height
    scores["precision"] = (removed.get_column("members") > 1).mean() if removed.height else 1.0
    if run.duplicate_of:
        family_of = dict(frame.select("doc_id", "family").unique("doc_id", keep="first").iter_rows())
        right = [family_of[doc] == family_of.get(target) for doc, target in run.duplicate_of.items()]
        scores["dup_of right"] = sum(right) / len(right) if right else 1.0
    return scores


def table(systems: list[System], corpus: Corpus, rates: list[float]) -> str:
    docs = corpus.frame.height
    rensa_rate = next((docs / min(s.seconds) for s in systems if s.name == RENSA), None)
    datatrove_rate = next((docs / min(s.seconds) for s in systems if s.name == "datatrove"), None)
    recall_columns = [f"recall@{r:g}" for r in rates]
    header = (
        f"{'system':<20} {'settings':<24} {'docs/s':>8} {'vs rensa':>9} {'vs datatrove':>12} "
        + " ".join(f"{c:>11}" for c in recall_columns)
        + f" {'precision':>9} {'dup_of right':>12}"
    )
    lines = [header, "-" * len(header)]
    for system in systems:
        rate = docs / min(system.seconds)
        assert system.result is not None
        scores = quality(corpus, system.result, rates)
        ratio = f"{rate / rensa_rate:.2f}x" if rensa_rate else "-"
        ratio_dt = f"{rate / datatrove_rate:.1f}x" if datatrove_rate else "-"
        right = f"{scores['dup_of right']:.4f}" if "dup_of right" in scores else "-"
        lines.append(
            f"{system.name:<20} {system.settings:<24} {rate:>8.0f} {ratio:>9} {ratio_dt:>12} "
            + " ".join(f"{scores[c]:>11.3f}" for c in recall_columns)
            + f" {scores['precision']:>9.4f} {right:>12}"
        )
    lines.append(
        f"docs/s: {docs} documents / best wall time of the interleaved runs; recall@r: planted copies with"
        " r of their words edited that were resolved; precision: removed documents that have a planted"
        " duplicate."
    )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=30_000, help="documents in the corpus, copies included")
    parser.add_argument("--copy-share", type=float, default=0.25, help="share of the documents that are copies")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.10, 0.20], help="edit rates of the copies"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions our engine runs one after another")
    parser.add_argument("--shard-rows", type=int, default=5_000, help="rows per shard given to our engine")
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core (ours and datatrove)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours and rensa; the best counts")
    parser.add_argument("--seed", type=int, default=0, help="of the corpus")
    parser.add_argument(
        "--reference-python",
        type=Path,
        default=DEFAULT_REFERENCE_PYTHON,
        help="python of the reference environment with datatrove (make .venv-bench/.installed)",
    )
    parser.add_argument("--datatrove", action=argparse.BooleanOptionalAction, default=True, help="~2 min at 30k")
    parser.add_argument("--datasketch", action=argparse.BooleanOptionalAction, default=True, help="~15 s at 30k")
    parser.add_argument("--json", type=Path, help="write every number here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    workers = args.workers or available_cpus()
    corpus = build_corpus(args.docs, args.copy_share, args.rates, args.seed, workers)
    print(
        f"corpus: {corpus.frame.height} documents, {corpus.megabytes:.1f} MB ({corpus.real} real, the rest"
        f" recombined; {corpus.frame.get_column('rate').is_not_null().sum()} planted copies), built in"
        f" {corpus.seconds:.1f} s",
        file=sys.stderr,
    )
    fineweb = f"{FINEWEB['ngram']}-gram {FINEWEB['bands']}x{FINEWEB['rows']}"
    systems = []
    for preset in ("high_recall", "fineweb"):
        s = DedupSettings(preset=preset)
        described = f"{s.ngram}-gram {s.bands}x{s.rows} J>={s.min_similarity:g}"
        run = ours(corpus, preset, args.partitions, args.shard_rows, workers)
        systems.append(System(f"ours {preset}", described, run, args.repeats))
    systems.append(System(RENSA, fineweb, rensa_run(corpus), args.repeats))
    if args.datasketch:
        systems.append(System("datasketch", fineweb, datasketch_run(corpus), 1))
    if args.datatrove and args.reference_python.is_file():
        systems.append(System("datatrove", fineweb, datatrove_run(corpus, args.reference_python, workers), 1))
    elif args.datatrove:
        print(f"no {args.reference_python} (make .venv-bench/.installed): datatrove skipped", file=sys.stderr)
    measure(systems)
    print(table(systems, corpus, args.rates))
    if args.json:
        report = {
            "corpus": {"documents": corpus.frame.height, "megabytes": corpus.megabytes, "real": corpus.real},
            "systems": {
                s.name: {"settings": s.settings, "seconds": s.seconds, **quality(corpus, s.result, args.rates)}
                for s in systems
                if s.result is not None
            },
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
