"""Our side of bench/filter.py, timed step by step: imported by bench/filter.py for this checkout,
and run as a script for an earlier checkout of the repository (with that checkout's root first on
PYTHONPATH), so the previous implementation is timed by the very same code on the same documents.
It uses only `resources.filter` APIs both versions have.

Steps: lid.176 alone (one batched call); each heuristic rule alone over all documents (each
tokenizes for itself, as datatrove's do); the chain in FineWeb's order (language -> Gopher
repetition -> Gopher quality -> C4 -> FineWeb) through `HeuristicFilter`, where rules share one
tokenization per document; and the whole stage, `DocumentFilter.process` on the shard (the chain
plus decontamination against --eval-set, and building the kept and removed tables). Model loading
is not timed; the best of --repeats passes counts, in CPU seconds of this process (on a machine
shared with other jobs, wall time measures the neighbours too).

    PYTHONPATH=<old checkout> python bench/_filter_timing.py documents.parquet --out result.json ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

STEPS = ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb")


def _best_of(repeats: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.process_time()
        out = run()
        best = min(best, time.process_time() - started)
    return best, out


def time_steps(
    frame: pl.DataFrame, languages: list[str], min_score: float, eval_set: str, repeats: int
) -> dict[str, Any]:
    """Seconds per step, and every decision: per step keep flags and reasons, C4's output text,
    the chain's failing rule per document, and the stage's rule, detail and kept-text digest."""
    from resources.filter.decontamination import DecontaminationSettings
    from resources.filter.engine import DocumentFilter, FilterSettings
    from resources.filter.heuristics import RULES, HeuristicFilter, HeuristicSettings
    from resources.filter.language_id import LanguageIdentifier, LanguageSettings
    from resources.filter.text_units import DocView, split_words

    texts = frame.get_column("text").to_list()
    language = LanguageSettings(languages=languages, min_score=min_score)
    identifier = LanguageIdentifier(language)
    heuristics = HeuristicSettings()
    out: dict[str, Any] = {"seconds": {}, "keep": {}, "reason": {}}

    def language_pass() -> tuple[list[str], list[float], list[str | None]]:
        labels, scores = identifier.predict(texts)
        return labels, scores, [identifier.rejection(lab, s) for lab, s in zip(labels, scores, strict=True)]

    identifier.predict(texts[:2])  # a compiled kernel compiles or loads on its first call
    seconds, (labels, scores, keys) = _best_of(repeats, language_pass)
    out["seconds"]["language"], out["keep"]["language"] = seconds, [key is None for key in keys]
    out["reason"]["language"] = [
        key and f"{key} {lab}:{s:.3f}" for key, lab, s in zip(keys, labels, scores, strict=True)
    ]
    out.update(language=labels, score=scores)

    for name in STEPS[1:]:
        rule = RULES[name](heuristics)
        rule(DocView(texts[0]))

        def rule_pass(rule: Callable[[Any], Any] = rule) -> tuple[list[Any], list[str]]:
            docs = [DocView(text) for text in texts]
            return [rule(doc) for doc in docs], [doc.text for doc in docs]

        seconds, (failures, after) = _best_of(repeats, rule_pass)
        out["seconds"][name] = seconds
        out["keep"][name] = [f is None for f in failures]
        out["reason"][name] = [f and f"{f.key} {f.detail}" for f in failures]
        if name == "c4":
            out["c4_text"] = [text if f is None else None for f, text in zip(failures, after, strict=True)]

    chain = HeuristicFilter(heuristics)

    def chain_pass() -> list[str | None]:
        labels, scores = identifier.predict(texts)
        failed: list[str | None] = []
        for text, lab, score in zip(texts, labels, scores, strict=True):
            if not identifier.keep(lab, score):
                failed.append("language")
                continue
            failure = chain.apply(text)[1]
            failed.append(failure and failure.rule)
        return failed

    out["seconds"]["chain"], out["chain_failed"] = _best_of(repeats, chain_pass)

    stage = DocumentFilter.build(
        FilterSettings(language=language), DecontaminationSettings(eval_sets={"eval": eval_set})
    )
    out["seconds"]["stage"], (kept, removed) = _best_of(repeats, lambda: stage.process(frame))
    digest = lambda text: hashlib.sha1(text.encode()).hexdigest()  # noqa: E731
    out["stage"] = sorted(
        [
            (d, None, None, digest(t), lang, s)
            for d, t, lang, s in kept.select("doc_id", "text", "language", "language_score").iter_rows()
        ]
        + [
            (d, rule, detail, None, None, None)
            for d, rule, detail in removed.select("doc_id", "rule", "detail").iter_rows()
        ]
    )
    out["words"] = [len(split_words(text)) for text in texts]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("documents", type=Path, help="Parquet of ingested documents")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--languages", nargs="+", required=True)
    parser.add_argument("--min-score", type=float, required=True)
    parser.add_argument("--eval-set", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    result = time_steps(pl.read_parquet(args.documents), args.languages, args.min_score, args.eval_set, args.repeats)
    args.out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
