"""The reference row: a fixed model scored with the same bits-per-byte engine, on the same held-out
split and eval sets as our checkpoints, so the comparison and the report say where a checkpoint
stands against a model trained on trillions of tokens (SmolLM2-135M, the rewriting model).

Scoring a 135M model on CPU takes minutes, and the answer only changes with the model, the
scoring settings or the text scored. So each row carries the model's version, the settings' code
version and a digest of the eval set's documents; the previous results are the cache: a row whose
three keys still match is reused as it was (date and run included, so unchanged results are
unchanged bytes and a stable data version), and only sets whose text changed (the held-out split
after new crawl batches) are scored again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from resources.common.storage import ShardInfo, ShardStore, stable_hash
from resources.evaluate.errors import EvaluationError
from resources.evaluate.evaluator import gather_eval_sets
from resources.evaluate.history import REFERENCE_EVALUATION, REFERENCE_RESULTS, read_reference
from resources.evaluate.scoring import EvalTexts, LoadedCheckpoint, load_checkpoint, score_texts
from resources.evaluate.settings import EvaluationSettings, ReferenceSettings
from resources.train.mixture import TRAINING_MIXTURE, read_mixture

REFERENCE = "reference"  # the `kind` of its rows in the comparison


@dataclass(frozen=True)
class ReferenceEvaluation:
    rows: pl.DataFrame  # one row per eval set, in eval-set order
    scored: list[str]  # eval sets scored in this run
    reused: list[str]  # eval sets whose earlier row still held
    files: list[ShardInfo]
    inputs: dict[str, str]


def texts_digest(texts: EvalTexts) -> str:
    """The documents an eval set holds, by content (what the cached score was computed on)."""
    digest = hashlib.sha256()
    for document in texts.documents:
        digest.update(document.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def load_reference(path: Path, settings: ReferenceSettings, device: str) -> LoadedCheckpoint:
    """Any Hugging Face causal LM directory, its documents delimited by `document_separator`."""
    model = load_checkpoint(path, device)
    separator = settings.document_separator
    if separator is None or separator == model.tokenizer.eos_token:
        return model
    token_id = model.tokenizer.tokenizer.token_to_id(separator)
    if token_id is None:
        raise EvaluationError(f"reference model {path}: document_separator {separator!r} is not in its vocabulary")
    tokenizer = dataclasses.replace(model.tokenizer, eos_token=separator, eos_id=token_id)
    return dataclasses.replace(model, tokenizer=tokenizer)


def evaluate_reference(
    store: ShardStore,
    settings: EvaluationSettings,
    model_dir: Path,
    model_version: str,
    *,
    code_version: str,
    run_id: str,
    documents_asset: str,
    tokens_asset: str,
    validation_fraction: float,
    model_inputs: dict[str, str] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> ReferenceEvaluation:
    """Score the reference model (`model_version`: its content hash) on the held-out split and the
    eval sets, reusing every row the previous results hold for the same model, settings and text;
    write the rows. The model is loaded only if some set needs scoring."""
    reference = settings.reference
    if reference is None:
        raise EvaluationError("evaluation.reference is not configured")
    mixture, mixture_version = read_mixture(store) if settings.held_out else ({}, None)
    eval_sets = gather_eval_sets(store, settings, mixture, documents_asset, tokens_asset, validation_fraction, log)
    evaluation_id = stable_hash([model_version, code_version])[:16]
    previous = read_reference(store)
    cached = (
        {
            (row["eval_set"], row["texts_digest"]): row
            for row in previous.filter(pl.col("evaluation_id") == evaluation_id).iter_rows(named=True)
        }
        if previous.height
        else {}
    )
    name = reference.name or model_dir.name
    rows: list[dict[str, Any]] = []
    scored, reused = [], []
    model: LoadedCheckpoint | None = None
    for texts in eval_sets:
        digest = texts_digest(texts)
        if (texts.name, digest) in cached:
            rows.append(cached[texts.name, digest])
            reused.append(texts.name)
            continue
        if model is None:
            model = load_reference(model_dir, reference, settings.device)
        window = settings.seq_len or model.seq_len
        score = score_texts(
            model,
            texts,
            max_tokens=reference.max_tokens_per_set or settings.max_tokens_per_set,
            batch_size=max(1, reference.max_batch_tokens // window),
            seq_len=window,
        )
        rows.append(
            {
                "evaluation_id": evaluation_id,
                "evaluated_at": datetime.now(UTC),
                "run_id": run_id,
                "kind": REFERENCE,
                "model": name,
                "model_version": model_version,
                "eval_code_version": code_version,
                "texts_digest": digest,
                "seq_len": window,
                **score.row(),
            }
        )
        scored.append(texts.name)
        log(f"reference {name}: {texts.name} bits/byte {score.bits_per_byte:.4f} on {score.documents} documents")
    frame = pl.DataFrame(rows).with_columns(
        pl.col("evaluated_at").cast(pl.Datetime("us", "UTC")), pl.col("unigram_bits_per_byte").cast(pl.Float64)
    )
    files = [store.write_parquet_shard(REFERENCE_EVALUATION, None, 0, frame, REFERENCE_RESULTS)]
    inputs = {TRAINING_MIXTURE: mixture_version} if mixture_version else {}
    return ReferenceEvaluation(frame, scored, reused, files, {**inputs, **(model_inputs or {})})
