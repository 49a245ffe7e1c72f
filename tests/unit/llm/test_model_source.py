"""The rewriting model's sources: the tiny model built here, a Hugging Face directory taken as it
is, and every way a directory can fail to be a model (each a clear error naming the path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from resources.llm.model import ModelPathError
from resources.llm.model_source import RewriterModelSettings, prepare_model


def test_tiny_source_builds_a_verified_model(tmp_path: Path) -> None:
    model = prepare_model(RewriterModelSettings(), tmp_path)
    assert model.path.parent == tmp_path
    assert model.metadata["source"] == "tiny" and model.metadata["model_type"] == "llama"
    assert model.metadata["parameters"] > 0 and model.metadata["vocab_size"] == 1024


def test_hf_dir_is_taken_as_it_is(tiny_model: Path, tmp_path: Path) -> None:
    model = prepare_model(RewriterModelSettings(source="hf_dir", path=str(tiny_model)), tmp_path)
    assert model.path == tiny_model and model.metadata["source_path"] == str(tiny_model)
    assert not list(tmp_path.iterdir())  # nothing built
    assert RewriterModelSettings(source="hf_dir", path=str(tiny_model)).label == tiny_model.name


def test_settings_that_name_no_model_are_refused() -> None:
    with pytest.raises(ValidationError, match="source hf_dir needs `path`"):
        RewriterModelSettings(source="hf_dir")
    with pytest.raises(ValidationError, match="takes no `path`"):
        RewriterModelSettings(source="tiny", path="/models/x")
    with pytest.raises(ValidationError, match="source"):
        RewriterModelSettings(source="somewhere")


def _copy(model: Path, target: Path) -> Path:
    shutil.copytree(model, target)
    return target


def test_directories_that_are_not_models_fail_naming_path_and_defect(tiny_model: Path, tmp_path: Path) -> None:
    def fails(path: Path, match: str) -> None:
        with pytest.raises(ModelPathError, match=match) as raised:
            prepare_model(RewriterModelSettings(source="hf_dir", path=str(path)), tmp_path / "work")
        assert str(path) in str(raised.value)

    fails(tmp_path / "nowhere", "does not exist")
    (tmp_path / "file.txt").write_text("x")
    fails(tmp_path / "file.txt", "not a directory")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", r"no config\.json")

    unknown = _copy(tiny_model, tmp_path / "unknown")
    (unknown / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    fails(unknown, "cannot load the model config")

    no_weights = _copy(tiny_model, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    fails(no_weights, "has no weights")

    garbage = _copy(tiny_model, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    fails(garbage, "not a readable safetensors file")

    wrong = _copy(tiny_model, tmp_path / "wrong_shape")  # weights of a 1-layer model under a 2-layer config
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    fails(wrong, r"lack \d+ tensors of llama: model\.layers\.2\.")

    no_tokenizer = _copy(tiny_model, tmp_path / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    fails(no_tokenizer, "no tokenizer")
