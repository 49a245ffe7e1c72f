"""MeCo: metadata prefixes are trained on for most of the run and left out in the cool-down."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import resources.train.trainer as trainer
from resources.train.config import RunSpec, TrainConfig
from resources.train.data import TokenFile, TokenSource, TrainData
from resources.train.trainer import train

PREFIX, EOS = 7, 0


def prefixed_shard(tmp_path: Path, docs: int = 40) -> tuple[Path, Path]:
    """Documents of 2 prefix tokens (id 7), 30 body tokens (ids 1-5) and an EOS, with their index."""
    rng = np.random.default_rng(0)
    tokens, rows = [], []
    for i in range(docs):
        body = rng.integers(1, 6, size=30).tolist()
        rows.append({"doc_id": f"d{i}", "offset": len(tokens), "length": 32, "split": "train", "prefix_length": 2})
        tokens += [PREFIX, PREFIX, *body, EOS]
    path = tmp_path / "tokens.bin"
    np.asarray(tokens, dtype="<u2").tofile(path)
    index = tmp_path / "index.parquet"
    pl.DataFrame(rows).write_parquet(index)
    return path, index


def test_cooldown_spans_leave_out_the_prefix(tmp_path: Path) -> None:
    path, index = prefixed_shard(tmp_path)
    plain = TokenFile.from_index(path, index, dtype="uint16", drop_prefix=True)
    full = TokenFile.from_index(path, index, dtype="uint16")
    data = TrainData([TokenSource("plain", [plain])], seq_len=16, micro_batch_size=8)
    assert not any((data.batch(step) == PREFIX).any() for step in range(20))
    with_prefix = TrainData([TokenSource("full", [full])], seq_len=16, micro_batch_size=8)
    assert any((with_prefix.batch(step) == PREFIX).any() for step in range(20))


def test_trainer_switches_to_the_cooldown_data_for_the_last_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, index = prefixed_shard(tmp_path)
    seen: list[tuple[int, bool]] = []
    original = trainer.TrainData.batch

    def recording(self: TrainData, step: int, micro_step: int = 0) -> np.ndarray:
        batch = original(self, step, micro_step)
        seen.append((step, bool((batch == PREFIX).any())))
        return batch

    monkeypatch.setattr(trainer.TrainData, "batch", recording)
    config = TrainConfig(
        seq_len=16, micro_batch_size=8, max_steps=8, lr=3e-4, warmup_steps=1, checkpoint_every=8, cooldown_fraction=0.25
    )
    train(
        config,
        RunSpec(str(tmp_path / "run"), vocab_size=16),
        [TokenSource("meco", [TokenFile.from_index(path, index, dtype="uint16")])],
        cooldown_sources=[TokenSource("plain", [TokenFile.from_index(path, index, dtype="uint16", drop_prefix=True)])],
    )
    assert all(has_prefix for step, has_prefix in seen if step < 6)
    assert not any(has_prefix for step, has_prefix in seen if step >= 6)
