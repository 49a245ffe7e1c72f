"""Filtering benchmark: our language ID and heuristic rules against datatrove's, on the same documents.

Why: the filtering stage promises FineWeb's rules (datatrove's thresholds, unchanged) at a
fraction of the cost. This script checks both halves of that promise in one run:

- it extracts documents from every WARC file in --data-dir with our ingest (Resiliparse),
  once, and hands the very same texts to both sides (a JSONL file for the reference);
- ours: `resources.filter.language_id.LanguageIdentifier` (one batched lid.176 call) and each
  rule of `resources.filter.heuristics`, timed one rule at a time over all documents (each rule
  tokenizes for itself, as datatrove's do), then the whole chain in FineWeb's order
  (language -> Gopher repetition -> Gopher quality -> C4 -> FineWeb) through
  `HeuristicFilter`, where rules share one tokenization per document, then the whole stage
  (`DocumentFilter.process`: the chain, decontamination, the kept and removed tables);
  see bench/_filter_timing.py;
- the previous implementation: the same timing code run on a checkout of --previous (default:
  the commit before the compiled language ID and n-gram kernels), so the table gives the
  speed-up per step and whether every decision, removal key and detail stayed the same;
- datatrove's LanguageFilter, GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter
  and FineWebQualityFilter with their defaults, the same way, in the reference environment
  (bench/_datatrove_filter.py).

Every side runs one process, one after the other, timed in CPU seconds of that process (threads
included, so docs/s is per core; the machine is shared, and wall time would measure the
neighbours); model loading is not timed.
The table gives docs/s per rule and for the chain, the speed ratios, and how often the two
keep/drop decisions agree, with the confusion counts; below it, whether the rule that
failed was the same check, whether C4 left the same text, how our word counts compare with
spaCy's, and a few disagreeing documents per rule with both sides' reasons.

    .venv/bin/python bench/filter.py --reference-python .venv-bench/bin/python [--previous REF | --previous none]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from bench._filter_timing import STEPS, time_steps  # noqa: E402
from resources.common.storage import ShardInfo  # noqa: E402
from resources.filter.language_id import LanguageIdentifier, LanguageSettings  # noqa: E402
from resources.ingest.engine import ingest_files  # noqa: E402
from resources.settings import IngestSettings  # noqa: E402

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "corpora" / "web-warc"
DEFAULT_REFERENCE_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "_datatrove_filter.py"
TIMING_SCRIPT = Path(__file__).resolve().parent / "_filter_timing.py"
EVAL_SET = ROOT / "data" / "eval" / "wikitext2_valid_small.txt"
# The filter before the compiled language ID and n-gram kernels (issue 15).
PREVIOUS = "f0241ab"

# Our removal keys are datatrove's drop reasons: its Gopher quality reasons as they are, the
# other filters' with the family in front ("top_2_gram" -> "gopher_top_2_gram").
KEY_PREFIX = {"gopher_repetition": "gopher_", "gopher_quality": "", "c4": "c4_", "fineweb": "fineweb_"}


def key_of(step: str, reason: str | None) -> str | None:
    """Our removal key for the reason datatrove's filter `step` gave."""
    return None if reason is None else KEY_PREFIX[step] + reason


@dataclass
class Side:
    """One system's decisions: per step, keep flags and reasons (ours: removal key and detail),
    and the best seconds."""

    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    keep: dict[str, list[bool]] = field(default_factory=dict)
    reason: dict[str, list[str | None]] = field(default_factory=dict)
    c4_text: list[str | None] = field(default_factory=list)
    chain_failed: list[str | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_timing(cls, name: str, result: dict[str, Any]) -> Side:
        """A side from bench/_filter_timing.py's result."""
        extra = {key: result[key] for key in ("language", "score", "words", "stage")}
        return cls(
            name, result["seconds"], result["keep"], result["reason"], result["c4_text"], result["chain_failed"], extra
        )


def extract(files: list[str], workers: int) -> pl.DataFrame:
    """Documents as our ingest makes them (Resiliparse), kept in memory for every side."""
    frames: list[pl.DataFrame] = []

    def keep_shard(index: int, frame: pl.DataFrame) -> ShardInfo:
        frames.append(frame)
        return ShardInfo(path=f"in-memory-{index}", rows=frame.height, bytes=0, sha256="")

    settings = IngestSettings(extractor="resiliparse", workers=workers)
    result = ingest_files(files, crawl_batch="bench", settings=settings, write_shard=keep_shard)
    print(f"extracted {result.documents} documents in {result.seconds:.1f} s", file=sys.stderr)
    return pl.concat(frames)


def run_ours(frame: pl.DataFrame, language: LanguageSettings, repeats: int) -> Side:
    result = time_steps(frame, language.languages, language.min_score, str(EVAL_SET), repeats)
    return Side.of_timing("ours", json.loads(json.dumps(result)))  # the same shapes as a previous run's


def run_previous(ref: str, documents: Path, language: LanguageSettings, repeats: int) -> Side:
    """bench/_filter_timing.py run on `git archive <ref>` of this repository."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=False)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {ref} failed: {archive.stderr.decode().strip()}")
    tree = documents.parent / f"previous-{ref}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    out = documents.with_name("previous.json")
    command = [sys.executable, str(TIMING_SCRIPT), str(documents), "--out", str(out), "--repeats", str(repeats)]
    command += ["--languages", *language.languages, "--min-score", str(language.min_score), "--eval-set", str(EVAL_SET)]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(tree)}
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"the previous implementation ({ref}) failed (exit {done.returncode}):\n{tail}")
    return Side.of_timing(f"previous {ref}", json.loads(out.read_text(encoding="utf-8")))


def run_reference(python: Path, documents: Path, language: LanguageSettings, model: Path, repeats: int) -> Side:
    out = documents.with_name("datatrove-decisions.json")
    command = [str(python), str(REFERENCE_SCRIPT), str(documents), "--out", str(out), "--lid-model", str(model)]
    command += ["--languages", *language.languages, "--min-score", str(language.min_score), "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"datatrove run failed (exit {done.returncode}):\n{tail}")
    report = json.loads(out.read_text(encoding="utf-8"))
    side = Side("datatrove")
    for name, rule in report["rules"].items():
        side.seconds[name], side.keep[name], side.reason[name] = rule["seconds"], rule["keep"], rule["reason"]
    side.c4_text = report["rules"]["c4"]["text"]
    side.seconds["chain"] = report["chain"]["seconds"]
    side.chain_failed = [failed for failed, _ in report["chain"]["failed"]]
    side.extra.update(
        language=report["rules"]["language"]["language"],
        score=report["rules"]["language"]["score"],
        words=report["words"],
        versions=report["versions"],
    )
    return side


@dataclass
class Agreement:
    both_keep: int = 0
    both_drop: int = 0
    only_ours_drops: int = 0
    only_datatrove_drops: int = 0
    disagreeing: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.both_keep + self.both_drop + self.only_ours_drops + self.only_datatrove_drops

    @property
    def rate(self) -> float:
        return (self.both_keep + self.both_drop) / self.total if self.total else float("nan")


def agreement(ours: list[bool], theirs: list[bool]) -> Agreement:
    result = Agreement()
    for i, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        if mine and reference:
            result.both_keep += 1
        elif not mine and not reference:
            result.both_drop += 1
        else:
            result.disagreeing.append(i)
            if mine:
                result.only_datatrove_drops += 1
            else:
                result.only_ours_drops += 1
    return result


def _same_check(step: str, ours: list[str | None], theirs: list[str | None], dropped_by_both: list[int]) -> str:
    if not dropped_by_both:
        return "-"
    same = sum((ours[i] or "").split()[0] == key_of(step, theirs[i]) for i in dropped_by_both)
    return f"{same / len(dropped_by_both):.1%}"


def _same_as_previous(name: str, ours: Side, previous: Side) -> tuple[int, int]:
    """(documents with identical outcomes, documents): keep flag and reason (removal key and
    detail) per step; failing rule in the chain; rule, detail, language, score and kept text in
    the stage."""
    if name == "stage":
        mine, theirs = ours.extra["stage"], previous.extra["stage"]
    elif name == "chain":
        mine, theirs = ours.chain_failed, previous.chain_failed
    else:
        mine = list(zip(ours.keep[name], ours.reason[name], strict=True))
        theirs = list(zip(previous.keep[name], previous.reason[name], strict=True))
    if len(mine) != len(theirs):
        return 0, max(len(mine), len(theirs))
    return sum(a == b for a, b in zip(mine, theirs, strict=True)), len(mine)


def table(ours: Side, previous: Side | None, reference: Side | None, n_docs: int) -> tuple[str, dict[str, Any]]:
    header = (
        f"{'rule':<18} {'ours docs/s':>11} {'previous':>9} {'vs prev':>7} {'same as prev':>12}"
        f" {'datatrove':>10} {'speed-up':>8} {'agree':>7}"
        f" {'keep/keep':>9} {'drop/drop':>9} {'only ours drops':>15} {'only dt drops':>13} {'same check':>10}"
    )
    lines, numbers = [header, "-" * len(header)], {}
    for name in (*STEPS, "chain", "stage"):
        mine = n_docs / ours.seconds[name]
        row = f"{name:<18} {mine:>11.1f}"
        numbers[name] = {"ours_docs_per_second": mine}
        if previous is None:
            row += f" {'-':>9} {'-':>7} {'-':>12}"
        else:
            before = n_docs / previous.seconds[name]
            same, total = _same_as_previous(name, ours, previous)
            row += f" {before:>9.1f} {mine / before:>6.2f}x {f'{same}/{total}':>12}"
            numbers[name].update(
                previous_docs_per_second=before, speed_up_vs_previous=mine / before, same_as_previous=[same, total]
            )
        if reference is None or name == "stage":  # datatrove has no decontamination step
            lines.append(row)
            continue
        theirs = n_docs / reference.seconds[name]
        if name == "chain":
            agree = agreement([f is None for f in ours.chain_failed], [f is None for f in reference.chain_failed])
            both = [
                i for i, (a, b) in enumerate(zip(ours.chain_failed, reference.chain_failed, strict=True)) if a and b
            ]
            same_check = f"{sum(ours.chain_failed[i] == reference.chain_failed[i] for i in both) / len(both):.1%}"
        else:
            agree = agreement(ours.keep[name], reference.keep[name])
            both = [
                i for i, (a, b) in enumerate(zip(ours.keep[name], reference.keep[name], strict=True)) if not (a or b)
            ]
            same_check = (
                "-" if name == "language" else _same_check(name, ours.reason[name], reference.reason[name], both)
            )
        lines.append(
            f"{row} {theirs:>10.1f} {mine / theirs:>7.1f}x {agree.rate:>7.1%}"
            f" {agree.both_keep:>9} {agree.both_drop:>9} {agree.only_ours_drops:>15} {agree.only_datatrove_drops:>13}"
            f" {same_check:>10}"
        )
        numbers[name].update(
            datatrove_docs_per_second=theirs,
            speed_up=mine / theirs,
            agreement=agree.rate,
            both_keep=agree.both_keep,
            both_drop=agree.both_drop,
            only_ours_drops=agree.only_ours_drops,
            only_datatrove_drops=agree.only_datatrove_drops,
            same_check_when_both_drop=same_check,
        )
    return "\n".join(lines), numbers


def details(ours: Side, reference: Side, frame: pl.DataFrame, examples: int) -> tuple[str, dict[str, Any]]:
    """The finer comparisons: labels and scores, C4's output text, word counts, examples."""
    lines: list[str] = []
    same_label = sum(a == b for a, b in zip(ours.extra["language"], reference.extra["language"], strict=True))
    score_gap = max(abs(a - b) for a, b in zip(ours.extra["score"], reference.extra["score"], strict=True))
    lines.append(f"language: same top label {same_label}/{frame.height}, largest score difference {score_gap:.2g}")
    kept_by_both = [i for i, (a, b) in enumerate(zip(ours.c4_text, reference.c4_text, strict=True)) if a and b]
    same_text = sum(ours.c4_text[i] == reference.c4_text[i] for i in kept_by_both)
    lines.append(f"c4: identical text after line filtering in {same_text}/{len(kept_by_both)} documents both keep")
    gaps = [abs(a - b) / max(b, 1) for a, b in zip(ours.extra["words"], reference.extra["words"], strict=True)]
    exact = sum(a == b for a, b in zip(ours.extra["words"], reference.extra["words"], strict=True))
    median, p95 = statistics.median(gaps), statistics.quantiles(gaps, n=20)[-1]
    lines.append(
        f"words vs spaCy: same count in {exact}/{len(gaps)} documents; relative difference median "
        f"{median:.2%}, 95th percentile {p95:.2%}, max {max(gaps):.2%}"
    )
    urls, disagreements = frame["url"].to_list(), {}
    for name in STEPS:
        rows = agreement(ours.keep[name], reference.keep[name]).disagreeing
        disagreements[name] = [
            {"url": urls[i], "ours": ours.reason[name][i], "datatrove": reference.reason[name][i]} for i in rows
        ]
        for row in disagreements[name][:examples]:
            lines.append(
                f"  {name}: ours {row['ours'] or 'keep'} | datatrove {row['datatrove'] or 'keep'} | {row['url']}"
            )
    numbers = {
        "same_language_label": same_label,
        "max_language_score_difference": score_gap,
        "c4_same_text": [same_text, len(kept_by_both)],
        "word_count_exact": exact,
        "word_count_relative_difference": {"median": median, "p95": p95, "max": max(gaps)},
        "disagreements": disagreements,
    }
    return "\n".join(lines), numbers


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="directory of *.warc.gz")
    parser.add_argument("--reference-python", type=Path, default=DEFAULT_REFERENCE_PYTHON)
    parser.add_argument("--previous", default=PREVIOUS, help="git ref of the implementation to compare; 'none' skips")
    parser.add_argument("--languages", nargs="+", default=LanguageSettings().languages)
    parser.add_argument("--min-score", type=float, default=LanguageSettings().min_score)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per step and side; the best counts")
    parser.add_argument("--examples", type=int, default=3, help="disagreeing documents shown per rule")
    parser.add_argument("--json", type=Path, help="write every number (and every disagreement) here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    files = sorted(str(p.resolve()) for p in args.data_dir.glob("*.warc.gz"))
    if not files:
        sys.exit(f"no WARC files in {args.data_dir}")
    frame = extract(files, len(os.sched_getaffinity(0)))
    texts = frame["text"].to_list()
    language = LanguageSettings(languages=args.languages, min_score=args.min_score)
    ours = run_ours(frame, language, args.repeats)
    previous = reference = None
    with tempfile.TemporaryDirectory(prefix="filter-bench-") as scratch:
        if args.previous != "none":
            frame.write_parquet(Path(scratch) / "documents.parquet")
            previous = run_previous(args.previous, Path(scratch) / "documents.parquet", language, args.repeats)
        if args.reference_python.is_file():
            documents = Path(scratch) / "documents.jsonl"
            with documents.open("w", encoding="utf-8") as out:
                for doc_id, text in zip(frame["doc_id"], texts, strict=True):
                    out.write(json.dumps({"id": doc_id, "text": text}) + "\n")
            model = LanguageIdentifier(language).model_path
            reference = run_reference(args.reference_python, documents, language, model, args.repeats)
        else:
            print(f"reference python {args.reference_python} not found: no datatrove side", file=sys.stderr)
    print(
        f"{frame.height} documents from {len(files)} WARC files; one process per side, CPU time,"
        f" best of {args.repeats}; languages {' '.join(language.languages)} at score >= {language.min_score};"
        f" stage = chain + decontamination against {EVAL_SET.name}; previous = {args.previous}"
    )
    text, numbers = table(ours, previous, reference, frame.height)
    print(text)
    report: dict[str, Any] = {"documents": frame.height, "files": files, "previous": args.previous, "steps": numbers}
    if reference is not None:
        text, report["details"] = details(ours, reference, frame, args.examples)
        print(text)
        report["datatrove_versions"] = reference.extra["versions"]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
