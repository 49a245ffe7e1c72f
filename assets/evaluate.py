"""Evaluation: how good each checkpoint is, and the history that says whether new data helped."""

import posixpath
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets.commit import commit
from assets.dedup import DEDUPED
from assets.tokenize import TOKEN_SHARDS
from assets.train import CHECKPOINT
from resources.common.storage import UNPARTITIONED, Manifest, ShardStore, stable_hash
from resources.common.versioning import OutputVersion
from resources.evaluate.lm_eval_tasks import run_lm_eval
from resources.evaluate.report import markdown_table
from resources.evaluate.scoring import (
    HELD_OUT,
    EvaluationError,
    EvaluationSettings,
    generate_samples,
    held_out_texts,
    is_finite_result,
    load_checkpoint,
    load_eval_set,
    pick_device,
    regressions,
    score_texts,
    training_token_counts,
    unigram_log2_probs,
)
from resources.resources import CatalogResource, StorageResource
from resources.train.checkpoints import read_manifest
from resources.train.mixture import TRAINING_MIXTURE, read_mixture

EVALUATION = "evaluation"
MODEL_COMPARISON = "model_comparison"
RESULTS, SAMPLES, TASKS = "results", "samples", "tasks"
EVAL_LOGIC = "1"
EVALUATION_CHECKS = ("metrics_finite", "beats_unigram_baseline", "no_regression_vs_previous")


def read_history(store: ShardStore, table: str) -> pl.DataFrame:
    """Every evaluation so far (one row per checkpoint and eval set), or the samples."""
    manifest = store.read_manifest(EVALUATION, None)
    if manifest is None or not store.shard_paths(manifest, table):
        return pl.DataFrame()
    return pl.concat(store.iter_frames(manifest, table=table), how="diagonal_relaxed")


def build_evaluation(settings: EvaluationSettings, validation_fraction: float) -> dg.AssetsDefinition:
    shaping = {**settings.output_shaping(), "validation_fraction": validation_fraction}
    version = OutputVersion(EVAL_LOGIC, shaping)

    @dg.asset(
        name=EVALUATION,
        deps=[CHECKPOINT, TRAINING_MIXTURE],
        code_version=version.code_version,
        group_name="evaluate",
        kinds={"pytorch", "vllm"},
        pool="gpu",
        check_specs=[dg.AssetCheckSpec(name, asset=EVALUATION) for name in EVALUATION_CHECKS],
        description="Loss, perplexity and bits-per-byte of the latest checkpoint on the held-out split and "
        "every registered eval set, beside a unigram baseline and the decontamination report; generation "
        "samples with fixed prompts and seed. Keeps every earlier checkpoint's results.",
    )
    def evaluation(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store = storage.store()
        eval_sets = [load_eval_set(name, spec) for name, spec in settings.specs().items()]  # fail before loading
        latest = store.read_manifest(CHECKPOINT, None)
        if latest is None:
            raise EvaluationError(f"{CHECKPOINT} is not materialized: materialize it first")
        mixture, mixture_version = read_mixture(store)
        if settings.held_out:
            crawl = [key for spec in mixture.values() if spec["asset"] == TOKEN_SHARDS for key in spec["partitions"]]
            held_out = held_out_texts(store, DEDUPED, crawl, validation_fraction)
            if held_out.documents:
                eval_sets.insert(0, held_out)
            else:
                context.log.warning("the validation split holds no documents: only the eval sets are scored")
        if not eval_sets:
            raise EvaluationError("nothing to evaluate: no eval set is configured and the held-out split is empty")
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
        del model
        device = str(pick_device(settings.device))
        tasks = run_lm_eval(checkpoint_dir, settings.lm_eval, device) if settings.lm_eval else {}
        evaluation_id = stable_hash([latest.data_version, version.code_version])[:16]
        described = {
            "evaluation_id": evaluation_id,
            "eval_code_version": version.code_version,
            "checkpoint": latest.stats["checkpoint"],
            "generation": latest.stats["checkpoint"].split("/")[0],
            "step": latest.stats["step"],
            "checkpoint_data_version": latest.data_version,
            "mixture_data_version": mixture_version,
            "mixture": _describe_mixture(mixture),
            "tokens_seen": int(read_manifest(checkpoint_dir).get("total_tokens_seen", 0)),
        }
        which = {"evaluation_id": evaluation_id, "checkpoint": described["checkpoint"]}
        tables = _with_history(
            store,
            {
                RESULTS: [{**described, **score.row()} for score in scores],
                SAMPLES: [{**which, **vars(sample)} for sample in samples],
                TASKS: [{**which, "task": task, **metrics} for task, metrics in tasks.items()],
            },
            context.run_id,
        )
        results = tables[RESULTS]
        rows_frame = results.filter(pl.col("evaluation_id") == evaluation_id)
        others = results.filter(pl.col("evaluation_id") != evaluation_id)
        manifest = commit(
            context,
            store,
            version,
            [store.write_parquet_shard(EVALUATION, None, 0, frame, table) for table, frame in tables.items()],
            inputs={CHECKPOINT: latest.data_version, TRAINING_MIXTURE: mixture_version},
            stats={"evaluation_id": evaluation_id, "checkpoint": latest.stats["checkpoint"]},
        )
        catalog.catalog().record_materialization(manifest)
        decontamination = catalog.catalog().decontamination()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.data_version),
            metadata={
                "checkpoint": described["checkpoint"],
                "trained_on": f"{described['mixture']}, {described['tokens_seen']:,} tokens",
                "mixture_data_version": mixture_version,
                **{f"bits_per_byte/{s.eval_set}": round(s.bits_per_byte, 4) for s in scores},
                **{f"perplexity/{s.eval_set}": round(s.perplexity, 2) for s in scores},
                "scores": dg.MetadataValue.md(_scores_markdown(rows_frame, decontamination)),
                "samples": dg.MetadataValue.md(
                    markdown_table([(s.prompt, s.text, s.finish_reason) for s in samples], ["prompt", "sample", "end"])
                ),
                "decontamination": dg.MetadataValue.md(
                    markdown_table(decontamination.rows(), decontamination.columns)
                    if decontamination.height
                    else "no training document matched an eval set"
                ),
                **{f"{metric}/{task}": round(v, 4) for task, m in tasks.items() for metric, v in m.items()},
                "evaluations_so_far": results.get_column("evaluation_id").n_unique(),
            },
            check_results=_checks(rows_frame, others, settings.regression_tolerance),
        )

    return evaluation


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


def _with_history(store: ShardStore, new: dict[str, list[dict]], run_id: str) -> dict[str, pl.DataFrame]:
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


def _describe_mixture(mixture: dict[str, dict]) -> str:
    """`source weight×partitions` per source: which data, how mixed, in one readable cell."""
    return ", ".join(
        f"{name} {spec.get('weight', 0):.2f}×{len(spec['partitions'])}" for name, spec in sorted(mixture.items())
    )


def _scores_markdown(rows: pl.DataFrame, decontamination: pl.DataFrame) -> str:
    removed = dict(decontamination.select("eval_set", "removed").group_by("eval_set").sum().iter_rows())
    table = [
        (
            r["eval_set"],
            r["documents"],
            r["bytes"],
            f"{r['loss']:.4f}",
            f"{r['perplexity']:.1f}",
            f"{r['bits_per_byte']:.4f}",
            f"{r['unigram_bits_per_byte']:.4f}",
            "—" if r["eval_set"] == HELD_OUT else removed.get(r["eval_set"], 0),
        )
        for r in rows.iter_rows(named=True)
    ]
    columns = ["eval set", "docs", "bytes", "loss", "ppl", "bits/byte", "unigram bits/byte", "train docs removed"]
    return markdown_table(table, columns)


def _checks(rows: pl.DataFrame, history: pl.DataFrame, tolerance: float) -> list[dg.AssetCheckResult]:
    records = rows.to_dicts()
    worse = [r["eval_set"] for r in records if not r["bits_per_byte"] < r["unigram_bits_per_byte"]]
    previous = _previous(history, rows.row(0, named=True))
    current = dict(zip(rows.get_column("eval_set"), rows.get_column("bits_per_byte"), strict=True))
    regressed = regressions(current, previous[1], tolerance) if previous else {}
    return [
        dg.AssetCheckResult(check_name="metrics_finite", passed=is_finite_result(records)),
        dg.AssetCheckResult(
            check_name="beats_unigram_baseline",
            passed=not worse,
            metadata={
                "not_better": ", ".join(worse) or "none",
                **{f"margin/{r['eval_set']}": r["unigram_bits_per_byte"] - r["bits_per_byte"] for r in records},
            },
        ),
        dg.AssetCheckResult(
            check_name="no_regression_vs_previous",
            passed=not regressed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "previous_checkpoint": previous[0] if previous else "none",
                "tolerance": tolerance,
                **{f"bits_per_byte/{name}": f"{old:.4f} -> {new:.4f}" for name, (old, new) in regressed.items()},
            },
        ),
    ]


def _previous(history: pl.DataFrame, current: dict) -> tuple[str, dict[str, float]] | None:
    """The last evaluation before this one, of another checkpoint, under the same evaluation
    settings (other settings score other sets)."""
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


def _comparison(results: pl.DataFrame, tasks: pl.DataFrame) -> pl.DataFrame:
    """One row per evaluated checkpoint, oldest first: bits-per-byte per eval set and accuracy
    per downstream task as columns."""
    keys = ["evaluation_id", "evaluated_at", "generation", "step", "tokens_seen", "mixture", "checkpoint_data_version"]
    keys += ["mixture_data_version", "checkpoint"]
    wide = results.pivot(on="eval_set", index=keys, values="bits_per_byte", aggregate_function="first")
    wide = wide.rename({c: f"bpb_{c}" for c in wide.columns if c not in keys})
    if tasks.height:
        accuracy = tasks.pivot(on="task", index="evaluation_id", values="acc", aggregate_function="first")
        wide = wide.join(accuracy.rename({c: f"acc_{c}" for c in accuracy.columns if c != "evaluation_id"}),
                         on="evaluation_id", how="left")  # fmt: skip
    return wide.sort("evaluated_at", "evaluation_id")


@dg.asset(
    name=MODEL_COMPARISON,
    deps=[EVALUATION],
    group_name="evaluate",
    code_version="1",
    kinds={"parquet"},
    description="Every evaluated checkpoint side by side: which generation and step, which mixture and data "
    "versions, bits-per-byte on each eval set. One row per checkpoint; tells whether new data helped.",
)
def model_comparison(storage: StorageResource) -> dg.MaterializeResult:
    store = storage.store()
    results = read_history(store, RESULTS)
    if not results.height:
        raise EvaluationError(f"{EVALUATION} holds no results: materialize it first")
    table = _comparison(results, read_history(store, TASKS))
    shard = store.write_parquet_shard(MODEL_COMPARISON, None, 0, table, "comparison")
    manifest = store.commit(
        Manifest(asset=MODEL_COMPARISON, partition=UNPARTITIONED, files=[shard], stats={"checkpoints": table.height})
    )
    shown = table.drop("evaluation_id", "checkpoint_data_version", "mixture_data_version", "checkpoint")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(manifest.data_version),
        metadata={
            "checkpoints": table.height,
            "path": dg.MetadataValue.path(posixpath.join(store.url(MODEL_COMPARISON, UNPARTITIONED), shard.path)),
            "comparison": dg.MetadataValue.md(
                markdown_table(
                    [[f"{v:.4f}" if isinstance(v, float) else v for v in row] for row in shown.rows()], shown.columns
                )
            ),
        },
    )
