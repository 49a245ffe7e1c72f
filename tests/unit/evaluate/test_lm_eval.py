"""lm-evaluation-harness on local task files: a real run of the harness on the tiny model, and
every kind of bad input failing early with an error that says where the problem is."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from pydantic import ValidationError

import resources.evaluate.lm_eval_tasks as lm_eval_tasks
from resources.evaluate.lm_eval_tasks import (
    SHIPPED_TASK_DIR,
    CheckpointLoadError,
    LmEvalSettings,
    LocalTask,
    TaskDataError,
    run_lm_eval,
    shipped_tasks,
)
from resources.llm.tiny_model import build_tiny_model

needs_lm_eval = pytest.mark.skipif(find_spec("lm_eval") is None, reason="the `eval` extra is not installed")

ITEM = {"question": "What color is grass?", "choices": ["green", "purple"], "answer": 0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("lm_eval_model"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) every attempt to resolve a host or open a socket connection."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def harness_must_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be reported before lm_eval (and so the model) is loaded."""

    def fail() -> None:
        pytest.fail("lm_eval was imported before the input was checked")

    monkeypatch.setattr(lm_eval_tasks, "import_lm_eval", fail)


def write_task(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def one_task(path: Path, **task: object) -> LmEvalSettings:
    return LmEvalSettings(tasks={"probe": LocalTask(path=str(path), **task)})


@needs_lm_eval
def test_real_run_on_shipped_tasks(checkpoint: Path, no_network: list[object]) -> None:
    env_before = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}

    scores = run_lm_eval(checkpoint, LmEvalSettings(limit=8), device="cpu")

    assert set(scores) == {"everyday_facts", "simple_reasoning"} == set(shipped_tasks())
    for metrics in scores.values():
        assert metrics["n_samples"] == 8
        assert {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr"} <= set(metrics)
        for name in ("acc", "acc_norm"):
            assert isinstance(metrics[name], float)
            assert 0.0 <= metrics[name] <= 1.0
            # Accuracy over 8 items is a multiple of 1/8.
            assert (metrics[name] * 8) == pytest.approx(round(metrics[name] * 8))
        assert metrics["acc_stderr"] >= 0.0
    assert no_network == []
    assert {key: os.environ.get(key) for key in env_before} == env_before


@needs_lm_eval
def test_custom_task_with_fewshot_scores_every_item(checkpoint: Path, tmp_path: Path) -> None:
    items = [
        {"question": "What do cats say?", "choices": ["meow", "moo", "quack"], "answer": 0},
        {"question": "How many wheels does a bicycle have?", "choices": ["one", "two"], "answer": 1},
        {"question": "What is warm, the sun or the moon?", "choices": ["the moon", "the sun"], "answer": 1},
    ]
    path = write_task(tmp_path / "tiny.jsonl", [json.dumps(item) for item in items])

    scores = run_lm_eval(checkpoint, one_task(path, num_fewshot=1))

    assert scores["probe"]["n_samples"] == 3
    assert scores["probe"]["acc"] in {0.0, 1 / 3, 2 / 3, 1.0}


@needs_lm_eval
def test_fewshot_examples_never_include_the_scored_item(tmp_path: Path) -> None:
    """Examples come from the task's own file; the harness keeps the scored item out of them
    only because the config names the few-shot split."""
    import lm_eval.tasks
    import yaml

    items = [{"question": f"Question number {i}?", "choices": ["yes", "no"], "answer": 0} for i in range(2)]
    path = write_task(tmp_path / "pair.jsonl", [json.dumps(item) for item in items])
    config = lm_eval_tasks.task_config("pair", LocalTask(path=str(path), num_fewshot=1), tmp_path / "cache")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pair.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with lm_eval_tasks.offline():
        manager = lm_eval.tasks.TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
        task = manager.load(["pair"])["tasks"]["pair"]
        for doc in task.test_docs():
            context = task.fewshot_context(doc, num_fewshot=1)
            other = next(item["question"] for item in items if item["question"] != doc["question"])
            assert context.count(doc["question"]) == 1
            assert context.count(other) == 1


def test_shipped_task_files_are_valid() -> None:
    tasks = shipped_tasks()
    assert tasks, f"no task files in {SHIPPED_TASK_DIR}"
    for name, task in tasks.items():
        assert lm_eval_tasks.validate_task_file(name, Path(task.path)) >= 20


@pytest.mark.usefixtures("harness_must_not_load")
def test_missing_task_file(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(TaskDataError, match=r"task 'probe'.*file not found.*nope\.jsonl") as info:
        run_lm_eval(checkpoint, one_task(path))
    assert isinstance(info.value, ValueError)


@pytest.mark.usefixtures("harness_must_not_load")
def test_empty_task_file(checkpoint: Path, tmp_path: Path) -> None:
    path = write_task(tmp_path / "empty.jsonl", ["", "   "])
    with pytest.raises(TaskDataError, match=r"task 'probe'.*no items.*empty\.jsonl"):
        run_lm_eval(checkpoint, one_task(path))


@pytest.mark.usefixtures("harness_must_not_load")
@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"question": "unterminated', "not valid JSON"),
        ('["a", "list"]', "expected a JSON object"),
        (json.dumps({"question": "Q?", "answer": 0}), "missing choices"),
        (json.dumps({**ITEM, "question": ""}), "'question' must be a non-empty string"),
        (json.dumps({**ITEM, "choices": ["only one"]}), "at least two"),
        (json.dumps({**ITEM, "answer": 2}), "out of range for 2 choices"),
        (json.dumps({**ITEM, "answer": -1}), "out of range"),
        (json.dumps({**ITEM, "answer": True}), "must be an integer"),
        (json.dumps({**ITEM, "answer": "0"}), "must be an integer"),
    ],
)
def test_bad_item_names_file_and_line(checkpoint: Path, tmp_path: Path, bad_line: str, reason: str) -> None:
    path = write_task(tmp_path / "broken.jsonl", [json.dumps(ITEM), "", bad_line])
    with pytest.raises(TaskDataError) as info:
        run_lm_eval(checkpoint, one_task(path))
    message = str(info.value)
    assert "task 'probe'" in message
    assert f"{path}, line 3" in message
    assert reason in message


@pytest.mark.usefixtures("harness_must_not_load")
def test_checkpoint_directory_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(CheckpointLoadError, match=f"not found: {missing}") as info:
        run_lm_eval(missing, LmEvalSettings(limit=1))
    assert isinstance(info.value, ValueError)


@pytest.mark.usefixtures("harness_must_not_load")
def test_checkpoint_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointLoadError, match=f"no config.json.*{tmp_path}"):
        run_lm_eval(tmp_path, LmEvalSettings(limit=1))


@needs_lm_eval
def test_checkpoint_with_corrupt_weights(checkpoint: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(checkpoint, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointLoadError, match=f"cannot load checkpoint {broken} with the 'hf' backend"):
        run_lm_eval(broken, LmEvalSettings(limit=1))


def test_missing_harness_says_which_extra(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[eval\]"):
        run_lm_eval(checkpoint, LmEvalSettings(limit=1))


@pytest.mark.parametrize(
    "settings",
    [
        {"tasks": {}},
        {"tasks": {"has space": {"path": "x.jsonl"}}},
        {"tasks": {"glob*": {"path": "x.jsonl"}}},
        {"tasks": {"ok": {"path": "x.jsonl", "kind": "generate_until"}}},
        {"tasks": {"ok": {"path": "x.jsonl", "num_fewshot": -1}}},
        {"backend": "openai"},
        {"limit": 0},
        {"unknown_key": 1},
    ],
)
def test_settings_reject(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LmEvalSettings.model_validate(settings)


def test_relative_task_paths_resolve_from_base(tmp_path: Path) -> None:
    settings = LmEvalSettings(tasks={"probe": LocalTask(path="tasks/probe.jsonl")}).resolved(tmp_path)
    assert settings.tasks["probe"].path == str(tmp_path / "tasks" / "probe.jsonl")
