"""The evaluation history without Dagster: merging an evaluation into it (a re-evaluation replaces
its rows and keeps its first date and run), the checks against the previous checkpoint, and the
comparison table."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from resources.common.storage import ShardStore
from resources.common.versioning import OutputVersion
from resources.evaluate.errors import EvaluationError
from resources.evaluate.history import (
    EVALUATION,
    RESULTS,
    SAMPLES,
    TASKS,
    comparison_table,
    evaluation_checks,
    read_history,
    with_history,
    write_history,
)


def result(
    evaluation_id: str, checkpoint: str, bits_per_byte: float, eval_set: str = "held_out", **row: object
) -> dict:
    return {
        "evaluation_id": evaluation_id,
        "eval_code_version": "1-a",
        "checkpoint": checkpoint,
        "generation": checkpoint.split("/")[0],
        "step": 6,
        "checkpoint_data_version": f"dv-{checkpoint}",
        "mixture_data_version": "mix",
        "mixture": "crawl 1.00×1",
        "tokens_seen": 100,
        "eval_set": eval_set,
        "bits_per_byte": bits_per_byte,
        "unigram_bits_per_byte": 2.0,
        "loss": 1.0,
        "perplexity": 2.7,
        **row,
    }


def evaluation(evaluation_id: str, checkpoint: str, bits_per_byte: float, task_acc: float) -> dict[str, list[dict]]:
    which = {"evaluation_id": evaluation_id, "checkpoint": checkpoint}
    return {
        RESULTS: [result(evaluation_id, checkpoint, bits_per_byte, s) for s in ("held_out", "wiki")],
        SAMPLES: [{**which, "prompt": "p", "text": "t", "finish_reason": "stop", "output_tokens": 1}],
        TASKS: [{**which, "task": "facts", "acc": task_acc}],
    }


def commit(store: ShardStore, new: dict[str, list[dict]], run_id: str) -> dict[str, pl.DataFrame]:
    tables = with_history(store, new, run_id)
    store.commit(OutputVersion("1").manifest(EVALUATION, None, run_id, write_history(store, tables)))
    return tables


def test_reevaluation_replaces_its_rows_and_keeps_its_first_date_and_run(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    first = commit(store, evaluation("e1", "g1/step-6", 1.0, 0.5), "run-1")
    commit(store, evaluation("e2", "g2/step-6", 0.9, 0.6), "run-2")
    again = commit(store, evaluation("e1", "g1/step-6", 1.0, 0.5), "run-3")

    results = read_history(store, RESULTS)
    assert results.height == 4 and results.get_column("evaluation_id").to_list() == ["e1", "e1", "e2", "e2"]
    assert set(results.filter(pl.col("evaluation_id") == "e1").get_column("run_id")) == {"run-1"}
    assert again[RESULTS].filter(pl.col("evaluation_id") == "e1").equals(first[RESULTS])
    assert read_history(store, SAMPLES).height == 2 and read_history(store, TASKS).height == 2


def test_checks_compare_with_the_last_other_checkpoint_under_the_same_settings() -> None:
    history = pl.DataFrame(
        [
            result("e1", "g1/step-6", 1.0, evaluated_at=1),
            result("e2", "g2/step-6", 0.5, evaluated_at=2, eval_code_version="other settings"),
            result("e3", "g3/step-6", 1.1, evaluated_at=3, checkpoint_data_version="dv-g4/step-6"),
        ]
    )
    rows = pl.DataFrame([result("e4", "g4/step-6", 1.05), result("e4", "g4/step-6", 2.5, eval_set="hard")])
    finite, unigram, regression = evaluation_checks(rows, history, tolerance=0.02)

    assert finite.passed and not unigram.passed and unigram.metadata["not_better"] == "hard"
    assert not regression.passed and regression.warn_only
    assert regression.metadata == {
        "previous_checkpoint": "g1/step-6",  # e2 used other settings, e3 scored this same checkpoint
        "tolerance": 0.02,
        "bits_per_byte/held_out": "1.0000 -> 1.0500",
    }
    assert evaluation_checks(rows, history, tolerance=0.1)[2].passed
    assert evaluation_checks(rows, history.clear(), 0.0)[2].metadata["previous_checkpoint"] == "none"


def test_comparison_has_one_row_per_checkpoint(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    with pytest.raises(EvaluationError, match="holds no results"):
        comparison_table(store)
    commit(store, evaluation("e1", "g1/step-6", 1.0, 0.5), "run-1")
    commit(store, evaluation("e2", "g2/step-6", 0.9, 0.75), "run-2")

    table = comparison_table(store)
    assert table.get_column("checkpoint").to_list() == ["g1/step-6", "g2/step-6"]
    assert table.get_column("bpb_wiki").to_list() == [1.0, 0.9] and table.get_column("acc_facts").to_list() == [
        0.5,
        0.75,
    ]
