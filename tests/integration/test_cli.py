"""The audit CLI over a catalog built by a real materialization."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from definitions import build_definitions
from resources.cli import main
from resources.settings import Settings
from tests.automation_driver import materialize, new_batches, tick_sensor


def test_audit_sql_and_rebuild(
    tmp_path: Path, settings: Settings, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    defs = build_definitions(settings)
    key = new_batches(tick_sensor(defs, instance))[0]
    materialize(defs, instance, ["raw_documents"], key)
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump()))
    url = defs.resources["catalog"].catalog().query("SELECT url FROM documents LIMIT 1").item()
    capsys.readouterr()

    assert main(["--config", str(config), "audit-url", url]) == 0
    assert key in capsys.readouterr().out
    assert main(["--config", str(config), "audit-url", "https://never.example/"]) == 1
    assert "not in any stage" in capsys.readouterr().out

    Path(settings.catalog.path).unlink()
    assert main(["--config", str(config), "rebuild-catalog"]) == 0
    assert main(["--config", str(config), "sql", "SELECT count(*) AS n FROM crawl_batches"]) == 0
    assert "│ 2 " in capsys.readouterr().out
