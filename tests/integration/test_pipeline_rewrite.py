"""The whole graph as real materializations on a tiny sample, vLLM on the CPU inside two assets
(synthetic rewriting, evaluation samples): every synthetic document traces to its source, the
checkpoint trains on the mixture, and it is evaluated, compared and reported."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.dedup import DEDUPED
from assets.reports import REPORT
from assets.rewrite import SYNTHETIC
from assets.train import CHECKPOINT
from definitions import SYNTHETIC_TOKEN_SHARDS, build_definitions
from jobs.demo import materialize_stale, needs_run, tick_sensor
from resources.common.storage import ShardStore
from resources.evaluate.history import RESULTS, SAMPLES, read_history
from resources.train.mixture import MIXTURE_FILE, TRAINING_MIXTURE
from tests.conftest import chain_settings, one_file_crawl

pytestmark = pytest.mark.vllm


def test_full_graph_from_crawl_to_report(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    crawl = one_file_crawl(tmp_path)
    settings = chain_settings(
        tmp_path,
        crawl,
        rewrite={
            "max_model_len": 512,
            "recipes": {"encyclopedic": {"sampling": {"max_tokens": 16}, "selection": {"sample_fraction": 0.2}}},
            "post_filter": {"drop_truncated": False},
            "vllm": {"gpu_memory_utilization": 0.2},
        },
        tokenizer={"vocab_size": 600},
        training={
            "max_steps": 4,
            "checkpoint_every": 4,
            "seq_len": 32,
            "micro_batch_size": 4,
            "warmup_steps": 1,
        },
        evaluation={
            "max_tokens_per_set": 20_000,
            "generation": {"backend": "vllm", "max_tokens": 8, "vllm": {"gpu_memory_utilization": 0.2}},
        },
    )
    defs = build_definitions(settings)
    tick_sensor(defs, instance)
    materialize_stale(defs, instance)
    store = ShardStore(settings.storage.root)
    (batch,) = instance.get_dynamic_partitions("crawl_batches")

    synthetic_manifest = store.read_manifest(SYNTHETIC, batch)
    synthetic = pl.concat(list(store.iter_frames(synthetic_manifest)))
    sources = pl.concat(list(store.iter_frames(store.read_manifest(DEDUPED, batch), ["doc_id", "url"])))
    assert synthetic.height > 0
    assert set(synthetic.get_column("source_doc_id")) <= set(sources.get_column("doc_id"))
    for column in ("recipe", "recipe_version", "model", "sampling", "seed", "finish_reason", "url", "warc_record_id"):
        assert synthetic.get_column(column).null_count() == 0, column
    joined = synthetic.join(sources, left_on="source_doc_id", right_on="doc_id", suffix="_source")
    assert (joined.get_column("url") == joined.get_column("url_source")).all()

    mixture = json.loads(store.read_bytes(f"{store.partition_dir(TRAINING_MIXTURE, None)}/{MIXTURE_FILE}"))
    assert set(mixture) == {"crawl", "synthetic"} and mixture["synthetic"]["asset"] == SYNTHETIC_TOKEN_SHARDS
    assert mixture["synthetic"]["sampling_factor"] > 1 > mixture["crawl"]["sampling_factor"]  # synthetic upsampled
    checkpoint = store.read_manifest(CHECKPOINT, None)
    assert store.read_manifest(SYNTHETIC_TOKEN_SHARDS, batch).data_version in checkpoint.inputs.values()

    # Every asset of the graph is materialized and fresh; the evaluation has vLLM samples.
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        partitions = [batch] if graph.get(key).is_partitioned else [None]
        assert not any(needs_run(defs, instance, key.to_user_string(), p) for p in partitions), key
    samples = read_history(store, SAMPLES)
    assert samples.height == len(settings.evaluation.generation.prompts)
    assert (samples.get_column("output_tokens") > 0).all()
    results = read_history(store, RESULTS)
    assert set(results.get_column("eval_set")) >= {"wikitext2_valid"}
    assert results.get_column("checkpoint").unique().to_list() == [checkpoint.stats["checkpoint"]]
    html = Path(store.partition_dir(REPORT, None), "report.html").read_text()
    for heading in ("Filter funnel", "Tokens by source", "Training loss", "Evaluation over checkpoints", "Samples"):
        assert heading in html
