"""A rewriting model_path that does not exist is an error, never a random model built there:
only `rewrite.tiny_model_if_missing` (the demo's stand-in) builds one."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.llm.model import ModelPathError
from resources.llm.tiny_model import ensure_rewriting_model
from resources.settings import parse_settings


def test_missing_model_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "my-instruct-model"  # a typo, or a disk not mounted
    with pytest.raises(ModelPathError, match=f"model directory {missing} does not exist"):
        ensure_rewriting_model(missing, tiny_model_if_missing=False)
    assert not missing.exists() and not missing.parent.exists()


def test_the_demo_flag_builds_the_tiny_model(tmp_path: Path) -> None:
    built = ensure_rewriting_model(tmp_path / "tiny", tiny_model_if_missing=True)
    assert (built / "config.json").is_file()
    assert ensure_rewriting_model(built, tiny_model_if_missing=False) == built


def test_the_flag_is_off_unless_set_and_shapes_no_output() -> None:
    plain = parse_settings("rewrite: {model_path: /models/x}").rewrite
    demo = parse_settings("rewrite: {model_path: /models/x, tiny_model_if_missing: true}").rewrite
    assert plain.tiny_model_if_missing is False and demo.tiny_model_if_missing is True
    assert plain.output_shaping() == demo.output_shaping()
