"""Tokenizer, token shards and a checkpoint as real materializations on the shipped sample: the
checkpoint loads in transformers, names the shards it saw, and a new crawl batch tokenizes only itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from assets.dedup import DEDUPED
from assets.evaluate import MODEL_COMPARISON
from assets.filter import QUALITY_CLASSIFIER
from assets.reports import REPORT
from assets.tokenize import TOKEN_SHARDS, TOKENIZER
from assets.train import CHECKPOINT
from definitions import build_definitions
from resources.common.catalog import LineageCatalog
from resources.common.schemas import TOKEN_INDEX, TOKENS
from resources.common.storage import ShardStore
from resources.evaluate.history import EVALUATION, RESULTS, read_history
from resources.evaluate.scoring import CheckpointLoadError, EvalSetError
from resources.settings import Settings
from tests.automation_driver import materialize, materialize_stale, needs_run, new_batches, tick_sensor
from tests.conftest import SAMPLE_DIR, chain_settings


def small_settings(tmp_path: Path, crawl: Path) -> Settings:
    return chain_settings(
        tmp_path,
        crawl,
        source={"files_per_partition": 1},
        tokenizer={"vocab_size": 600},
        training={"max_steps": 6, "checkpoint_every": 3, "seq_len": 32, "micro_batch_size": 4, "warmup_steps": 2},
        evaluation={
            "max_tokens_per_set": 20_000,
            "generation": {"backend": "transformers", "max_tokens": 8},
            "lm_eval": {"limit": 4},
        },
    )


def test_crawl_to_checkpoint_and_a_new_batch(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    first, *rest = sorted(SAMPLE_DIR.iterdir())
    shutil.copy(first, crawl)
    settings = small_settings(tmp_path, crawl)
    defs = build_definitions(settings)
    tick_sensor(defs, instance)
    materialize_stale(defs, instance)
    assert materialize_stale(defs, instance) == []  # nothing fresh is recomputed
    store = ShardStore(settings.storage.root)
    (batch,) = instance.get_dynamic_partitions("crawl_batches")

    # Every token traces back to a deduplicated document.
    shards = store.read_manifest(TOKEN_SHARDS, batch)
    tokens = np.fromfile(store.shard_paths(shards, TOKENS)[0], dtype=shards.stats["dtype"])
    index = pl.read_parquet(store.shard_paths(shards, TOKEN_INDEX)[0])
    documents = pl.concat(list(store.iter_frames(store.read_manifest(DEDUPED, batch), ["doc_id", "text"])))
    assert set(index.get_column("doc_id")) == set(documents.get_column("doc_id"))
    assert int(tokens.max()) < shards.stats["vocab_size"] and tokens.size == shards.stats["tokens"]

    # The checkpoint loads in transformers with its tokenizer, and its manifest names the shards.
    checkpoint = store.read_manifest(CHECKPOINT, None)
    path = Path(store.partition_dir(CHECKPOINT, None)) / checkpoint.stats["checkpoint"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("The lobster is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    assert shards.data_version in checkpoint.inputs.values()
    metadata = instance.get_latest_materialization_event(dg.AssetKey(CHECKPOINT)).asset_materialization.metadata
    assert np.isfinite(metadata["final_loss"].value) and metadata["tokens_seen"].value > 0
    assert (
        LineageCatalog(settings.catalog.path)
        .query("SELECT count(*) FROM materializations WHERE asset = 'checkpoint'")
        .item()
        == 1
    )

    # A new crawl batch: only it is tokenized, the tokenizer keeps its version, the checkpoint goes stale.
    shutil.copy(rest[0], crawl)
    (new,) = new_batches(tick_sensor(defs, instance))
    tokenizer_version = store.read_manifest(TOKENIZER, None).data_version
    done = materialize_stale(defs, instance)
    assert (TOKEN_SHARDS, new) in done and (TOKEN_SHARDS, batch) not in done
    assert {partition for _, partition in done} == {new, None}  # the old batch is not touched
    assert not {(TOKENIZER, None), (QUALITY_CLASSIFIER, None)} & set(done)  # models kept for new batches
    assert store.read_manifest(TOKENIZER, None).data_version == tokenizer_version
    assert (CHECKPOINT, None) in done and not needs_run(defs, instance, CHECKPOINT, None)
    second = store.read_manifest(CHECKPOINT, None)
    assert second.stats["checkpoint"] != checkpoint.stats["checkpoint"] and path.exists()  # history kept

    # Evaluation: one more row in the comparison per new checkpoint, the report shows both.
    comparison = pl.concat(list(store.iter_frames(store.read_manifest(MODEL_COMPARISON, None), table="comparison")))
    assert comparison.height == 2 and comparison.get_column("step").to_list() == [6, 6]
    assert comparison.get_column("generation").n_unique() == 2
    assert "bpb_wikitext2_valid" in comparison.columns
    assert comparison.get_column("acc_everyday_facts").is_between(0, 1).all()  # lm-eval on a local task
    html = Path(store.partition_dir(REPORT, None), "report.html").read_text()
    assert second.stats["checkpoint"] in html and "data:image/png;base64," in html

    # Re-evaluating the same checkpoint changes nothing; the regression check compares with the first.
    evaluated = store.read_manifest(EVALUATION, None).data_version
    result = materialize(defs, instance, [EVALUATION])
    assert store.read_manifest(EVALUATION, None).data_version == evaluated
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["metrics_finite"].passed
    assert checks["no_regression_vs_previous"].metadata["previous_checkpoint"].value == checkpoint.stats["checkpoint"]

    # Bad input: a missing eval set fails naming it, before the model loads; nothing written is lost.
    missing = settings.model_copy(deep=True)
    missing.evaluation.eval_sets = {"gone_set": str(tmp_path / "gone.txt")}
    with pytest.raises(EvalSetError, match="gone_set"):
        materialize(build_definitions(missing), instance, [EVALUATION])
    # A checkpoint whose weights were damaged fails clearly, and the earlier results stay readable.
    weights = Path(store.partition_dir(CHECKPOINT, None), second.stats["checkpoint"], "model.safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointLoadError, match="does not load"):
        materialize(defs, instance, [EVALUATION])
    assert store.read_manifest(EVALUATION, None).data_version == evaluated
    assert read_history(store, RESULTS).get_column("evaluation_id").n_unique() == 2
