"""Tokenization benchmark: our token-shard writer against a bare `tokenizers` encode loop.

Why: the tokenization stage promises to cost no more than the tokenizer itself: at least 0.9x
the tokens per second of a bare `Tokenizer.encode_batch` loop over the same texts, although it
also builds the flat array with an EOS after every document, the index (offsets, lengths,
hash split), and writes both through ShardStore. This script measures that in one run.

The corpus: the documents our own ingest extracts from every WARC file in --data-dir
(Resiliparse, ~970 pages, mostly German and English) and WikiText-2's validation split (one
document per section), cut into document shards of --shard-rows rows (polars frames in memory,
as the stage reads them from Parquet). The tokenizer: a byte-level BPE of --vocab-size trained on
that corpus with `resources.tokenize.tokenizer.train_tokenizer` (or --tokenizer DIR to load one).

Contenders, all on the same texts, in this process, on tokenizers' Rayon pool (--threads, default
one thread per core):
- bare encode_batch: `tok.encode_batch(texts)` on each shard's texts, counting `len(encoding)`;
  nothing is kept, no ids are read out;
- bare encode_batch_fast: the same with `encode_batch_fast` (no character offsets), the call our
  engine makes, so the strictest reference;
- ours: `resources.tokenize.shards.tokenize_partition` into a ShardStore in a temporary directory:
  encoding, ids to a numpy array, EOS, index with the split, tokens-*.bin and token_index Parquet
  written atomically with their hashes; with --metadata-prefix values also MeCo variants (their
  prefixes are extra tokens to encode: their rate is still counted in text tokens).

Rounds are interleaved (bare, fast, ours, ...) and repeated --repeats times; the best wall time
counts, because the machine is shared and noisy. CPU s (user + system of the whole process, all
threads) is steadier, though with several Rayon threads it includes their spinning between calls;
`--threads 1` compares pure CPU cost, the number to trust when the load average printed at the
start is high. Rates are text tokens (EOS and prefixes not counted) per second, so every ratio is
a time ratio.

    .venv/bin/python bench/tokenization.py [--repeats 5] [--threads 1] [--json out.json]

(Not `tokenize.py`: run as a script, a file of that name shadows the standard library's
`tokenize` for every other script in bench/, which then fail to import `dataclasses`.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from resources.common.cpus import available_cpus  # noqa: E402
from resources.common.storage import ShardInfo, ShardStore  # noqa: E402
from resources.filter.text_sources import read_documents  # noqa: E402
from resources.ingest.engine import ingest_files  # noqa: E402
from resources.settings import IngestSettings  # noqa: E402
from resources.tokenize.shards import TokenShardSettings, tokenize_partition  # noqa: E402
from resources.tokenize.tokenizer import TokenizerSettings, TrainedTokenizer, load_tokenizer, train_tokenizer  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
REFERENCE = "bare encode_batch"
GOAL = 0.9


@dataclass
class Contender:
    name: str
    run: Callable[[], int]  # returns the text tokens it encoded
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    tokens: int = 0

    def measure(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.tokens = self.run()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)


def corpus(data_dir: Path, wikitext: Path, shard_rows: int) -> list[pl.DataFrame]:
    """Document shards (doc_id, text, url, domain) of the extracted WARC pages and WikiText."""
    frames: list[pl.DataFrame] = []

    def keep(index: int, frame: pl.DataFrame) -> ShardInfo:
        frames.append(frame.select("doc_id", "text", "url", "domain"))
        return ShardInfo(path=f"memory-{index}", rows=frame.height, bytes=0, sha256="")

    files = sorted(str(p) for p in data_dir.glob("*.warc.gz"))
    ingest_files(files, crawl_batch="bench", settings=IngestSettings(), write_shard=keep)
    sections = read_documents(str(wikitext))
    wiki = pl.DataFrame(
        {
            "doc_id": [f"wikitext-{i:05d}" for i in range(len(sections))],
            "text": sections,
            "url": [f"https://en.wikipedia.org/wiki/section_{i}" for i in range(len(sections))],
            "domain": ["en.wikipedia.org"] * len(sections),
        }
    )
    documents = pl.concat([*frames, wiki])
    return [documents.slice(start, shard_rows) for start in range(0, documents.height, shard_rows)]


def bare(tokenizer: TrainedTokenizer, shards: list[list[str]], fast: bool) -> Callable[[], int]:
    encode = tokenizer.tokenizer.encode_batch_fast if fast else tokenizer.tokenizer.encode_batch

    def run() -> int:
        return sum(len(encoding) for texts in shards for encoding in encode(texts, add_special_tokens=False))

    return run


def ours(
    tokenizer: TrainedTokenizer, frames: list[pl.DataFrame], settings: TokenShardSettings, workdir: Path
) -> Callable[[], int]:
    store = ShardStore(str(workdir / settings.metadata_prefix))

    def run() -> int:
        result = tokenize_partition(store, "tokenized", "bench", frames, tokenizer, settings)
        return result.tokens - result.stats["documents"] - result.stats["prefix_tokens"]

    return run


def report(contenders: list[Contender], context: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    by_name = {c.name: c for c in contenders}
    reference, fast = by_name[REFERENCE], by_name["bare encode_batch_fast"]
    columns = (
        ("tokens", 9), ("wall s", 7), ("median", 7), ("CPU s", 6), ("Mtok/s", 7), ("vs bare", 8), ("(CPU)", 6),
        ("vs fast", 8),
    )  # fmt: skip
    header = f"{'system':32}" + "".join(f" {name:>{width}}" for name, width in columns)
    lines = [header, "-" * len(header)]
    rows = []
    for c in contenders:
        wall, cpu = min(c.wall), min(c.cpu)
        row = {
            "system": c.name,
            "tokens": c.tokens,
            "best_wall_s": wall,
            "median_wall_s": statistics.median(c.wall),
            "best_cpu_s": cpu,
            "walls": c.wall,
            "cpus": c.cpu,
            "mtokens_per_s": c.tokens / wall / 1e6,
            "vs_bare": min(reference.wall) / wall,
            "vs_bare_cpu": min(reference.cpu) / cpu,
            "vs_bare_fast": min(fast.wall) / wall,
        }
        rows.append(row)
        lines.append(
            f"{c.name:32} {c.tokens:>9} {wall:>7.3f} {row['median_wall_s']:>7.3f} {cpu:>6.2f} "
            f"{row['mtokens_per_s']:>7.3f} {row['vs_bare']:>7.2f}x {row['vs_bare_cpu']:>5.2f}x "
            f"{row['vs_bare_fast']:>7.2f}x"
        )
    plain = next(r for r in rows if r["system"] == "ours (metadata_prefix none)")
    met = "met" if plain["vs_bare"] >= GOAL else "MISSED"
    lines += [
        f"Mtok/s: text tokens (no EOS, no prefixes) / best wall time of {context['repeats']} interleaved rounds "
        "(median: their median, to judge the noise); CPU s: least CPU time (all threads)",
        f"vs bare: against `{REFERENCE}`, wall and (CPU); vs fast: against `bare encode_batch_fast`, wall",
        f"goal ours >= {GOAL}x bare encode_batch: {plain['vs_bare']:.2f}x wall, "
        f"{plain['vs_bare_cpu']:.2f}x CPU ({met}); vs encode_batch_fast {plain['vs_bare_fast']:.2f}x",
        f"load average at the end: {os.getloadavg()[0]:.1f}",
    ]
    return "\n".join(lines), {**context, "rows": rows, "goal": GOAL, "goal_met": met == "met"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=CORPORA / "web-warc", help="directory of *.warc.gz")
    parser.add_argument("--wikitext", type=Path, default=CORPORA / "wikitext-2" / "valid.txt")
    parser.add_argument("--shard-rows", type=int, default=20_000, help="documents per input shard (ingest's default)")
    parser.add_argument("--vocab-size", type=int, default=TokenizerSettings().vocab_size)
    parser.add_argument("--tokenizer", type=Path, help="load this tokenizer directory instead of training one")
    parser.add_argument("--metadata-prefix", nargs="*", default=["url"], choices=["url", "domain"])
    parser.add_argument("--batch-chars", type=int, default=TokenShardSettings().batch_chars)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the best counts")
    parser.add_argument(
        "--threads", type=int, default=0, help="tokenizers' Rayon threads (RAYON_NUM_THREADS); 0: one per core"
    )
    parser.add_argument("--json", type=Path, help="write every number here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:  # read when Rayon's pool starts, at the first parallel encode
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    frames = corpus(args.data_dir, args.wikitext, args.shard_rows)
    documents = sum(f.height for f in frames)
    megabytes = sum(int(f.get_column("text").str.len_bytes().sum()) for f in frames) / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        workdir = Path(tmp)
        if args.tokenizer:
            tokenizer = load_tokenizer(args.tokenizer)
        else:
            texts = (t for f in frames for t in f.get_column("text").to_list())
            tokenizer = train_tokenizer(texts, TokenizerSettings(vocab_size=args.vocab_size), workdir / "tokenizer")
        shards = [f.get_column("text").to_list() for f in frames]
        contenders = [
            Contender(REFERENCE, bare(tokenizer, shards, fast=False)),
            Contender("bare encode_batch_fast", bare(tokenizer, shards, fast=True)),
            *(
                Contender(
                    f"ours (metadata_prefix {prefix})",
                    ours(
                        tokenizer,
                        frames,
                        TokenShardSettings(metadata_prefix=prefix, batch_chars=args.batch_chars),
                        workdir,
                    ),
                )
                for prefix in ["none", *args.metadata_prefix]
            ),
        ]
        context = {
            "documents": documents,
            "text_mb": round(megabytes, 2),
            "shards": len(frames),
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_version": tokenizer.version,
            "cores": available_cpus(),
            "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "all cores"),
            "batch_chars": args.batch_chars,
            "repeats": args.repeats,
            "load_average_start": os.getloadavg()[0],
        }
        print(
            f"{documents} documents ({megabytes:.1f} MB of text) in {len(frames)} shard(s), tokenizer vocab "
            f"{tokenizer.vocab_size} ({tokenizer.version}), {available_cpus()} cores, Rayon threads: "
            f"{context['rayon_threads']}, load average "
            f"{context['load_average_start']:.1f}",
            flush=True,
        )
        for contender in contenders:  # a warm-up round: page cache, Rayon pool, tokenizer caches
            contender.run()
        for _ in range(args.repeats):
            for contender in contenders:
                contender.measure()
        counts = {c.tokens for c in contenders}
        if len(counts) != 1:
            raise SystemExit(f"contenders disagree on the text token count: {counts}")
    text, summary = report(contenders, context)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
