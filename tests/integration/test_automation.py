"""Declarative automation against a real instance, in-process (tests/automation_driver.py runs what
the conditions request): deduplication in registration order and again when an earlier batch
changed, two batches deduplicated at once equal to one after the other, the training policy, bad
policies refused when the code location loads, and code versions that do not depend on where the
project is checked out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG
from pydantic import ValidationError

from assets.dedup import DEDUPED, EARLIER_INDEX
from assets.filter import FILTERED, QUALITY_CLASSIFIER, SCORED
from assets.tokenize import TOKENIZER
from assets.train import CHECKPOINT, CRAWL_BATCHES
from definitions import build_definitions
from jobs.automation import AUTOMATION_SENSOR
from resources.common.storage import ShardStore
from resources.filter.text_sources import read_documents
from resources.ingest.sources import BatchRegistry
from resources.settings import PROJECT_ROOT, Settings, load_settings
from resources.train.mixture import TRAINING_MIXTURE
from tests.automation_driver import Automation, materialize, needs_run, new_batches, tick_sensor
from tests.conftest import chain_settings
from tests.warc_factory import html_page, response_record, write_warc

REFERENCE = read_documents(str(PROJECT_ROOT / "data/reference/wikitext2_reference.txt"))
CRAWL = "CC-TEST-2024-01"


def article(index: int) -> list[str]:
    return [p for p in REFERENCE[index].split("\n") if len(p.split()) > 20][:6]


def near_copy(paragraphs: list[str]) -> list[str]:
    """Every 20th word replaced: a 5% edit, a near duplicate."""
    return [" ".join("zebra" if i % 20 == 19 else w for i, w in enumerate(p.split())) for p in paragraphs]


def write_batch(crawl: Path, index: int, pages: dict[str, list[str]]) -> Path:
    return write_warc(
        crawl / f"{CRAWL}-{index:05d}.warc.gz",
        [response_record(url, html_page(*paragraphs)) for url, paragraphs in pages.items()],
    )


def dedup_settings(tmp_path: Path, crawl: Path, **dedup: object) -> Settings:
    return chain_settings(tmp_path, crawl, source={"files_per_partition": 1}, dedup=dedup)


@pytest.fixture
def two_batches(tmp_path: Path) -> Path:
    """Batch 0 holds an article; batch 1 a near copy of it and an article of its own."""
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    write_batch(crawl, 0, {"https://a.example/original": article(0), "https://a.example/other": article(1)})
    write_batch(crawl, 1, {"https://b.example/near": near_copy(article(0)), "https://b.example/own": article(2)})
    return crawl


def kept_urls(store: ShardStore, batch: str) -> list[str]:
    return sorted(pl.concat(list(store.iter_frames(store.read_manifest(DEDUPED, batch), ["url"])))["url"])


def upstream_of_dedup(defs: dg.Definitions, instance: dg.DagsterInstance, batches: list[str]) -> None:
    for batch in batches:
        materialize(defs, instance, ["raw_documents", FILTERED], batch)
    materialize(defs, instance, [QUALITY_CLASSIFIER])
    for batch in batches:
        materialize(defs, instance, [SCORED], batch)


def test_dedup_runs_in_registration_order_and_again_when_an_earlier_batch_changed(
    tmp_path: Path, two_batches: Path, instance: dg.DagsterInstance
) -> None:
    settings = dedup_settings(tmp_path, two_batches)
    defs = build_definitions(settings)
    first, second = new_batches(tick_sensor(defs, instance))
    upstream_of_dedup(defs, instance, [first, second])
    automation = Automation(defs, instance, dg.AssetSelection.assets("raw_documents", FILTERED, SCORED, DEDUPED))
    runs = automation.run_until_idle()
    dedup_runs = [run for run in runs if DEDUPED in run.assets]
    assert [run.partition for run in dedup_runs] == [first, second]  # one batch at a time, in order
    store = ShardStore(settings.storage.root)
    assert "https://b.example/near" not in kept_urls(store, second)

    # Batch 0 is crawled again without the original: its documents change, and batch 1, which no
    # Dagster edge ties to it, is deduplicated again and now keeps the near copy.
    write_batch(two_batches, 0, {"https://a.example/other": article(1), "https://a.example/new": article(3)})
    materialize(defs, instance, ["raw_documents"], first)
    assert not needs_run(defs, instance, DEDUPED, second)  # Dagster alone sees nothing to do for batch 1
    reruns = [(run.assets, run.partition) for run in automation.run_until_idle()]
    assert any(DEDUPED in assets and partition == first for assets, partition in reruns)
    assert any(DEDUPED in assets and partition == second for assets, partition in reruns)
    assert "https://b.example/near" in kept_urls(store, second)
    recorded = instance.get_latest_materialization_event(dg.AssetKey(DEDUPED))
    assert EARLIER_INDEX in recorded.asset_materialization.metadata
    assert automation.run_until_idle() == []  # settled: nothing runs twice

    # A new batch goes through every stage in one run (the blocking checks ride along with their assets).
    write_batch(two_batches, 2, {"https://c.example/own": article(4)})
    (third,) = new_batches(tick_sensor(defs, instance))
    (run,) = automation.run_until_idle()
    assert run.partition == third and set(run.assets) == {"raw_documents", FILTERED, SCORED, DEDUPED}


def test_stages_after_a_failed_batch_wait_instead_of_failing(
    tmp_path: Path, two_batches: Path, instance: dg.DagsterInstance
) -> None:
    """Batch 0's crawl file is gone, so its ingest fails: the corpus-wide classifier goes on with
    batch 1, and batch 0's later stages are not launched only to fail on a missing input."""
    settings = dedup_settings(tmp_path, two_batches)
    defs = build_definitions(settings)
    first, second = new_batches(tick_sensor(defs, instance))
    Path(BatchRegistry(ShardStore(settings.storage.root)).spec(first)["files"][0]).unlink()
    selection = dg.AssetSelection.assets("raw_documents", FILTERED, QUALITY_CLASSIFIER, SCORED, DEDUPED)
    runs = Automation(defs, instance, selection).run_until_idle()
    failed = [run for run in runs if not run.success]
    assert [(run.partition, "raw_documents" in run.assets) for run in failed] == [(first, True)], runs
    assert any(run.assets == (QUALITY_CLASSIFIER,) and run.success for run in runs)
    assert any(SCORED in run.assets and run.partition == second and run.success for run in runs)


def test_a_run_awaiting_its_retry_holds_back_what_reads_every_batch(
    tmp_path: Path, two_batches: Path, instance: dg.DagsterInstance
) -> None:
    """A run whose process died is marked failed with `dagster/will_retry` and is launched again by
    run retries: until then its batch is about to be made, not failed, so the classifier (which
    reads every batch) waits for it instead of training without it."""
    settings = dedup_settings(tmp_path, two_batches)
    defs = build_definitions(settings)
    first, second = new_batches(tick_sensor(defs, instance))
    materialize(defs, instance, ["raw_documents", FILTERED], second)
    crawl_file = Path(BatchRegistry(ShardStore(settings.storage.root)).spec(first)["files"][0])
    moved = crawl_file.rename(tmp_path / crawl_file.name)
    died = dg.materialize(
        defs.assets or [],
        selection=["raw_documents", FILTERED],
        instance=instance,
        resources=defs.resources,
        partition_key=first,
        raise_on_error=False,
    )
    assert not died.success
    moved.rename(crawl_file)
    instance.add_run_tags(died.run_id, {WILL_RETRY_TAG: "true"})  # as run monitoring marks a dead worker's run
    automation = Automation(defs, instance, dg.AssetSelection.assets("raw_documents", FILTERED, QUALITY_CLASSIFIER))
    assert automation.tick() == {}  # the classifier waits; the batch is not requested twice

    retry = materialize(defs, instance, ["raw_documents", FILTERED], first)  # what run retries launches
    instance.add_run_tags(died.run_id, {AUTO_RETRY_RUN_ID_TAG: retry.run_id})
    assert automation.tick() == {None: {QUALITY_CLASSIFIER}}


DEDUP_ONE = """
import sys
import dagster as dg
from assets.dedup import DEDUPED
from definitions import build_definitions
from resources.settings import load_settings
from tests.automation_driver import materialize
config, home, batch = sys.argv[1:]
with dg.DagsterInstance.from_config(home) as instance:
    materialize(build_definitions(load_settings(config)), instance, [DEDUPED], batch)  # raises on failure
"""


def dedup_processes(config: Path, home: Path, batches: list[str], at_once: bool) -> list[int]:
    """One run of each batch's dedup, each in a process of its own as run workers are: all
    started together (later batch first), or one after the other. Their exit codes."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}

    def start(batch: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-c", DEDUP_ONE, str(config), str(home), batch]
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL)

    if at_once:
        processes = [start(batch) for batch in reversed(batches)]
        return [process.wait(timeout=600) for process in processes]
    return [start(batch).wait(timeout=600) for batch in batches]


def test_two_batches_deduplicated_at_once_equal_one_after_the_other(tmp_path: Path, two_batches: Path) -> None:
    """Launched together (later batch first), the later batch waits for the earlier one (retried)
    and both write the same bytes as a sequential run."""
    outcomes = {}
    for mode in ("concurrent", "sequential"):
        root = tmp_path / mode
        home = root / "home"
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        raw = dedup_settings(root, two_batches, wait_retries=60, wait_seconds=1).model_dump(mode="json")
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            defs = build_definitions(load_settings(config))
            batches = new_batches(tick_sensor(defs, instance))
            upstream_of_dedup(defs, instance, batches)
        assert dedup_processes(config, home, batches, at_once=mode == "concurrent") == [0, 0]
        store = ShardStore(str(root / "store"))
        outcomes[mode] = [(f.path, f.sha256) for batch in batches for f in store.read_manifest(DEDUPED, batch).files]
    assert outcomes["concurrent"] == outcomes["sequential"]


def _recorded(instance: dg.DagsterInstance, asset: str, batches: dict[str, str]) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset, metadata={CRAWL_BATCHES: dg.MetadataValue.json(batches)})
    )


def test_training_policy_every_n_new_batches(tmp_path: Path, two_batches: Path, instance: dg.DagsterInstance) -> None:
    """The checkpoint's condition against recorded materializations: retrain after N new crawl batches,
    at once when a batch it was trained on changed."""
    settings = chain_settings(
        tmp_path, two_batches, automation={"training": {"policy": "new_batches", "every_n_batches": 2}}
    )
    defs = build_definitions(settings)
    checkpoint_only = dg.AssetSelection.assets(CHECKPOINT)

    def requested() -> bool:
        result = dg.evaluate_automation_conditions(defs, instance, asset_selection=checkpoint_only)
        return result.total_requested == 1

    _recorded(instance, TOKENIZER, {})
    _recorded(instance, TRAINING_MIXTURE, {"a": "1"})
    assert requested()  # no checkpoint yet
    _recorded(instance, CHECKPOINT, {"a": "1"})
    assert not requested()
    _recorded(instance, TRAINING_MIXTURE, {"a": "1", "b": "1"})
    assert not requested()  # one new batch of two
    _recorded(instance, TRAINING_MIXTURE, {"a": "1", "b": "1", "c": "1"})
    assert requested()
    _recorded(instance, TRAINING_MIXTURE, {"a": "2"})
    assert requested()  # a batch it was trained on changed (a takedown, say)


def test_manual_policy_leaves_training_to_people(tmp_path: Path, two_batches: Path) -> None:
    settings = chain_settings(tmp_path, two_batches, automation={"training": {"policy": "manual"}})
    graph = build_definitions(settings).resolve_asset_graph()
    assert graph.get(dg.AssetKey(CHECKPOINT)).automation_condition is None
    assert graph.get(dg.AssetKey(TRAINING_MIXTURE)).automation_condition is not None


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"every_n_batches": 0}, "every_n_batches"),
        ({"every_n_batches": -3}, "every_n_batches"),
        ({"policy": "cron"}, "policy cron needs `cron`"),
        ({"policy": "cron", "cron": "every night"}, "automation.training.cron: 'every night' is not a cron"),
        ({"policy": "cron", "cron": "0 3 * *"}, "is not a cron schedule"),
        ({"policy": "weekly"}, "policy"),
    ],
)
def test_nonsense_training_policy_fails_when_the_code_location_loads(
    tmp_path: Path, training: dict, message: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"automation": {"training": training}}))
    with pytest.raises((ValidationError, ValueError), match=message):
        build_definitions(load_settings(config))


def test_automation_sensor_runs_by_default_only_when_enabled(tmp_path: Path, two_batches: Path) -> None:
    for enabled, status in [(True, dg.DefaultSensorStatus.RUNNING), (False, dg.DefaultSensorStatus.STOPPED)]:
        defs = build_definitions(chain_settings(tmp_path, two_batches, automation={"enabled": enabled}))
        sensor = defs.get_repository_def().get_sensor_def(AUTOMATION_SENSOR)
        assert sensor.default_status == status
    demo = build_definitions(load_settings(PROJECT_ROOT / "configs/demo.yaml"))
    assert demo.get_repository_def().get_sensor_def(AUTOMATION_SENSOR).default_status == dg.DefaultSensorStatus.RUNNING


def test_code_versions_do_not_depend_on_where_the_project_is(tmp_path: Path) -> None:
    """The same settings in another checkout (or behind another virtualenv path) give every asset the
    same code version, so nothing is stale after a move; the files they name count by content."""
    other = tmp_path / "checkout"
    shutil.copytree(PROJECT_ROOT / "data", other / "data")
    raw = yaml.safe_load((PROJECT_ROOT / "configs/demo.yaml").read_text())

    def versions(base: Path) -> dict[str, str | None]:
        graph = build_definitions(Settings.model_validate(raw).resolved(base)).resolve_asset_graph()
        return {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()}

    here = versions(PROJECT_ROOT)
    assert here == versions(other)
    (other / "data/eval/wikitext2_valid_small.txt").write_text("an edited eval set\n")
    changed = {name for name, version in versions(other).items() if version != here[name]}
    assert {FILTERED, "evaluation"} <= changed and "raw_documents" not in changed
    assert json.dumps(here)  # every version is a plain string
