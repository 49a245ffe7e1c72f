"""The pipeline's choices around a training run, without Dagster: what YAML sets, what shapes the
checkpoint, what a continued generation trains on and which generation it continues."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.common.storage import ShardStore
from resources.settings import Settings
from resources.train.data import TokenFile, TokenSource
from resources.train.generations import CHECKPOINT, generations, parent_generation, with_seen_replay


def test_yaml_sets_every_training_setting_and_speed_knobs_do_not_shape_the_checkpoint() -> None:
    loop = {"min_lr_ratio": 0.2, "weight_decay": 0.0, "betas": [0.9, 0.99], "grad_clip": 0.5, "precision": "fp32"}
    config = Settings.model_validate({"training": loop}).training
    assert (config.min_lr_ratio, config.betas, config.grad_clip, config.precision) == (0.2, (0.9, 0.99), 0.5, "fp32")
    shaping = config.output_shaping()
    assert shaping["weight_decay"] == 0.0 and shaping["cooldown_fraction"] == 0.1
    assert not {"device", "compile", "checkpoint_every", "log_every", "peak_flops"} & shaping.keys()
    faster = config.model_copy(update={"device": "cuda", "compile": True, "checkpoint_every": 7, "log_every": 1})
    assert faster.output_shaping() == shaping
    with pytest.raises(ValueError, match="out_dir"):
        Settings.model_validate({"training": {"out_dir": "runs/a"}})  # comes from the data, not from YAML


def test_a_continued_generation_trains_on_new_shards_plus_replay_of_the_seen_ones() -> None:
    crawl = TokenSource("crawl", [TokenFile("a.bin", data_version="a"), TokenFile("b.bin", data_version="b")], 0.6)
    synthetic = TokenSource("synthetic", [TokenFile("s.bin", data_version="s")], 0.4)
    mixed = with_seen_replay([crawl, synthetic], {"a", "s"}, 0.2)
    assert [(s.name, [f.path for f in s.files], s.weight) for s in mixed] == [
        ("crawl", ["b.bin"], pytest.approx(0.8)),
        ("replay", ["a.bin", "s.bin"], 0.2),
    ]
    assert with_seen_replay([crawl, synthetic], {"a", "b", "s"}, 0.2) is None  # nothing new: retrain from scratch
    fresh = with_seen_replay([crawl], set(), 0.2)  # nothing seen: no replay source
    assert [(s.name, s.weight) for s in fresh] == [("crawl", 1.0)]


def test_after_a_takedown_training_continues_from_the_last_generation_that_did_not_see_it(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path / "store"))

    def generation(run: str, step: int, day: int, versions: list[str], max_steps: int = 4) -> None:
        manifest = {
            "step": step,
            "created_at": f"2024-06-0{day}T00:00:00+00:00",
            "config": {"max_steps": max_steps},
            "trained_on": [{"path": f"/s/token_shards/b/{v}.bin", "data_version": v} for v in versions],
            "files": {},
        }
        store.write_json(store.path(CHECKPOINT, "__all__", run, f"step-{step:06d}", "manifest.json"), manifest)

    generation("run-a", 4, 1, ["v1"])
    generation("run-b", 4, 2, ["v1", "v2"])
    generation("run-c", 4, 3, ["v1", "v2", "v3"])
    generation("run-d", 2, 4, ["v4"])  # killed half-way: not a generation yet
    assert [name for name, _ in generations(store)] == ["run-a/step-000004", "run-b/step-000004", "run-c/step-000004"]

    parent, passed_over = parent_generation(store, set(), "last_clean")
    assert parent is not None and parent.path.name == "step-000004" and parent.path.parent.name == "run-c"
    assert passed_over == [] and parent.seen == {"v1", "v2", "v3"}
    parent, passed_over = parent_generation(store, {"v2"}, "last_clean")  # a takedown hit the shard version v2
    assert parent is not None and parent.path.parent.name == "run-a" and parent.seen == {"v1"}
    assert passed_over == ["run-c/step-000004", "run-b/step-000004"]
    assert parent_generation(store, {"v2"}, "scratch") == (None, ["run-c/step-000004"])
    assert parent_generation(store, {"v1"}, "last_clean")[0] is None
