"""Checkpoint directories: atomic writes, verification, history, and damaged checkpoints skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resources.train.checkpoints import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    read_manifest,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def writer(step: int):
    """Stand-in for the trainer's files: weights, state and config, distinct per step."""

    def write(directory: Path) -> None:
        save_file({"w": torch.full((64, 64), float(step))}, directory / MODEL_FILE)
        torch.save({"step": step, "loss_history": [1.0] * step}, directory / STATE_FILE)
        (directory / "config.json").write_text(json.dumps({"step": step}))

    return write


def save(run_dir: Path, step: int) -> Path:
    return save_checkpoint(run_dir, step, writer(step), {"trained_on": [{"path": "a.bin", "data_version": "v1"}]})


def test_save_writes_a_verified_history(tmp_path: Path) -> None:
    first, second = save(tmp_path, 100), save(tmp_path, 200)
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step-000100", "step-000200"]
    assert verify_checkpoint(first) is None and verify_checkpoint(second) is None
    manifest = read_manifest(second)
    assert manifest["step"] == 200 and manifest["trained_on"] == [{"path": "a.bin", "data_version": "v1"}]
    assert set(manifest["files"]) == {MODEL_FILE, STATE_FILE, "config.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert load_trainer_state(second)["step"] == 200
    assert latest_checkpoint(tmp_path) == second
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory is left"


def test_checkpoints_are_never_overwritten(tmp_path: Path) -> None:
    path = save(tmp_path, 100)
    before = read_manifest(path)
    with pytest.raises(CheckpointError, match="never overwritten"):
        save_checkpoint(tmp_path, 100, writer(7), {})
    assert read_manifest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["step-000100"]


def test_a_failed_write_publishes_nothing(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        writer(100)(directory)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 100, broken, {})
    assert list(tmp_path.iterdir()) == []


def truncate_weights(path: Path) -> None:
    data = (path / MODEL_FILE).read_bytes()
    (path / MODEL_FILE).write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray((path / STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / STATE_FILE).write_bytes(bytes(data))


DAMAGE = {
    "truncated_safetensors": truncate_weights,
    "missing_trainer_state": lambda p: (p / STATE_FILE).unlink(),
    "missing_manifest": lambda p: (p / MANIFEST_FILE).unlink(),
    "garbage_manifest": lambda p: (p / MANIFEST_FILE).write_text("{not json"),
    "bit_flip": flip_a_byte,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_is_skipped_with_a_warning(tmp_path: Path, damage: str, caplog) -> None:
    good, bad = save(tmp_path, 100), save(tmp_path, 200)
    DAMAGE[damage](bad)
    with caplog.at_level(logging.WARNING, logger="resources.train.checkpoints"):
        assert latest_checkpoint(tmp_path) == good
    assert "ignoring checkpoint" in caplog.text and "step-000200" in caplog.text
    with pytest.raises(CheckpointError):  # named explicitly (continue_from), a damaged one is an error
        resolve_checkpoint(bad)
    assert resolve_checkpoint(tmp_path) == good


def test_a_damaged_step_dir_is_moved_aside_when_the_step_is_saved_again(tmp_path: Path) -> None:
    path = save(tmp_path, 100)
    truncate_weights(path)
    again = save(tmp_path, 100)
    assert again == path and verify_checkpoint(again) is None
    assert [p.name.startswith(".invalid-step-000100") for p in tmp_path.iterdir()].count(True) == 1


def test_partial_saves_are_cleaned_and_never_read(tmp_path: Path) -> None:
    good = save(tmp_path, 100)
    partial = tmp_path / ".tmp-step-000200-deadbeef"
    partial.mkdir()
    writer(200)(partial)  # a save killed before its manifest and rename
    assert latest_checkpoint(tmp_path) == good
    assert clean_partial(tmp_path) == [partial]
    assert not partial.exists() and good.exists()


def test_resolve_needs_a_usable_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        resolve_checkpoint(tmp_path)
    path = save(tmp_path, 100)
    assert resolve_checkpoint(path) == path
