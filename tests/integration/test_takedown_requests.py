"""Takedown requests against real materializations of the shipped sample (ingest and filter): bad
request files change nothing but are counted, the inbox sensor records a dropped file once, and a
request makes exactly the crawl batch holding its URL stale."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets.filter import FILTERED
from definitions import build_definitions
from resources.cli import main
from resources.common.catalog import LineageCatalog
from resources.common.storage import ShardStore
from resources.lineage.requests import TAKEDOWNS
from resources.settings import Settings
from tests.automation_driver import materialize, needs_run, new_batches, tick_sensor
from tests.conftest import chain_settings


@pytest.fixture
def filtered(tmp_path: Path, crawl_dir: Path, instance: dg.DagsterInstance) -> tuple[Settings, dg.Definitions, Path]:
    settings = chain_settings(
        tmp_path, crawl_dir, source={"files_per_partition": 1}, takedown={"inbox": str(tmp_path / "inbox")}
    )
    defs = build_definitions(settings)
    for key in new_batches(tick_sensor(defs, instance)):
        materialize(defs, instance, ["raw_documents", FILTERED], key)
    config = tmp_path / "settings.yaml"
    config.write_text(json.dumps(settings.model_dump()))
    return settings, defs, config


def submit(config: Path, lines: bytes, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    path = config.parent / "urls.txt"
    path.write_bytes(lines)
    capsys.readouterr()
    assert main(["--config", str(config), "takedown", "--urls", str(path), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def stale(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    return [k for k in instance.get_dynamic_partitions("crawl_batches") if needs_run(defs, instance, FILTERED, k)]


def test_bad_and_repeated_requests_are_counted_and_change_nothing(
    filtered: tuple[Settings, dg.Definitions, Path], instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, defs, config = filtered
    catalog = LineageCatalog(settings.catalog.path)
    documents = catalog.query("SELECT count(*) AS n FROM documents").item()
    lines = b"\n".join(
        [
            b"not a url",
            b"",
            b"h" * (10 * 1024 * 1024),
            b"\xff\xfe",
            b"../../../etc/passwd",
            b"https://nowhere.example/never-crawled",
            b"https://evil.example/x');DROP_TABLE_documents;--",
            b"https://nowhere.example/never-crawled",
        ]
    )
    first = submit(config, lines, capsys, "--reason", "a URL in no batch")
    assert first["recorded"] and first["patterns"] == 2
    assert first["documents"] == 0 and first["crawl_batches"] == []
    assert first["refused"] == {"not_a_url": 2, "empty": 1, "too_long": 1, "undecodable": 1, "repeated": 1}
    cursor = tick_sensor(defs, instance, name="takedown_sensor").cursor
    assert stale(defs, instance) == []

    again = submit(config, lines, capsys, "--reason", "the same again")
    assert not again["recorded"] and again["already_requested"] == {first["request_id"]: [
        "https://nowhere.example/never-crawled", "https://evil.example/x');DROP_TABLE_documents;--"]}  # fmt: skip
    assert tick_sensor(defs, instance, cursor=cursor, name="takedown_sensor").asset_events == []
    assert stale(defs, instance) == []

    store = ShardStore(settings.storage.root)
    (record,) = store.fs.ls(store.path(TAKEDOWNS), detail=False)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{12}\.json", Path(record).name)
    assert catalog.query("SELECT count(*) AS n FROM documents").item() == documents
    assert catalog.query("SELECT count(*) AS n FROM takedowns").item() == 1


def test_a_file_dropped_in_the_inbox_is_recorded_once_and_stales_its_batch_only(
    filtered: tuple[Settings, dg.Definitions, Path], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    settings, defs, _ = filtered
    catalog = LineageCatalog(settings.catalog.path)
    batch = instance.get_dynamic_partitions("crawl_batches")[0]
    url = catalog.query(
        "SELECT url FROM documents WHERE asset = ? AND crawl_batch = ? ORDER BY doc_id LIMIT 1", [FILTERED, batch]
    ).item()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bogus.txt").write_text(f"# match: everything\n{url}\n")
    (inbox / "request-1.txt").write_text(f"# reason: owner asked\n# requested_by: legal\n{url}\n")
    tick = tick_sensor(defs, instance, name="takedown_sensor")
    (request,) = catalog.query("SELECT request_id, reason, requested_by, source FROM takedowns").rows()
    assert request[1:] == ("owner asked", "legal", "inbox:request-1.txt")
    assert stale(defs, instance) == [batch]

    shutil.copy(inbox / "request-1.txt", inbox / "request-1-copy.txt")
    for cursor in (tick.cursor, None):  # also after a cursor reset: the records in storage decide
        tick_sensor(defs, instance, cursor=cursor, name="takedown_sensor")
        assert catalog.query("SELECT count(*) FROM takedowns").item() == 1

    materialize(defs, instance, [FILTERED], batch)
    removed = catalog.query("SELECT url, rule, detail FROM removed WHERE stage = 'takedown'").rows()
    assert removed == [(url, "takedown_url", f"{request[0]} url")]
    assert stale(defs, instance) == []
