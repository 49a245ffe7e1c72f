"""The evaluation asset's checks, computed from plain result rows: every metric finite, every eval
set better than the unigram baseline, and no eval set worse than under the previous checkpoint
beyond a tolerance (a warning: a new mixture may trade one set for another)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from resources.evaluate.history import previous_evaluation

EVALUATION_CHECKS = ("metrics_finite", "beats_unigram_baseline", "no_regression_vs_previous")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    metadata: dict[str, object] = field(default_factory=dict)
    warn_only: bool = False  # a failure warns instead of failing the check


def is_finite_result(rows: Iterable[dict[str, Any]]) -> bool:
    return all(
        isinstance(row[k], int | float) and math.isfinite(row[k])
        for row in rows
        for k in ("loss", "perplexity", "bits_per_byte")
    )


def regressions(
    current: dict[str, float], previous: dict[str, float], tolerance: float
) -> dict[str, tuple[float, float]]:
    """Eval sets whose bits-per-byte rose by more than `tolerance` (relative) since `previous`;
    sets only one side has are not compared."""
    return {
        name: (previous[name], value)
        for name, value in current.items()
        if name in previous and value > previous[name] * (1 + tolerance)
    }


def evaluation_checks(rows: pl.DataFrame, history: pl.DataFrame, tolerance: float) -> list[Check]:
    """`rows`: this evaluation's results; `history`: every other evaluation's."""
    records = rows.to_dicts()
    worse = [r["eval_set"] for r in records if not r["bits_per_byte"] < r["unigram_bits_per_byte"]]
    previous = previous_evaluation(history, rows.row(0, named=True))
    current = dict(zip(rows.get_column("eval_set"), rows.get_column("bits_per_byte"), strict=True))
    regressed = regressions(current, previous[1], tolerance) if previous else {}
    return [
        Check("metrics_finite", is_finite_result(records)),
        Check(
            "beats_unigram_baseline",
            not worse,
            {
                "not_better": ", ".join(worse) or "none",
                **{f"margin/{r['eval_set']}": r["unigram_bits_per_byte"] - r["bits_per_byte"] for r in records},
            },
        ),
        Check(
            "no_regression_vs_previous",
            not regressed,
            {
                "previous_checkpoint": previous[0] if previous else "none",
                "tolerance": tolerance,
                **{f"bits_per_byte/{name}": f"{old:.4f} -> {new:.4f}" for name, (old, new) in regressed.items()},
            },
            warn_only=True,
        ),
    ]
