"""The filtering stage per shard: language ID, then the heuristic rules, then decontamination;
the first rule a document fails is the one recorded as the reason it was removed."""

from __future__ import annotations

import polars as pl

from resources.common.schemas import removed_rows
from resources.filter.decontamination import Decontaminator
from resources.filter.heuristics import HeuristicFilter
from resources.filter.language_id import LanguageIdentifier

STAGE = "filter"


class DocumentFilter:
    def __init__(
        self, language: LanguageIdentifier, heuristics: HeuristicFilter, decontaminator: Decontaminator | None
    ) -> None:
        self.language = language
        self.heuristics = heuristics
        self.decontaminator = decontaminator

    def process(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        texts = frame.get_column("text").to_list()
        languages, scores = self.language.predict(texts)
        rules: list[str | None] = []
        details: list[str | None] = []
        out_texts: list[str] = []
        for text, language, score in zip(texts, languages, scores, strict=True):
            rule, detail = self.language.rejection(language, score), None
            if rule is not None:
                detail = f"{language}:{score:.3f}"
            else:
                text, failure = self.heuristics.apply(text)
                if failure is not None:
                    rule, detail = failure.key, failure.detail
                elif self.decontaminator is not None:
                    hit = self.decontaminator.check(text)
                    if hit is not None:
                        rule, detail = "decontamination", f"{hit[0]}:{hit[1]}"
            rules.append(rule)
            details.append(detail)
            out_texts.append(text)
        judged = frame.with_columns(
            text=pl.Series(out_texts, dtype=pl.String),
            language=pl.Series(languages, dtype=pl.String),
            language_score=pl.Series(scores, dtype=pl.Float32),
            _rule=pl.Series(rules, dtype=pl.String),
            _detail=pl.Series(details, dtype=pl.String),
        )
        kept = judged.filter(pl.col("_rule").is_null()).drop("_rule", "_detail")
        dropped = judged.filter(pl.col("_rule").is_not_null())
        return kept, removed_rows(dropped, STAGE, pl.col("_rule"), pl.col("_detail"))
