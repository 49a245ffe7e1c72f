"""Invariants every document shard must hold, accumulated one shard at a time as shards are written."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from resources.common.checks import CheckOutcome
from resources.common.schemas import PROVENANCE_COLUMNS


@dataclass
class DocumentChecks:
    """unique doc_id, no empty text, provenance complete: the contract later stages rely on."""

    rows: int = 0
    duplicates: int = 0
    empty: int = 0
    incomplete: int = 0
    seen: set[str] = field(default_factory=set)
    missing_by_column: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROVENANCE_COLUMNS, 0))

    def add(self, frame: pl.DataFrame) -> None:
        self.rows += frame.height
        ids = frame.get_column("doc_id").to_list()
        self.duplicates += len(ids) - len(set(ids)) + len(self.seen.intersection(ids))
        self.seen.update(ids)
        self.empty += frame.filter(pl.col("text").is_null() | (pl.col("text").str.strip_chars() == "")).height
        missing = [(pl.col(c).is_null() | (pl.col(c).cast(pl.String) == "")).alias(c) for c in PROVENANCE_COLUMNS]
        nulls = frame.select(expr.sum() for expr in missing).row(0, named=True)
        for column, count in nulls.items():
            self.missing_by_column[column] += count
        self.incomplete += frame.filter(pl.any_horizontal(missing)).height

    def outcomes(self) -> list[CheckOutcome]:
        rows = self.rows
        return [
            CheckOutcome("unique_doc_id", self.duplicates == 0, {"rows": rows, "duplicate_doc_ids": self.duplicates}),
            CheckOutcome("no_empty_text", self.empty == 0, {"rows": rows, "empty_texts": self.empty}),
            CheckOutcome(
                "provenance_complete",
                self.incomplete == 0,
                {
                    "rows": rows,
                    "incomplete_rows": self.incomplete,
                    **{f"missing_{k}": v for k, v in self.missing_by_column.items()},
                },
            ),
        ]
