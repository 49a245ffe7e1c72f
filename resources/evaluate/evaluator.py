"""One evaluation of the latest checkpoint, start to end: every eval set scored beside the unigram
baseline, samples, downstream tasks, merged into the history, written and judged by the checks; the
evaluation asset commits what `evaluate` wrote."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from resources.common.checks import CheckOutcome
from resources.common.storage import ShardInfo, ShardStore, stable_hash
from resources.evaluate.errors import EvaluationError
from resources.evaluate.history import RESULTS, SAMPLES, TASKS, evaluation_checks, with_history, write_history
from resources.evaluate.lm_eval_tasks import run_lm_eval
from resources.evaluate.report import markdown_table
from resources.evaluate.scoring import (
    HELD_OUT,
    EvalTexts,
    Sample,
    SetScore,
    generate_samples,
    held_out_texts,
    load_checkpoint,
    load_eval_set,
    pick_device,
    score_texts,
    training_token_counts,
    unigram_log2_probs,
)
from resources.evaluate.settings import EvaluationSettings
from resources.train.checkpoints import read_manifest
from resources.train.mixture import read_mixture


@dataclass(frozen=True)
class Evaluation:
    described: dict[str, Any]  # evaluation_id, checkpoint and mixture with their data versions, tokens seen
    scores: list[SetScore]
    samples: list[Sample]
    tasks: dict[str, dict[str, float]]
    evaluations: int  # in the history, this one included
    files: list[ShardInfo]
    checks: list[CheckOutcome]


def evaluate(
    store: ShardStore,
    settings: EvaluationSettings,
    *,
    code_version: str,
    run_id: str,
    checkpoint_asset: str,
    documents_asset: str,
    tokens_asset: str,
    validation_fraction: float,
    log: Callable[[str], None] = lambda message: None,
) -> Evaluation:
    """Score the latest checkpoint of `checkpoint_asset`. The held-out split is the validation
    split (`validation_fraction`) of the `documents_asset` partitions whose `tokens_asset`
    partitions are in the mixture."""
    latest = store.read_manifest(checkpoint_asset, None)
    if latest is None:
        raise EvaluationError(f"{checkpoint_asset} is not materialized: materialize it first")
    mixture, mixture_version = read_mixture(store)
    eval_sets = gather_eval_sets(store, settings, mixture, documents_asset, tokens_asset, validation_fraction, log)
    checkpoint_dir = store.local_partition(latest) / latest.stats["checkpoint"]
    model = load_checkpoint(checkpoint_dir, settings.device)
    unigram = unigram_log2_probs(training_token_counts(store, mixture, model.tokenizer.vocab_size))
    scores = [
        score_texts(
            model,
            texts,
            max_tokens=settings.max_tokens_per_set,
            batch_size=settings.batch_size,
            seq_len=settings.seq_len,
            unigram=unigram,
        )
        for texts in eval_sets
    ]
    samples = generate_samples(model, settings.generation)
    del model  # released before lm-eval loads its own copy
    tasks = run_lm_eval(checkpoint_dir, settings.lm_eval, str(pick_device(settings.device))) if settings.lm_eval else {}
    described = {
        "evaluation_id": stable_hash([latest.data_version, code_version])[:16],
        "eval_code_version": code_version,
        "checkpoint": latest.stats["checkpoint"],
        "generation": latest.stats["checkpoint"].split("/")[0],
        "step": latest.stats["step"],
        "checkpoint_data_version": latest.data_version,
        "mixture_data_version": mixture_version,
        # `source weight×partitions` per source: which data, how mixed, in one readable cell
        "mixture": ", ".join(
            f"{name} {spec.get('weight', 0):.2f}×{len(spec['partitions'])}" for name, spec in sorted(mixture.items())
        ),
        "tokens_seen": int(read_manifest(checkpoint_dir).get("total_tokens_seen", 0)),
    }
    which = {"evaluation_id": described["evaluation_id"], "checkpoint": described["checkpoint"]}
    new = {
        RESULTS: [{**described, **score.row()} for score in scores],
        SAMPLES: [{**which, **vars(sample)} for sample in samples],
        TASKS: [{**which, "task": task, **metrics} for task, metrics in tasks.items()],
    }
    tables = with_history(store, new, run_id)
    results = tables[RESULTS]
    this = pl.col("evaluation_id") == described["evaluation_id"]
    return Evaluation(
        described,
        scores,
        samples,
        tasks,
        results.get_column("evaluation_id").n_unique(),
        write_history(store, tables),
        evaluation_checks(results.filter(this), results.filter(~this), settings.regression_tolerance),
    )


def gather_eval_sets(
    store: ShardStore,
    settings: EvaluationSettings,
    mixture: dict[str, dict],
    documents_asset: str,
    tokens_asset: str,
    validation_fraction: float,
    log: Callable[[str], None] = lambda message: None,
) -> list[EvalTexts]:
    """The registered eval sets (read first: a missing file fails before any model loads) and, in
    front, the held-out split of the `documents_asset` partitions whose `tokens_asset` partitions
    are in the mixture."""
    eval_sets = [load_eval_set(name, spec) for name, spec in settings.specs().items()]
    if settings.held_out:
        crawl = [key for spec in mixture.values() if spec["asset"] == tokens_asset for key in spec["partitions"]]
        held_out = held_out_texts(store, documents_asset, crawl, validation_fraction)
        if next(iter(held_out.documents), None) is not None:  # reads up to the first held-out document
            eval_sets.insert(0, held_out)
        else:
            log("the validation split holds no documents: only the eval sets are scored")
    if not eval_sets:
        raise EvaluationError("nothing to evaluate: no eval set is configured and the held-out split is empty")
    return eval_sets


def scores_markdown(scores: list[SetScore], decontamination: pl.DataFrame) -> str:
    """The scores by eval set, beside how many training documents decontamination removed for each set."""
    removed = dict(decontamination.select("eval_set", "removed").group_by("eval_set").sum().iter_rows())
    table = [
        (
            s.eval_set,
            s.documents,
            s.bytes,
            f"{s.loss:.4f}",
            f"{s.perplexity:.1f}",
            f"{s.bits_per_byte:.4f}",
            f"{s.unigram_bits_per_byte:.4f}",
            "—" if s.eval_set == HELD_OUT else removed.get(s.eval_set, 0),
        )
        for s in sorted(scores, key=lambda s: s.eval_set)
    ]
    columns = ["eval set", "docs", "bytes", "loss", "ppl", "bits/byte", "unigram bits/byte", "train docs removed"]
    return markdown_table(table, columns)
