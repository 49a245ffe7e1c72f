"""Evaluation: how good each checkpoint is, and the history that says whether new data helped."""

import posixpath
from pathlib import Path

import dagster as dg

from assets.commit import commit, materialized, record, writing
from assets.dedup import DEDUPED
from assets.tokenize import TOKEN_SHARDS
from assets.train import CHECKPOINT
from resources.common.model_store import fetch_model
from resources.common.storage import UNPARTITIONED
from resources.common.versioning import OutputVersion
from resources.evaluate.history import (
    EVALUATION,
    EVALUATION_CHECKS,
    REFERENCE_EVALUATION,
    comparison_table,
    read_reference,
)
from resources.evaluate.report import markdown_table
from resources.evaluate.settings import EvaluationSettings
from resources.llm.model import inspect_model
from resources.resources import CatalogResource, StorageResource
from resources.train.mixture import TRAINING_MIXTURE

MODEL_COMPARISON = "model_comparison"
EVAL_LOGIC = "1"
REFERENCE_LOGIC = "1"
COMPARISON_VERSION = OutputVersion("2")  # 2: kind column, the reference row


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
        from resources.evaluate.evaluator import evaluate, scores_markdown  # torch: only where a model is scored

        with writing(context, storage) as store:
            result = evaluate(
                store,
                settings,
                code_version=version.code_version,
                run_id=context.run_id,
                checkpoint_asset=CHECKPOINT,
                documents_asset=DEDUPED,
                tokens_asset=TOKEN_SHARDS,
                validation_fraction=validation_fraction,
                log=context.log.warning,
            )
            described = result.described
            inputs = {
                CHECKPOINT: described["checkpoint_data_version"],
                TRAINING_MIXTURE: described["mixture_data_version"],
            }
            stats = {"evaluation_id": described["evaluation_id"], "checkpoint": described["checkpoint"]}
            manifest = commit(context, store, version, result.files, inputs=inputs, stats=stats)
            record(context, catalog.catalog(), manifest)
        decontamination = catalog.catalog().decontamination()
        samples = [(s.prompt, s.text, s.finish_reason) for s in result.samples]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.data_version),
            metadata={
                "checkpoint": described["checkpoint"],
                "trained_on": f"{described['mixture']}, {described['tokens_seen']:,} tokens",
                "mixture_data_version": described["mixture_data_version"],
                **{f"bits_per_byte/{s.eval_set}": round(s.bits_per_byte, 4) for s in result.scores},
                **{f"perplexity/{s.eval_set}": round(s.perplexity, 2) for s in result.scores},
                "scores": dg.MetadataValue.md(scores_markdown(result.scores, decontamination)),
                "samples": dg.MetadataValue.md(markdown_table(samples, ["prompt", "sample", "end"])),
                "decontamination": dg.MetadataValue.md(
                    markdown_table(decontamination.rows(), decontamination.columns)
                    if decontamination.height
                    else "no training document matched an eval set"
                ),
                **{f"{metric}/{task}": round(v, 4) for task, m in result.tasks.items() for metric, v in m.items()},
                "evaluations_so_far": result.evaluations,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=check.name,
                    passed=check.passed,
                    metadata=check.metadata,
                    severity=dg.AssetCheckSeverity.WARN if check.warn_only else dg.AssetCheckSeverity.ERROR,
                )
                for check in result.checks
            ],
        )

    return evaluation


def build_reference_evaluation(
    settings: EvaluationSettings, validation_fraction: float, model_asset: str | None
) -> dg.AssetsDefinition:
    """`model_asset`: the asset whose published model directory is the reference (the rewriting
    model), used unless `evaluation.reference.path` names a directory."""
    reference = settings.reference
    if reference is None:
        raise ValueError("the reference_evaluation asset needs evaluation.reference")
    from_asset = reference.path is None
    if from_asset and model_asset is None:
        raise ValueError("evaluation.reference needs `path` (a model directory) when rewriting is off")
    shaping = {**settings.reference_shaping(), "validation_fraction": validation_fraction}
    version = OutputVersion(REFERENCE_LOGIC, shaping)

    @dg.asset(
        name=REFERENCE_EVALUATION,
        deps=[TRAINING_MIXTURE, *([model_asset] if from_asset else [])],
        code_version=version.code_version,
        group_name="evaluate",
        kinds={"pytorch"},
        pool="gpu",
        description="A fixed reference model (the rewriting model, e.g. SmolLM2-135M, unless evaluation.reference.path "
        "names another) scored with the same bits-per-byte engine on the held-out split and every eval set, for the "
        "comparison and the report. Scored once per model, settings and eval-set text; reused otherwise.",
    )
    def reference_evaluation(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        from resources.evaluate.reference import evaluate_reference  # torch: only where a model is scored

        with writing(context, storage) as store:
            if from_asset:
                model_dir, model_manifest = fetch_model(store, str(model_asset))
                model_version, model_inputs = (
                    model_manifest.data_version,
                    {str(model_asset): model_manifest.data_version},
                )
            else:
                model_dir = Path(str(reference.path))
                model_version, model_inputs = inspect_model(model_dir).fingerprint, {}
            result = evaluate_reference(
                store,
                settings,
                model_dir,
                model_version,
                code_version=version.code_version,
                run_id=context.run_id,
                documents_asset=DEDUPED,
                tokens_asset=TOKEN_SHARDS,
                validation_fraction=validation_fraction,
                model_inputs=model_inputs,
                log=context.log.info,
            )
            manifest = commit(context, store, version, result.files, inputs=result.inputs)
            rows = result.rows
            return materialized(
                store,
                manifest,
                {
                    "model": rows.get_column("model")[0],
                    **{
                        f"bits_per_byte/{r['eval_set']}": round(r["bits_per_byte"], 4)
                        for r in rows.iter_rows(named=True)
                    },
                    "scored": ", ".join(result.scored) or "none (all reused)",
                    "reused": ", ".join(result.reused) or "none",
                    "scores": dg.MetadataValue.md(
                        markdown_table(
                            rows.select("eval_set", "documents", "bytes", "tokens", "seq_len", "bits_per_byte").rows(),
                            ["eval set", "documents", "bytes", "tokens", "window", "bits/byte"],
                        )
                    ),
                },
            )

    return reference_evaluation


def build_model_comparison(with_reference: bool) -> dg.AssetsDefinition:
    @dg.asset(
        name=MODEL_COMPARISON,
        deps=[EVALUATION, *([REFERENCE_EVALUATION] if with_reference else [])],
        group_name="evaluate",
        code_version=COMPARISON_VERSION.code_version,
        kinds={"parquet"},
        description="Every evaluated checkpoint side by side: which generation and step, which mixture and data "
        "versions, bits-per-byte on each eval set; the reference model's row last (kind `reference`). One row per "
        "checkpoint; tells whether new data helped, and how far from a real small model we are.",
    )
    def model_comparison(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        with writing(context, storage) as store:
            table = comparison_table(store, read_reference(store) if with_reference else None)
            shard = store.write_parquet_shard(MODEL_COMPARISON, None, 0, table, "comparison")
            manifest = commit(context, store, COMPARISON_VERSION, [shard], stats={"checkpoints": table.height})
            shown = table.drop("evaluation_id", "checkpoint_data_version", "mixture_data_version", "checkpoint")
            return dg.MaterializeResult(
                data_version=dg.DataVersion(manifest.data_version),
                metadata={
                    "checkpoints": int((table.get_column("kind") == "checkpoint").sum()),
                    "path": dg.MetadataValue.path(
                        posixpath.join(store.url(MODEL_COMPARISON, UNPARTITIONED), shard.path)
                    ),
                    "comparison": dg.MetadataValue.md(
                        markdown_table(
                            [[f"{v:.4f}" if isinstance(v, float) else v for v in row] for row in shown.rows()],
                            shown.columns,
                        )
                    ),
                },
            )

    return model_comparison
