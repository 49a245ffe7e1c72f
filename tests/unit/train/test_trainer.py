"""The training engine on CPU: tiny model, synthetic token shards, real subprocesses for kill/resume
and for two-process DDP over gloo."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from resources.train.checkpoints import (
    MODEL_FILE,
    PLOT_FILE,
    STATE_FILE,
    CheckpointError,
    latest_checkpoint,
    load_trainer_state,
    read_manifest,
)
from resources.train.config import RunSpec, TrainConfig
from resources.train.data import DataError, TokenFile, TokenSource, TrainData, with_replay
from resources.train.presets import PRESETS, flop_params, model_config, total_params
from resources.train.trainer import NonFiniteLossError, lr_at, train

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "train_ddp.py"
VOCAB = 256


def pattern_tokens(n: int, low: int = 0, high: int = VOCAB, seed: int = 0) -> np.ndarray:
    """A learnable stream: one random 48-token motif repeated, so the loss visibly falls."""
    motif = np.random.default_rng(seed).integers(low, high, size=48)
    return np.resize(motif, n).astype(np.uint16)


def write_tokens(path: Path, tokens: np.ndarray, dtype: str = "uint16") -> TokenFile:
    tokens.astype(dtype).tofile(path)
    return TokenFile(str(path), dtype, data_version=f"v-{path.stem}")


def source(tmp_path: Path, name: str = "web", n: int = 20_000, **kwargs) -> TokenSource:
    return TokenSource(name, [write_tokens(tmp_path / f"{name}.bin", pattern_tokens(n, **kwargs))])


def config(out_dir: Path, **overrides) -> tuple[TrainConfig, RunSpec]:
    """A tiny run's settings and spec; each override goes to the one of the two that has the field."""
    spec = {"out_dir": str(out_dir), "vocab_size": VOCAB}
    settings = {
        "preset": "tiny",
        "seq_len": 32,
        "micro_batch_size": 4,
        "max_steps": 6,
        "warmup_steps": 2,
        "lr": 3e-3,
        "checkpoint_every": 3,
        "log_every": 1,
    }
    for key, value in overrides.items():
        (spec if key in RunSpec.__dataclass_fields__ else settings)[key] = value
    return TrainConfig(**settings), RunSpec(**spec)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / MODEL_FILE)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# -- model presets and schedule -----------------------------------------------------------


def test_presets_have_vllm_compatible_shapes() -> None:
    assert all(p.head_dim >= 64 for p in PRESETS.values())
    sizes = {}
    for name in PRESETS:
        cfg = model_config(name, 50_304, 1024)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        sizes[name] = sum(p.numel() for p in model.parameters())
        assert sizes[name] == total_params(cfg) and flop_params(cfg) <= sizes[name]
        assert cfg.architectures == ["LlamaForCausalLM"] and cfg.max_position_embeddings >= 1024
    assert 120e6 < sizes["small"] < 130e6 and 1.0e9 < sizes["1b"] < 1.3e9
    assert model_config("tiny", VOCAB, 32).head_dim == 64
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("huge", VOCAB, 32)


def test_lr_schedules_warm_up_then_decay() -> None:
    cosine = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    assert [lr_at(s, cosine) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(60, cosine) == pytest.approx(0.55) and lr_at(109, cosine) == pytest.approx(0.1, abs=1e-3)
    wsd = cosine.model_copy(update={"schedule": "wsd", "decay_fraction": 0.2, "max_steps": 100})
    assert lr_at(50, wsd) == lr_at(79, wsd) == 1.0  # stable until the last 20% of the steps
    assert lr_at(80, wsd) < 1.0 and lr_at(99, wsd) == pytest.approx(0.1)


# -- data ---------------------------------------------------------------------------------


def test_batches_follow_mixture_weights_and_are_a_function_of_seed_and_step(tmp_path: Path) -> None:
    low = source(tmp_path, "low", low=0, high=100)
    high = source(tmp_path, "high", low=100, high=200)
    data = TrainData([replace(low, weight=1.0), replace(high, weight=3.0)], seq_len=16, micro_batch_size=400)
    rows = data.batch(step=5)
    assert rows.shape == (400, 17) and rows.dtype == np.int64
    from_high = (rows.min(axis=1) >= 100).mean()
    assert 0.68 < from_high < 0.82  # 0.75 expected
    assert np.array_equal(rows, data.batch(step=5))
    assert not np.array_equal(rows, data.batch(step=6))
    assert not np.array_equal(rows, data.batch(step=5, micro_step=1))
    other_rank = TrainData([low, high], seq_len=16, micro_batch_size=400, rank=1)
    assert not np.array_equal(TrainData([low, high], 16, 400).batch(5), other_rank.batch(5))


def write_sharded_docs(tmp_path: Path, eos: int = 0) -> tuple[Path, Path, list[tuple[str, int, int, str]]]:
    """Documents of 20-60 tokens with EOS between them; every third one is held out and filled
    with token 255, which must then never be sampled."""
    rng = np.random.default_rng(1)
    tokens, rows = [], []
    offset = 0
    for i in range(300):
        split = "valid" if i % 3 == 2 else "train"
        length = int(rng.integers(20, 60))
        doc = np.full(length, 255) if split == "valid" else rng.integers(1, 250, size=length)
        rows.append((f"d{i}", offset, length, split))
        tokens.extend([*doc.tolist(), eos])
        offset += length + 1
    path = tmp_path / "shard.bin"
    np.asarray(tokens, dtype=np.uint16).tofile(path)
    index = tmp_path / "shard.index.parquet"
    names = ["doc_id", "offset", "length", "split"]
    pq.write_table(pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}), index)
    return path, index, rows


def test_index_spans_keep_held_out_documents_out_and_separators_in(tmp_path: Path) -> None:
    path, index, rows = write_sharded_docs(tmp_path)
    file = TokenFile.from_index(path, index, dtype="uint16", data_version="v7")
    data = TrainData([TokenSource("web", [file])], seq_len=128, micro_batch_size=64)
    windows = np.concatenate([data.batch(step) for step in range(20)])
    assert not (windows == 255).any(), "a held-out document leaked into training"
    # Windows of 129 tokens over documents of 20-60 always cross a document boundary, also where a
    # held-out document was cut out between two train ones: there must always be an EOS.
    assert ((windows == 0).sum(axis=1) >= 2).all()
    described = data.describe()[0]["files"][0]
    assert described["data_version"] == "v7"
    assert described["train_tokens"] == sum(length + 1 for _, _, length, split in rows if split == "train")


def test_with_replay_rescales_new_sources(tmp_path: Path) -> None:
    new = [replace(source(tmp_path, "a"), weight=2.0), replace(source(tmp_path, "b"), weight=6.0)]
    old = source(tmp_path, "old").files
    mixed = with_replay(new, old, 0.2)
    assert [(s.name, s.weight) for s in mixed] == [
        ("a", pytest.approx(0.2)),
        ("b", pytest.approx(0.6)),
        ("replay", 0.2),
    ]
    with pytest.raises(ValueError, match="replay fraction"):
        with_replay(new, old, 1.0)


# -- bad inputs ---------------------------------------------------------------------------


def test_no_training_tokens_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    short = write_tokens(tmp_path / "short.bin", pattern_tokens(10))
    valid_only = TokenFile(str(short.path), spans=np.zeros((0, 2), np.int64))
    cases = {
        "no source": [],
        "zero weight": [replace(source(tmp_path), weight=0.0)],
        "empty file": [TokenSource("e", [TokenFile(str(empty))])],
        "shorter than a window": [TokenSource("s", [short])],
        "no train split": [TokenSource("v", [valid_only])],
        "no files": [TokenSource("n", [])],
    }
    for name, sources in cases.items():
        with pytest.raises(DataError, match="no training tokens"):
            train(*config(tmp_path / "out"), sources)
        assert not (tmp_path / "out").exists(), name
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="not a whole number of uint16 tokens"):
        train(*config(tmp_path / "out"), [TokenSource("o", [TokenFile(str(odd))])])


def test_token_ids_beyond_the_vocabulary_fail_before_training(tmp_path: Path) -> None:
    bad = write_tokens(tmp_path / "wide.bin", pattern_tokens(5_000, high=300), dtype="uint32")
    with pytest.raises(DataError, match=r"vocabulary mismatch: .*wide.bin.* token id 29\d.*vocab_size is 256"):
        train(*config(tmp_path / "out"), [TokenSource("wide", [bad])])
    assert not (tmp_path / "out").exists()


# -- training, checkpoints, resume --------------------------------------------------------


def test_train_writes_checkpoints_that_transformers_loads(tmp_path: Path) -> None:
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "tokenizer.json").write_text("{}")
    reports: list[dict[str, float]] = []
    cfg = config(tmp_path / "run", tokenizer_path=str(tokenizer_dir), eos_token_id=0)
    result = train(*cfg, [source(tmp_path)], progress=reports.append)

    assert result.step == 6 and len(result.loss_curve) == 6 and [r["step"] for r in reports] == [1, 2, 3, 4, 5, 6]
    assert result.loss_curve[0] == pytest.approx(math.log(VOCAB), rel=0.1)
    assert result.final_loss < result.loss_curve[0] - 1.0
    assert result.tokens_seen == 6 * 4 * 32 and result.tokens_per_s > 0 and 0 < result.mfu < 1
    assert [p.name for p in sorted((tmp_path / "run").iterdir())] == ["step-000003", "step-000006"]
    assert result.checkpoint == tmp_path / "run" / "step-000006"

    ckpt = result.checkpoint
    assert (ckpt / PLOT_FILE).read_bytes()[:4] == b"\x89PNG" and (ckpt / "tokenizer.json").exists()
    manifest = read_manifest(ckpt)
    assert manifest["trained_on"] == [{"path": str(tmp_path / "web.bin"), "data_version": "v-web"}]
    assert manifest["tokens_seen"] == result.tokens_seen and manifest["metrics"]["loss"] == result.final_loss
    state = load_trainer_state(ckpt)
    assert state["step"] == 6 and state["loss_history"] == result.loss_curve and state["data"]["next_step"] == 6
    assert set(state) >= {"optimizer", "schedule", "rng"}

    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["dtype"] == "float32"
    assert saved["head_dim"] == 64 and saved["max_position_embeddings"] >= 32 and saved["vocab_size"] == VOCAB
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert torch.equal(model.model.embed_tokens.weight, weights(ckpt)["model.embed_tokens.weight"])
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, VOCAB) and torch.isfinite(logits).all()

    # Rerunning a finished run is a no-op that reports the same result.
    again = train(*cfg, [source(tmp_path)])
    assert again.checkpoint == ckpt and again.loss_curve == result.loss_curve and again.resumed_from == ckpt


@pytest.fixture
def one_thread():
    """Same intra-op thread count in this process and its children (one thread: fast on a busy
    machine, and bit-exact comparisons across processes need equal thread counts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_script(spec: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(spec)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def write_spec(path: Path, cfg: tuple[TrainConfig, RunSpec], sources: list[TokenSource]) -> Path:
    spec = {
        "config": cfg[0].model_dump(),
        "run": asdict(cfg[1]),
        "sources": [
            {
                "name": s.name,
                "weight": s.weight,
                "files": [{"path": f.path, "dtype": f.dtype, "data_version": f.data_version} for f in s.files],
            }
            for s in sources
        ],
    }
    path.write_text(json.dumps(spec))
    return path


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path: Path, one_thread: None) -> None:
    sources = [source(tmp_path, "web"), replace(source(tmp_path, "code", seed=3), weight=0.5)]
    killed_dir = tmp_path / "killed"
    settings, run = config(killed_dir, max_steps=24, checkpoint_every=8, log_every=4, warmup_steps=4)
    spec = write_spec(tmp_path / "spec.json", (settings, run), sources)

    process = run_script(spec)
    deadline = time.monotonic() + 120
    while not (killed_dir / "step-000008").exists():  # the directory appears complete (atomic rename)
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / "step-000024").exists(), "the run finished before it could be killed"
    killed_at = latest_checkpoint(killed_dir)

    resumed = run_script(spec)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert Path(result["resumed_from"]) == killed_at

    reference = train(settings, replace(run, out_dir=str(tmp_path / "reference")), sources)
    assert result["loss_curve"] == reference.loss_curve  # bit-exact, every step
    assert_same_weights(Path(result["checkpoint"]), reference.checkpoint)
    ref_state = load_trainer_state(reference.checkpoint)["optimizer"]["state"]
    got_state = load_trainer_state(Path(result["checkpoint"]))["optimizer"]["state"]
    assert all(torch.equal(ref_state[k]["exp_avg_sq"], got_state[k]["exp_avg_sq"]) for k in ref_state)


def test_a_damaged_latest_checkpoint_is_skipped_and_training_redone(tmp_path: Path, caplog) -> None:
    sources = [source(tmp_path)]
    reference = train(*config(tmp_path / "reference"), sources)
    run_dir = tmp_path / "run"
    train(*config(run_dir), sources)  # checkpoints at steps 3 and 6
    damaged = run_dir / "step-000006" / MODEL_FILE
    damaged.write_bytes(damaged.read_bytes()[:1000])

    with caplog.at_level(logging.WARNING):
        result = train(*config(run_dir), sources)
    assert "ignoring checkpoint" in caplog.text and "truncated" in caplog.text
    assert result.resumed_from == run_dir / "step-000003"
    assert result.loss_curve == reference.loss_curve
    assert_same_weights(result.checkpoint, reference.checkpoint)
    assert len([p for p in run_dir.iterdir() if p.name.startswith(".invalid-step-000006")]) == 1


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    sources = [source(tmp_path)]
    run_dir = tmp_path / "run"
    train(*config(run_dir, max_steps=4, checkpoint_every=2), sources)
    good = latest_checkpoint(run_dir)
    with pytest.raises(NonFiniteLossError, match=r"step [56].*last good checkpoint is .*step-000004") as caught:
        train(*config(run_dir, max_steps=8, checkpoint_every=2, lr=float("inf")), sources)
    assert caught.value.last_checkpoint == good
    assert sorted(p.name for p in run_dir.iterdir()) == ["step-000002", "step-000004"]
    assert latest_checkpoint(run_dir) == good


def test_resume_refuses_another_model_shape(tmp_path: Path) -> None:
    sources = [source(tmp_path)]
    train(*config(tmp_path / "run", max_steps=2), sources)
    with pytest.raises(CheckpointError, match="another seq_len"):
        train(*config(tmp_path / "run", max_steps=4, seq_len=64), sources)


def test_continue_from_rewarms_the_lr_and_replays_old_data(tmp_path: Path) -> None:
    old = source(tmp_path, "old")
    parent = train(*config(tmp_path / "parent", max_steps=6), [old])
    new = source(tmp_path, "new", n=30_000)  # a new shard of similar text
    reports: list[dict[str, float]] = []
    settings, run = config(
        tmp_path / "child", max_steps=4, checkpoint_every=4, warmup_steps=4, continue_from=str(parent.checkpoint)
    )
    child = train(settings, run, with_replay([new], old.files, 0.25), progress=reports.append)

    assert [r["lr"] for r in reports] == pytest.approx([settings.lr * k / 4 for k in (1, 2, 3, 4)])  # warmup again
    assert child.loss_curve[0] < parent.loss_curve[0] - 0.5, "the parent's weights were not loaded"
    manifest = read_manifest(child.checkpoint)
    assert manifest["continued_from"] == {"path": str(parent.checkpoint), "step": 6}
    assert [(d["source"], d["weight"]) for d in manifest["data"]] == [("new", 0.75), ("replay", 0.25)]
    assert manifest["trained_on"] == [
        {"path": str(tmp_path / "old.bin"), "data_version": "v-old"},
        {"path": str(tmp_path / "new.bin"), "data_version": "v-new"},
    ]
    assert manifest["total_tokens_seen"] == parent.tokens_seen + child.tokens_seen
    assert load_trainer_state(child.checkpoint)["optimizer"]["state"][0]["step"] == 4  # fresh AdamW

    with pytest.raises(CheckpointError, match="another model shape"):
        train(settings, replace(run, out_dir=str(tmp_path / "wide"), vocab_size=512), [new])


def test_two_processes_train_data_parallel_over_gloo(tmp_path: Path) -> None:
    cfg = config(tmp_path / "ddp", max_steps=4, checkpoint_every=4, grad_accum_steps=2, device="cpu")
    spec = write_spec(tmp_path / "spec.json", cfg, [source(tmp_path)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    done = subprocess.run([*command, str(spec)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["step-000004"]  # rank 0 wrote it once
    manifest = read_manifest(tmp_path / "ddp" / "step-000004")
    assert manifest["metrics"]["world_size"] == 2
    assert manifest["tokens_seen"] == 2 * 2 * 4 * 4 * 32  # ranks x accumulation x steps x batch x seq_len
    assert result["final_loss"] < result["loss_curve"][0]
    assert (tmp_path / "ddp" / "step-000004" / STATE_FILE).exists()
