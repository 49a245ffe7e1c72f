"""The UI as a new user meets it, in Debian's Chromium driven by Playwright: from an empty instance
(the crawl sensor has registered the sample's batches, automation is off), "Materialize all" with
all partitions launches a backfill that succeeds, every asset and partition is fresh afterwards,
and the report and checkpoint pages show their metadata. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.loader import LoadingContextForTest

from assets.partitions import crawl_batches
from definitions import build_definitions
from resources.settings import load_settings
from tests.conftest import SAMPLE_DIR
from tests.e2e.dagster_dev import dagster_dev, demo_config

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
UI_TIMEOUT_MS = 60_000


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_materialize_all_from_an_empty_instance(tmp_path: Path, vllm_server: str, tiny_model: Path) -> None:
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    for file in sorted(SAMPLE_DIR.iterdir())[:2]:
        shutil.copy(file, crawl)
    config = demo_config(tmp_path, crawl, vllm_server, tiny_model, automation={"enabled": False})
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with dagster_dev(tmp_path, config) as dev, dg.DagsterInstance.from_config(str(dev.home)) as instance:
        dev.wait(lambda: len(instance.get_dynamic_partitions(crawl_batches.name)) == 2, 180, "the crawl sensor")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-background-networking"]
            )
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(UI_TIMEOUT_MS)
                launch_materialize_all(page, dev.url, shots, partitions=2)
                backfill = dev.wait(lambda: instance.get_backfills(), 60, "the backfill to be created")[0]
                done = dev.wait(lambda: _finished(instance, backfill.backfill_id), 2400, "the backfill to finish")
                page.goto(f"{dev.url}/runs/b/{backfill.backfill_id}")
                page.screenshot(path=str(shots / "3-backfill.png"), full_page=True)
                assert done.status == BulkActionStatus.COMPLETED_SUCCESS, _failures(instance)

                page.goto(f"{dev.url}/assets/checkpoint")
                page.get_by_text("final_loss").first.wait_for()
                page.screenshot(path=str(shots / "4-checkpoint.png"), full_page=True)
                page.goto(f"{dev.url}/assets/report")
                page.get_by_text("[Show Markdown]").first.click()  # the report's markdown opens in a dialog
                page.get_by_role("dialog").get_by_text("Training loss").first.wait_for()
                assert page.locator("img[src^='data:image/png']").count() >= 1  # the report's plots
                page.screenshot(path=str(shots / "5-report.png"), full_page=True)
            finally:
                browser.close()

        keys = instance.get_dynamic_partitions(crawl_batches.name)
        graph = build_definitions(load_settings(config)).resolve_asset_graph()
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        for key in graph.get_all_asset_keys():
            for partition in keys if graph.get(key).is_partitioned else [None]:
                assert resolver.get_status(key, partition) == StaleStatus.FRESH, (key, partition)


def launch_materialize_all(page, url: str, shots: Path, partitions: int) -> None:
    """The asset graph, the first-run dialog dismissed, "Materialize all" -> "All" -> "Launch backfill"."""
    page.goto(f"{url}/asset-groups", wait_until="domcontentloaded")
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=15_000)
        skip.click()
    except sync_api.TimeoutError:
        pass  # the "Join the Dagster community" dialog did not show up
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("All", exact=True).first.click()
    dialog.get_by_text(f"{partitions} partitions", exact=True).wait_for()
    page.screenshot(path=str(shots / "1-launch-dialog.png"))
    dialog.get_by_role("button", name=re.compile("Launch backfill")).click()
    page.get_by_text(re.compile("backfill", re.I)).first.wait_for()
    page.screenshot(path=str(shots / "2-launched.png"))


def _finished(instance: dg.DagsterInstance, backfill_id: str):
    backfill = instance.get_backfill(backfill_id)
    return backfill if backfill and backfill.status in BULK_ACTION_TERMINAL_STATUSES else None


def _failures(instance: dg.DagsterInstance) -> list[str]:
    return [
        f"{event.dagster_event.step_key}: {event.message}"
        for record in instance.get_run_records()
        for event in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    ]
