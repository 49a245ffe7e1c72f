"""The evaluation history: every evaluated checkpoint's results, samples and downstream-task scores,
kept in the evaluation asset's one partition, so each new checkpoint is judged against the ones
before it (the checks) and the comparison table shows whether new data helped."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import polars as pl

from resources.common.checks import CheckOutcome
from resources.common.storage import ShardInfo, ShardStore
from resources.evaluate.errors import EvaluationError

EVALUATION = "evaluation"
REFERENCE_EVALUATION = "reference_evaluation"
REFERENCE_RESULTS = "results"
RESULTS, SAMPLES, TASKS = "results", "samples", "tasks"
EVALUATION_CHECKS = ("metrics_finite", "beats_unigram_baseline", "no_regression_vs_previous")

_SCHEMAS = {
    SAMPLES: {
        "evaluation_id": pl.String,
        "checkpoint": pl.String,
        "prompt": pl.String,
        "text": pl.String,
        "finish_reason": pl.String,
        "output_tokens": pl.Int64,
    },
    TASKS: {"evaluation_id": pl.String, "checkpoint": pl.String, "task": pl.String},
}


def read_history(store: ShardStore, table: str) -> pl.DataFrame:
    """Every evaluation so far (one row per checkpoint and eval set), or the samples."""
    manifest = store.read_manifest(EVALUATION, None)
    if manifest is None or not store.shard_paths(manifest, table):
        return pl.DataFrame()
    return pl.concat(store.iter_frames(manifest, table=table), how="diagonal_relaxed")


def with_history(store: ShardStore, new: dict[str, list[dict]], run_id: str) -> dict[str, pl.DataFrame]:
    """Each table (results, samples, tasks) with this evaluation's rows in place of any earlier
    ones of the same evaluation_id. Re-evaluating a checkpoint with the same settings keeps its
    first date and run, so equal numbers give equal bytes and the data version stays."""
    evaluation_id = new[RESULTS][0]["evaluation_id"]
    tables = {}
    for table, rows in new.items():
        history = read_history(store, table)
        same = history.filter(pl.col("evaluation_id") == evaluation_id) if history.height else history
        others = history.filter(pl.col("evaluation_id") != evaluation_id) if history.height else history
        if table == RESULTS:
            first = same.row(0, named=True) if same.height else {"evaluated_at": datetime.now(UTC), "run_id": run_id}
            rows = [{"evaluated_at": first["evaluated_at"], "run_id": first["run_id"], **row} for row in rows]
        schema = _SCHEMAS.get(table)
        frame = pl.DataFrame(rows, schema_overrides=schema) if rows else pl.DataFrame(schema=schema)
        tables[table] = pl.concat([others, frame], how="diagonal_relaxed")
    tables[RESULTS] = tables[RESULTS].sort("evaluated_at", "evaluation_id", "eval_set")
    return tables


def write_history(store: ShardStore, tables: dict[str, pl.DataFrame]) -> list[ShardInfo]:
    return [store.write_parquet_shard(EVALUATION, None, 0, frame, table) for table, frame in tables.items()]


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


def previous_evaluation(history: pl.DataFrame, current: dict) -> tuple[str, dict[str, float]] | None:
    """The last evaluation before this one, of another checkpoint, under the same evaluation
    settings (other settings score other sets): its checkpoint and bits-per-byte per eval set."""
    if not history.height:
        return None
    earlier = history.filter(
        (pl.col("eval_code_version") == current["eval_code_version"])
        & (pl.col("checkpoint_data_version") != current["checkpoint_data_version"])
    )
    if not earlier.height:
        return None
    last = earlier.sort("evaluated_at").get_column("evaluation_id")[-1]
    chosen = earlier.filter(pl.col("evaluation_id") == last)
    values = dict(zip(chosen.get_column("eval_set"), chosen.get_column("bits_per_byte"), strict=True))
    return chosen.get_column("checkpoint")[0], values


def evaluation_checks(rows: pl.DataFrame, history: pl.DataFrame, tolerance: float) -> list[CheckOutcome]:
    """EVALUATION_CHECKS for `rows` (this evaluation's results) against `history` (every other
    evaluation's): metrics finite, every eval set better than the unigram baseline, and none worse
    than under the previous checkpoint beyond `tolerance` (a warning: a new mixture may trade one
    set for another)."""
    records = rows.to_dicts()
    worse = [r["eval_set"] for r in records if not r["bits_per_byte"] < r["unigram_bits_per_byte"]]
    previous = previous_evaluation(history, rows.row(0, named=True))
    current = dict(zip(rows.get_column("eval_set"), rows.get_column("bits_per_byte"), strict=True))
    regressed = regressions(current, previous[1], tolerance) if previous else {}
    return [
        CheckOutcome("metrics_finite", is_finite_result(records)),
        CheckOutcome(
            "beats_unigram_baseline",
            not worse,
            {
                "not_better": ", ".join(worse) or "none",
                **{f"margin/{r['eval_set']}": r["unigram_bits_per_byte"] - r["bits_per_byte"] for r in records},
            },
        ),
        CheckOutcome(
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


def comparison_table(store: ShardStore, reference: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per evaluated checkpoint, oldest first: bits-per-byte per eval set and accuracy
    per downstream task as columns; then, if given, the reference model's row (its `reference`
    results, see resources.evaluate.reference): kind `reference`, its name as the generation and
    its content hash as the data version."""
    results = read_history(store, RESULTS)
    if not results.height:
        raise EvaluationError(f"{EVALUATION} holds no results: materialize it first")
    tasks = read_history(store, TASKS)
    keys = ["evaluation_id", "evaluated_at", "generation", "step", "tokens_seen", "mixture", "checkpoint_data_version"]
    keys += ["mixture_data_version", "checkpoint"]
    wide = results.pivot(on="eval_set", index=keys, values="bits_per_byte", aggregate_function="first")
    wide = wide.rename({c: f"bpb_{c}" for c in wide.columns if c not in keys})
    if tasks.height:
        accuracy = tasks.pivot(on="task", index="evaluation_id", values="acc", aggregate_function="first")
        wide = wide.join(accuracy.rename({c: f"acc_{c}" for c in accuracy.columns if c != "evaluation_id"}),
                         on="evaluation_id", how="left")  # fmt: skip
    table = wide.sort("evaluated_at", "evaluation_id").with_columns(pl.lit("checkpoint").alias("kind"))
    if reference is None or not reference.height:
        return table
    row = reference.pivot(
        on="eval_set", index=["evaluation_id", "model", "model_version"], values="bits_per_byte"
    ).rename({"model": "checkpoint", "model_version": "checkpoint_data_version"})
    row = row.rename({c: f"bpb_{c}" for c in row.columns if c not in keys}).with_columns(
        pl.col("checkpoint").alias("generation"),
        pl.lit(reference.get_column("evaluated_at").max()).alias("evaluated_at"),
        pl.lit("reference").alias("kind"),
    )
    return pl.concat([table, row], how="diagonal_relaxed")


def read_reference(store: ShardStore) -> pl.DataFrame:
    """The reference rows as last written (empty if the asset was never materialized)."""
    manifest = store.read_manifest(REFERENCE_EVALUATION, None)
    if manifest is None or not store.shard_paths(manifest, REFERENCE_RESULTS):
        return pl.DataFrame()
    return pl.concat(store.iter_frames(manifest, table=REFERENCE_RESULTS), how="diagonal_relaxed")
