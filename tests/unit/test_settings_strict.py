"""Settings files are read strictly: wrong types and unknown keys are errors naming the key, both
from `load_settings` and when the code location loads; nothing is coerced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resources.settings import PROJECT_ROOT, SettingsError, load_settings, parse_settings


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("training: {lr: '1e-3'}", "training.lr: Input should be a valid number (got '1e-3')"),
        ("source: {sensor_running: 'no'}", "source.sensor_running: Input should be a valid boolean (got 'no')"),
        ("source: {sensor_running: no}", "source.sensor_running: Input should be a valid boolean (got 'no')"),
        ("training: {max_steps: '300'}", "training.max_steps: Input should be a valid integer (got '300')"),
        ("training: {max_steps: 3.5}", "training.max_steps: Input should be a valid integer"),
        ("training: {bogus: 1}", "training.bogus: unknown key"),
        ("trainng: {max_steps: 1}", "trainng: unknown key"),
        ("storage: {root: [a, b]}", "storage.root: Input should be a valid string"),
        ("ingest: {extractor: lxml}", "ingest.extractor: Input should be 'resiliparse' or 'trafilatura'"),
        ("- just\n- a list", "the top level must be a mapping"),
        ("storage: {root: 'unclosed", "not valid YAML"),
    ],
)
def test_wrong_types_and_unknown_keys_are_named(text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=r"^settings\.yaml: ") as error:
        parse_settings(text, "settings.yaml")
    assert problem in str(error.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SettingsError) as error:
        parse_settings("training: {lr: 'x', bogus: 1}\nsource: {interval_seconds: 'often'}")
    assert "3 invalid setting(s)" in str(error.value)


def test_yaml_1_2_scalars() -> None:
    """`1e-3` unquoted is a float (YAML 1.1 would make it a string); `no` is a string, so the
    Norwegian language code survives."""
    settings = parse_settings("training: {lr: 1e-3, weight_decay: 0}\nfilter: {language: {languages: [en, no]}}")
    assert settings.training.lr == 0.001 and settings.training.weight_decay == 0.0
    assert settings.filter.language.languages == ["en", "no"]


def test_shipped_configs_load_strictly() -> None:
    for config in sorted((PROJECT_ROOT / "configs").glob("*.yaml")):
        if config.name != "dagster-postgres.yaml":
            load_settings(config)


def test_code_location_refuses_a_bad_config(tmp_path: Path) -> None:
    """What `dagster dev` shows when the code location loads: the file and the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: '1e-3'\n  warmup: 10\n")
    done = subprocess.run(
        [sys.executable, "-c", "import definitions"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "CRAWL2CKPT_CONFIG": str(bad)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert f"{bad}: 2 invalid setting(s)" in done.stderr
    assert "training.lr: Input should be a valid number (got '1e-3')" in done.stderr
    assert "training.warmup: unknown key" in done.stderr
