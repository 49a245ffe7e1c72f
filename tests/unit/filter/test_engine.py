"""The filtering stage on one shard: each removed document carries its `<filter>_<rule>` key and
the measured value, and the first failing step is the one recorded."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from resources.filter.decontamination import DecontaminationSettings
from resources.filter.engine import DocumentFilter, FilterSettings
from resources.filter.language_id import LanguageSettings
from tests.unit.filter.test_heuristics import GERMAN, PROSE


def test_removed_rows_carry_stable_keys_and_measured_values(tmp_path: Path) -> None:
    quoted = "The committee met on a cold Tuesday morning to decide the fate of the old harbour bridge."
    (tmp_path / "eval.txt").write_text(quoted)
    settings = FilterSettings(language=LanguageSettings(languages=["en", "de"], min_score_by_language={"de": 1.0}))
    engine = DocumentFilter.build(settings, DecontaminationSettings(eval_sets={"quiz": str(tmp_path / "eval.txt")}))
    texts = {
        "kept": PROSE,
        "german": GERMAN,
        "japanese": "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
        "short": "\n".join(PROSE.splitlines()[:2]),
        "quoted": PROSE + "\n" + quoted,
    }
    frame = pl.DataFrame({"doc_id": list(texts), "url": list(texts), "crawl_batch": "b", "text": list(texts.values())})
    kept, removed = engine.process(frame)
    assert kept.get_column("doc_id").to_list() == ["kept"]
    reasons = {row["doc_id"]: (row["stage"], row["rule"], row["detail"]) for row in removed.iter_rows(named=True)}
    assert reasons["german"][:2] == ("filter", "language_low_score") and reasons["german"][2].startswith("de:")
    assert reasons["japanese"][:2] == ("filter", "language_not_kept") and reasons["japanese"][2].startswith("ja:")
    assert reasons["short"] == ("filter", "gopher_short_doc", "words=36<50")
    assert reasons["quoted"] == ("filter", "decontamination_ngram_overlap", "quiz:5")
