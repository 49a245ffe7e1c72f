"""Invariants every document shard must hold, computed one shard at a time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from resources.ingest import PROVENANCE_COLUMNS


@dataclass
class CheckOutcome:
    passed: bool
    metadata: dict[str, object] = field(default_factory=dict)


def check_documents(frames: Iterable[pl.DataFrame]) -> dict[str, CheckOutcome]:
    """unique doc_id, no empty text, provenance complete: the contract later stages rely on."""
    seen: set[str] = set()
    duplicates = empty = incomplete = rows = 0
    missing_by_column: dict[str, int] = dict.fromkeys(PROVENANCE_COLUMNS, 0)
    for frame in frames:
        rows += frame.height
        ids = frame.get_column("doc_id").to_list()
        duplicates += len(ids) - len(set(ids)) + len(seen.intersection(ids))
        seen.update(ids)
        empty += frame.filter(pl.col("text").is_null() | (pl.col("text").str.strip_chars() == "")).height
        missing = [(pl.col(c).is_null() | (pl.col(c).cast(pl.String) == "")).alias(c) for c in PROVENANCE_COLUMNS]
        nulls = frame.select(expr.sum() for expr in missing).row(0, named=True)
        for column, count in nulls.items():
            missing_by_column[column] += count
        incomplete += frame.filter(pl.any_horizontal(missing)).height
    return {
        "unique_doc_id": CheckOutcome(duplicates == 0, {"rows": rows, "duplicate_doc_ids": duplicates}),
        "no_empty_text": CheckOutcome(empty == 0, {"rows": rows, "empty_texts": empty}),
        "provenance_complete": CheckOutcome(
            incomplete == 0,
            {"rows": rows, "incomplete_rows": incomplete, **{f"missing_{k}": v for k, v in missing_by_column.items()}},
        ),
    }
