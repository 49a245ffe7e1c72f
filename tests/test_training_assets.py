"""Tokenizer, token shards and a checkpoint as real materializations on the shipped sample: the
checkpoint loads in transformers, names the shards it saw, and a new crawl batch tokenizes only itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from assets.dedup import DEDUPED
from assets.tokenization import TOKEN_SHARDS, TOKENIZER
from assets.training import CHECKPOINT
from definitions import build_definitions
from jobs.demo import materialize_stale, needs_run, tick_sensor
from resources.catalog import LineageCatalog
from resources.settings import Settings
from resources.storage import ShardStore
from resources.token_shards import TOKEN_INDEX, TOKENS
from tests.conftest import SAMPLE_DIR


def small_settings(tmp_path: Path, crawl: Path) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"root": str(tmp_path / "store")},
            "catalog": {"path": str(tmp_path / "catalog.duckdb")},
            "source": {"url": str(crawl), "files_per_partition": 1},
            "ingest": {"workers": 1},
            "quality": {
                "classifier": {"reference_files": ["data/reference/wikitext2_reference.txt"], "keep_threshold": 0.0}
            },
            "dedup": {"wait_retries": 0, "near": {"workers": 1}},
            "tokenizer": {"vocab_size": 600},
            "training": {
                "max_steps": 6,
                "checkpoint_every": 3,
                "seq_len": 32,
                "micro_batch_size": 4,
                "warmup_steps": 2,
            },
        }
    ).resolved()


def test_crawl_to_checkpoint_and_a_new_batch(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    first, *rest = sorted(SAMPLE_DIR.iterdir())
    shutil.copy(first, crawl)
    settings = small_settings(tmp_path, crawl)
    defs = build_definitions(settings)
    tick_sensor(defs, instance)
    materialize_stale(defs, instance)
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
    (new,) = [r.partition_key for r in tick_sensor(defs, instance).run_requests]
    tokenizer_version = store.read_manifest(TOKENIZER, None).data_version
    done = materialize_stale(defs, instance)
    assert (TOKEN_SHARDS, new) in done and (TOKEN_SHARDS, batch) not in done
    assert store.read_manifest(TOKENIZER, None).data_version == tokenizer_version
    assert (CHECKPOINT, None) in done and not needs_run(defs, instance, CHECKPOINT, None)
    second = store.read_manifest(CHECKPOINT, None)
    assert second.stats["checkpoint"] != checkpoint.stats["checkpoint"] and path.exists()  # history kept
