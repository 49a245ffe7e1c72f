"""Zero clicks: `dagster dev` on the demo config from an empty instance. The sample's WARC files are
dropped into the watched folder one batch at a time and, with no other action, the crawl sensor and
the automation sensor carry each batch to a report; then one new WARC file gives exactly one new
batch's partitions, one retraining (the demo's policy: every new batch) and one new evaluation row,
and nothing that was fresh ran again."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory, StaleStatus
from dagster._core.loader import LoadingContextForTest

from assets.partitions import crawl_batches
from definitions import build_definitions
from resources.common.storage import ShardStore
from resources.evaluate.history import RESULTS, read_history
from resources.settings import load_settings
from tests.conftest import SAMPLE_DIR
from tests.e2e.dagster_dev import dagster_dev, demo_config

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PER_BATCH = (
    "raw_documents",
    "filtered_documents",
    "scored_documents",
    "deduplicated_documents",
    "synthetic_documents",
    "token_shards",
    "synthetic_token_shards",
)
KEPT_MODELS = ("quality_classifier", "tokenizer")  # not retrained when only new batches arrive (their default)
ONCE = ("rewriter_model", *KEPT_MODELS)
EACH_BATCH = (
    "training_mixture",
    "checkpoint",
    "evaluation",
    "model_comparison",
    "report",
    "crawl_summary",
    "decontamination_report",
    "takedown_report",  # checks again, on each new checkpoint, that no taken-down document is in it
)


def materializations(instance: dg.DagsterInstance) -> Counter[tuple[str, str | None]]:
    counts: Counter[tuple[str, str | None]] = Counter()
    for key in instance.get_asset_keys():
        for record in instance.fetch_materializations(key, limit=1000).records:
            counts[key.to_user_string(), record.partition_key] += 1
    return counts


def test_new_crawl_files_reach_a_report_with_no_clicks(tmp_path: Path, vllm_server: str, tiny_model: Path) -> None:
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    config = demo_config(tmp_path, crawl, vllm_server, tiny_model)
    files = sorted(SAMPLE_DIR.iterdir())
    with dagster_dev(tmp_path, config) as dev, dg.DagsterInstance.from_config(str(dev.home)) as instance:
        for batch, file in enumerate(files[:2], start=1):  # one batch at a time
            dropped = time.time()
            shutil.copy(file, crawl)
            dev.wait(lambda n=batch: len(instance.get_dynamic_partitions(crawl_batches.name)) == n, 120, "the batch")
            dev.wait_idle(instance, dropped, timeout=900)
            assert instance.get_latest_materialization_event(dg.AssetKey("report")), "the chain reached no report"
        before = materializations(instance)
        store = ShardStore(load_settings(config).storage.root)
        evaluated = read_history(store, RESULTS).get_column("checkpoint").n_unique()

        dropped = time.time()
        shutil.copy(files[2], crawl)  # one new WARC file
        dev.wait(lambda: len(instance.get_dynamic_partitions(crawl_batches.name)) == 3, 120, "the new batch")
        dev.wait_idle(instance, dropped, timeout=600)
        after = materializations(instance)
        keys = instance.get_dynamic_partitions(crawl_batches.name)
        new = keys[-1]

        added = after - before
        assert {asset for asset, partition in added if partition is not None} == set(PER_BATCH)
        assert {partition for _, partition in added if partition is not None} == {new}
        assert {asset for asset, partition in added if partition is None} == set(EACH_BATCH)
        assert all(count == 1 for count in added.values()), added  # one retraining, one evaluation, ...
        assert read_history(store, RESULTS).get_column("checkpoint").n_unique() == evaluated + 1

        # Nothing fresh ran again: every batch's stages ran once, the models once, the rest per batch.
        assert all(after[asset, key] == 1 for asset in PER_BATCH for key in keys)
        assert all(after[asset, None] == 1 for asset in ONCE)
        assert all(after[asset, None] == len(keys) for asset in EACH_BATCH)
        runs = instance.get_run_records()
        assert runs and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert {r.dagster_run.tags.get("dagster/sensor_name") for r in runs} == {"automation_sensor"}

        defs = build_definitions(load_settings(config))
        graph = defs.resolve_asset_graph()
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        for key in graph.get_all_asset_keys():
            for partition in keys if graph.get(key).is_partitioned else [None]:
                if key.to_user_string() in KEPT_MODELS:  # the UI calls them stale, by new data only
                    causes = resolver.get_stale_causes(key, partition)
                    assert all(c.category == StaleCauseCategory.DATA for c in causes), (key, causes)
                    continue
                assert resolver.get_status(key, partition) == StaleStatus.FRESH, (key, partition)
