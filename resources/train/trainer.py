"""Training engine: a plain PyTorch loop over a `transformers` Llama model, no Dagster.

What the loop does, nanoGPT style: AdamW (fused on CUDA, no weight decay on norms) with a warmup +
cosine or warmup-stable-decay (WSD) LR schedule computed from the step, bf16 autocast on GPU (fp32
on CPU) with fp32 master weights, PyTorch SDPA attention, optional `torch.compile`, gradient
accumulation and clipping, and data parallelism over `torchrun` (DDP: NCCL on GPU, gloo on CPU).

Why it is built this way:

- **Exact resume.** Everything that shapes the trajectory is either saved (fp32 weights, optimizer,
  torch RNG states, loss history) or a pure function of the step (LR, and the batches: see
  `resources.train.data`). A run killed at any moment restarts from its last complete checkpoint and
  reproduces an uninterrupted run bit for bit on CPU; on GPU up to the non-determinism of some CUDA
  kernels (set `torch.use_deterministic_algorithms(True)` before training to rule that out too).
- **No silent divergence.** Losses stay on the device and are read back every `log_every` steps and
  before every checkpoint (a sync per step would stall the GPU); a non-finite loss or gradient
  norm, or non-finite weights at save time, stops the run with `NonFiniteLossError` and writes
  nothing, so the last checkpoint on disk is the last good one.
- **Continual pre-training.** `continue_from` loads another run's weights (and, on request, its
  optimizer) into a fresh run: the step counter starts at 0, so the LR warms up again (re-warming
  ends better than keeping the decayed LR), and replay comes from a source over the old shards
  (`train_data.with_replay`). Each manifest lists every shard of the whole lineage.
- **Bad inputs fail first.** Empty data and token ids outside the vocabulary raise `DataError`
  before a model is built.

Checkpoint layout and atomicity: `resources.train.checkpoints`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaConfig, LlamaForCausalLM

from resources.train.checkpoints import (
    MODEL_FILE,
    PLOT_FILE,
    STATE_FILE,
    CheckpointError,
    clean_partial,
    latest_checkpoint,
    load_trainer_state,
    read_manifest,
    resolve_checkpoint,
    save_checkpoint,
)
from resources.train.data import TokenSource, TrainData
from resources.train.presets import build_model, flops_per_token, model_config, total_params

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per GPU (datasheets); fp32 training uses TF32 tensor cores, half of it.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
# A nominal CPU core: 2 AVX2 FMA units x 8 fp32 lanes x 2 FLOP x ~3 GHz. Only for a comparable MFU.
CPU_PEAK_PER_THREAD = 1e11
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Settings that only change how a run executes, not what it computes: free to differ on resume.
_EXECUTION_ONLY = {
    "out_dir",
    "device",
    "compile",
    "checkpoint_every",
    "log_every",
    "peak_flops",
    "tokenizer_path",
    "continue_from",
    "load_optimizer",
}
_MODEL_SHAPE = ("preset", "vocab_size", "seq_len")


@dataclass
class TrainConfig:
    """One training run. `out_dir` holds its checkpoint history; rerunning with the same `out_dir`
    resumes from the latest complete checkpoint (and returns at once when it is already done)."""

    out_dir: str
    vocab_size: int  # from the tokenizer; every token id in the data must be below it
    preset: str = "tiny"  # resources.train.presets.PRESETS
    seq_len: int = 256
    micro_batch_size: int = 8  # sequences per forward pass per process
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final LR as a fraction of `lr`
    warmup_steps: int = 100
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = 0.2  # WSD: the last fraction of steps decays linearly to the final LR
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still checked)
    seed: int = 0
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when there is a GPU, else cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the model (GPU; on CPU it needs a C++ toolchain)
    checkpoint_every: int = 100  # the final step is always saved too
    log_every: int = 10  # steps between loss read-backs (NaN checks, progress callbacks)
    continue_from: str | None = None  # a step dir or a run dir: continual pre-training from its weights
    load_optimizer: bool = False  # with continue_from: also take over its AdamW moments
    peak_flops: float | None = None  # per device, for MFU; default from GPU_PEAK_BF16 / CPU_PEAK_PER_THREAD
    tokenizer_path: str | None = None  # a tokenizer directory copied into every checkpoint (vLLM needs it)
    cooldown_fraction: float = 0.0  # MeCo: the last fraction of steps draws from `cooldown_sources`
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        positive = (
            "vocab_size",
            "seq_len",
            "micro_batch_size",
            "grad_accum_steps",
            "max_steps",
            "checkpoint_every",
            "log_every",
        )
        bad = [name for name in positive if getattr(self, name) < 1]
        if bad:
            raise ValueError(f"must be at least 1: {', '.join(bad)}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or not 0 < self.decay_fraction <= 1:
            raise ValueError("need warmup_steps >= 0, 0 <= min_lr_ratio <= 1 and 0 < decay_fraction <= 1")
        if self.schedule not in ("cosine", "wsd") or self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"unknown schedule {self.schedule!r} or precision {self.precision!r}")


@dataclass
class TrainResult:
    checkpoint: Path  # the final step directory
    step: int
    final_loss: float
    loss_curve: list[float]  # mean train loss of every optimizer step of this run, from step 1
    tokens_seen: int  # this run (a continued run's parents are in the manifest's total_tokens_seen)
    tokens_per_s: float  # training steps only (start-up, first step and checkpoint writes excluded)
    mfu: float | None  # None when the device's peak FLOP/s is unknown (set TrainConfig.peak_flops)
    params: int
    resumed_from: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class NonFiniteLossError(RuntimeError):
    """Training diverged; nothing was saved after the last good checkpoint."""

    def __init__(self, step: int, what: str, last_checkpoint: Path | None) -> None:
        self.step, self.last_checkpoint = step, last_checkpoint
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
        super().__init__(
            f"training stopped: {what} at step {step}; {kept}. Lower the learning rate or check the data, then "
            "rerun to resume from it."
        )


def lr_at(step: int, config: TrainConfig) -> float:
    """The LR of optimizer step `step` (0-based): linear warmup to `lr`, then either cosine decay
    to `lr * min_lr_ratio` at `max_steps`, or WSD (constant, then a linear decay over the last
    `decay_fraction` of the steps; a long stable phase can be extended or branched from)."""
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)
    decay_start = max(config.warmup_steps, config.max_steps - round(config.decay_fraction * config.max_steps))
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / max(1, config.max_steps - decay_start))
    return peak + (floor - peak) * progress


def default_peak_flops(device: torch.device, bf16: bool) -> float | None:
    if device.type == "cpu":
        return CPU_PEAK_PER_THREAD * torch.get_num_threads()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak if bf16 else peak / 2
    return None


def train(
    config: TrainConfig,
    sources: Sequence[TokenSource],
    progress: Callable[[dict[str, float]], None] | None = None,
    cooldown_sources: Sequence[TokenSource] | None = None,
) -> TrainResult:
    """Train (or resume, or continue) a model on the given token sources; see the module docstring.

    `progress` is called on rank 0 every `log_every` steps with step, loss, lr, tokens_seen and
    tokens_per_s (the Dagster asset logs them). Raises `DataError` for unusable data,
    `CheckpointError` for an unusable `continue_from` or a resume with another model shape, and
    `NonFiniteLossError` when training diverges.
    """
    placement = _Dist.setup(config.device)
    run: _Run | None = None
    try:
        run = _Run(config, sources, progress, placement, cooldown_sources)
        return run.execute()
    finally:
        if run is not None:
            run.forward_model = None  # DDP's reducer must go before its process group, or its destructor may hang
        if placement.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @classmethod
    def setup(cls, device_arg: str) -> _Dist:
        """Rank and device from torchrun's environment; a process group is created when launched
        with more than one process and the caller has not made one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device_arg == "auto":
            device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(device_arg)
            if device.type == "cuda" and device.index is None:
                device = torch.device(f"cuda:{local}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns = world > 1 and not dist.is_initialized()
        if owns:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local, device, owns)


class _Run:
    """The state of one `train` call: built, optionally restored, stepped, saved."""

    def __init__(
        self,
        config: TrainConfig,
        sources: Sequence[TokenSource],
        progress: Callable[[dict[str, float]], None] | None,
        placement: _Dist,
        cooldown_sources: Sequence[TokenSource] | None = None,
    ) -> None:
        self.config, self.progress, self.dist = config, progress, placement
        self.data = TrainData(sources, config.seq_len, config.micro_batch_size, seed=config.seed, rank=self.dist.rank)
        self.data.validate(config.vocab_size)
        # MeCo: metadata-conditioned for most of the run, plain text for the final cool-down. Batches
        # stay a pure function of the step, so resume is unaffected.
        self.cooldown_start = config.max_steps - round(config.cooldown_fraction * config.max_steps)
        self.cooldown = None
        if cooldown_sources and self.cooldown_start < config.max_steps:
            self.cooldown = TrainData(
                cooldown_sources, config.seq_len, config.micro_batch_size, seed=config.seed, rank=self.dist.rank
            )
        self.run_dir = Path(config.out_dir)
        device = self.dist.device
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        self.model_config: LlamaConfig = model_config(
            config.preset,
            config.vocab_size,
            config.seq_len,
            dtype=torch.bfloat16 if self.bf16 else torch.float32,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
        )
        self.tokens_per_step = config.micro_batch_size * config.seq_len * config.grad_accum_steps * self.dist.world
        self.flops_per_token = flops_per_token(self.model_config, config.seq_len)
        self.peak_flops = config.peak_flops or default_peak_flops(device, self.bf16)
        self.step = 0
        self.tokens_seen = 0  # counted, not derived from the step: a resume may change the batch or world size
        self.losses: list[float] = []
        self.pending: list[torch.Tensor] = []  # per step [loss, grad_norm], still on the device
        self.last_checkpoint: Path | None = None
        self.resumed_from: Path | None = None
        self.lineage: dict[str, Any] = {"continued_from": None, "parent_trained_on": [], "parent_tokens": 0}
        self.timing = {"measured_tokens": 0, "measured_seconds": 0.0}
        self.mark = (0.0, 0)  # (time, step) where the current throughput interval started
        self.forward_model: torch.nn.Module | None = None  # the model as called: compiled and/or DDP-wrapped

    # -- set-up ------------------------------------------------------------------------
    def _restore_point(self) -> Path | None:
        """Rank 0 cleans partial saves and picks the latest good checkpoint; every rank uses it."""
        choice: list[str | None] = [None]
        if self.dist.rank == 0:
            clean_partial(self.run_dir)
            latest = latest_checkpoint(self.run_dir)
            choice = [str(latest) if latest else None]
        if self.dist.world > 1:
            dist.broadcast_object_list(choice, src=0)
        return Path(choice[0]) if choice[0] else None

    def _build(self) -> dict[str, Any] | None:
        """Model and optimizer, restored from a checkpoint of this run or a parent run. Returns the
        trainer state being resumed, if any."""
        config, device = self.config, self.dist.device
        torch.manual_seed(config.seed)
        self.model: LlamaForCausalLM = build_model(self.model_config)
        resume = self._restore_point()
        state: dict[str, Any] | None = None
        if resume is not None:
            state = load_trainer_state(resume)
            self._check_resumable(state)
            _load_weights(self.model, resume)
            self.resumed_from = self.last_checkpoint = resume
            self.step, self.losses, self.tokens_seen = state["step"], list(state["loss_history"]), state["tokens_seen"]
            self.lineage = state["lineage"]
            log.info("resuming %s from %s (step %d)", self.run_dir, resume, self.step)
        elif config.continue_from:
            parent = resolve_checkpoint(config.continue_from)
            _check_same_shape(self.model_config, parent)
            _load_weights(self.model, parent)
            parent_manifest = read_manifest(parent)
            self.lineage = {
                "continued_from": {"path": str(parent), "step": parent_manifest["step"]},
                "parent_trained_on": parent_manifest["trained_on"],
                "parent_tokens": parent_manifest["total_tokens_seen"],
            }
            log.info("continual pre-training from %s: LR warms up again over %d steps", parent, config.warmup_steps)
        self.model.to(device).train()
        self.optimizer = self._optimizer()
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["cpu"])
            if device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        elif config.continue_from and config.load_optimizer:
            self.optimizer.load_state_dict(load_trainer_state(resolve_checkpoint(config.continue_from))["optimizer"])
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.forward_model = torch.compile(self.model) if config.compile else self.model
        if self.dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)
        return state

    def _optimizer(self) -> torch.optim.AdamW:
        """AdamW with decay on matrices only (norm gains are not decayed), fused kernels on CUDA."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.config.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = self.dist.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=self.config.betas, fused=fused)

    def _check_resumable(self, state: dict[str, Any]) -> None:
        saved, current = state["config"], asdict(self.config)
        shape = [k for k in _MODEL_SHAPE if saved.get(k) != current[k]]
        if shape:
            raise CheckpointError(
                f"cannot resume {self.run_dir}: its checkpoints have another {', '.join(shape)} "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in shape)}); use a new out_dir or continue_from"
            )
        changed = sorted(k for k in current if k not in _EXECUTION_ONLY and saved.get(k) != current[k])
        if state["data"]["sources"] != self.data.describe():
            changed.append("data sources")
        if state["data"]["world_size"] != self.dist.world:
            changed.append("world size")
        if changed:
            log.warning(
                "resuming %s with changed %s: the run will differ from an uninterrupted one",
                self.run_dir,
                ", ".join(changed),
            )

    # -- the loop ----------------------------------------------------------------------
    def execute(self) -> TrainResult:
        config = self.config
        state = self._build()
        if state is not None and self.step >= config.max_steps:
            log.info("%s already trained to step %d", self.run_dir, self.step)
            return self._result(read_manifest(self.last_checkpoint)["metrics"])
        first = self.step
        self.mark = (time.perf_counter(), first)
        while self.step < config.max_steps:
            self._train_step()
            if self.step == first + 1 < config.max_steps:
                # The first step pays for compilation and allocator warm-up: not part of the rate.
                self.pending[-1].tolist()
                self.mark = (time.perf_counter(), self.step)
            at_checkpoint = self.step % config.checkpoint_every == 0 or self.step == config.max_steps
            if at_checkpoint or self.step % config.log_every == 0:
                self._flush()
            if at_checkpoint:
                self._save()
                self.mark = (time.perf_counter(), self.step)  # the save is not part of the rate either
        return self._result(self._metrics())

    def _train_step(self) -> None:
        config, device = self.config, self.dist.device
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=device)
        for micro in range(config.grad_accum_steps):
            data = self.cooldown if self.cooldown is not None and self.step >= self.cooldown_start else self.data
            tokens = torch.from_numpy(data.batch(self.step, micro))
            if device.type == "cuda":
                tokens = tokens.pin_memory().to(device, non_blocking=True)
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            last = micro == config.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.forward_model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    logits = self.forward_model(input_ids=inputs, use_cache=False).logits
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
                (loss / config.grad_accum_steps).backward()
            total += loss.detach()
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending.append(torch.stack([total / config.grad_accum_steps, grad_norm.to(total.dtype)]))
        self.step += 1
        self.tokens_seen += self.tokens_per_step

    def _flush(self) -> None:
        """Read the pending losses back (averaged over ranks), stop on a non-finite one, report."""
        values = torch.stack(self.pending)
        self.pending.clear()
        if self.dist.world > 1:
            dist.all_reduce(values)
            values /= self.dist.world
        rows = values.cpu().tolist()  # waits for the device: the time since the mark is all compute
        started, steps_before = self.mark
        self.timing["measured_seconds"] += time.perf_counter() - started
        self.timing["measured_tokens"] += (self.step - steps_before) * self.tokens_per_step
        self.mark = (time.perf_counter(), self.step)
        first = self.step - len(rows) + 1
        for offset, (loss, norm) in enumerate(rows):
            if not math.isfinite(loss):
                raise NonFiniteLossError(first + offset, f"loss is {loss}", self.last_checkpoint)
            if not math.isfinite(norm):
                raise NonFiniteLossError(first + offset, f"gradient norm is {norm}", self.last_checkpoint)
        self.losses.extend(loss for loss, _ in rows)
        if self.progress is not None and self.dist.rank == 0:
            self.progress(
                {
                    "step": self.step,
                    "loss": self.losses[-1],
                    "lr": lr_at(self.step - 1, self.config),
                    "tokens_seen": self.tokens_seen,
                    "tokens_per_s": self._tokens_per_s(),
                }
            )

    # -- results and checkpoints ---------------------------------------------------------
    def _tokens_per_s(self) -> float:
        seconds = self.timing["measured_seconds"]
        return self.timing["measured_tokens"] / seconds if seconds > 0 else 0.0

    def _metrics(self) -> dict[str, Any]:
        rate = self._tokens_per_s()
        mfu = self.flops_per_token * rate / (self.peak_flops * self.dist.world) if self.peak_flops and rate else None
        return {
            "loss": self.losses[-1],
            "tokens_per_s": rate,
            "mfu": mfu,
            "peak_flops_per_device": self.peak_flops,
            "flops_per_token": self.flops_per_token,
            "world_size": self.dist.world,
            "precision": "bf16" if self.bf16 else "fp32",
            "device": str(self.dist.device),
        }

    def _result(self, metrics: dict[str, Any]) -> TrainResult:
        assert self.last_checkpoint is not None
        return TrainResult(
            checkpoint=self.last_checkpoint,
            step=self.step,
            final_loss=self.losses[-1],
            loss_curve=list(self.losses),
            tokens_seen=self.tokens_seen,
            tokens_per_s=metrics["tokens_per_s"],
            mfu=metrics["mfu"],
            params=total_params(self.model_config),
            resumed_from=self.resumed_from,
            metrics=metrics,
        )

    def _save(self) -> None:
        """Rank 0 writes (atomically, see resources.train.checkpoints); the others wait for it."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NonFiniteLossError(self.step, "the weights became non-finite", self.last_checkpoint)
        if self.dist.rank == 0:
            self.last_checkpoint = save_checkpoint(self.run_dir, self.step, self._write_files, self._manifest())
            log.info("saved %s (loss %.4f)", self.last_checkpoint, self.losses[-1])
        if self.dist.world > 1:
            dist.barrier()
            sent = [str(self.last_checkpoint)]
            dist.broadcast_object_list(sent, src=0)
            self.last_checkpoint = Path(sent[0])

    def _manifest(self) -> dict[str, Any]:
        """Everything an audit asks of a checkpoint: what it was trained on, from what, how well."""
        trained_on = list(self.lineage["parent_trained_on"])
        for source in self.data.describe():
            for f in source["files"]:
                entry = {"path": f["path"], "data_version": f["data_version"]}
                if entry not in trained_on:
                    trained_on.append(entry)
        return {
            "created_at": datetime.now(UTC).isoformat(),
            "model": {
                "architecture": "LlamaForCausalLM",
                "preset": self.config.preset,
                "params": total_params(self.model_config),
                "vocab_size": self.config.vocab_size,
                "seq_len": self.config.seq_len,
            },
            "config": asdict(self.config),
            "tokens_seen": self.tokens_seen,
            "total_tokens_seen": self.lineage["parent_tokens"] + self.tokens_seen,
            "data": self.data.describe(),
            "trained_on": trained_on,
            "continued_from": self.lineage["continued_from"],
            "metrics": self._metrics(),
            "loss_history": list(self.losses),  # the report's loss curves, without loading the trainer state
        }

    def _write_files(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        # The weights stay fp32 (exact resume); the config names the dtype to serve them in.
        config_path = directory / "config.json"
        saved = json.loads(config_path.read_text())
        saved["dtype"] = "bfloat16" if self.bf16 else "float32"
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        rng = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.dist.device) if self.dist.device.type == "cuda" else None,
        }
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "schedule": {
                k: getattr(self.config, k)
                for k in ("schedule", "lr", "min_lr_ratio", "warmup_steps", "max_steps", "decay_fraction")
            },
            "rng": rng,
            "data": {
                "seed": self.config.seed,
                "next_step": self.step,
                "world_size": self.dist.world,
                "sources": self.data.describe(),
            },
            "loss_history": list(self.losses),
            "tokens_seen": self.tokens_seen,
            "config": asdict(self.config),
            "lineage": self.lineage,
        }
        torch.save(state, directory / STATE_FILE)
        _plot_losses(self.losses, directory / PLOT_FILE, f"{self.config.preset} · {self.run_dir.name}")
        if self.config.tokenizer_path:
            for name in TOKENIZER_FILES:
                if (Path(self.config.tokenizer_path) / name).is_file():
                    shutil.copy2(Path(self.config.tokenizer_path) / name, directory / name)


def _load_weights(model: LlamaForCausalLM, checkpoint: Path) -> None:
    """Load fp32 weights exactly as saved (no dtype round trip); a tied head may be absent."""
    weights = safetensors.torch.load_file(checkpoint / MODEL_FILE)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight", "model.embed_tokens.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied or len(missing) > 1:
        raise CheckpointError(f"{checkpoint} does not fit the model: missing {missing}, unexpected {unexpected}")


def _check_same_shape(config: LlamaConfig, checkpoint: Path) -> None:
    parent = json.loads((checkpoint / "config.json").read_text())
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "tie_word_embeddings",
    )
    differ = [f"{k}: {parent.get(k)} vs {getattr(config, k)}" for k in keys if parent.get(k) != getattr(config, k)]
    if differ:
        raise CheckpointError(f"cannot continue from {checkpoint}: another model shape ({'; '.join(differ)})")


def _plot_losses(losses: list[float], path: Path, title: str) -> None:
    """The loss curve as a PNG, drawn on a bare Figure (Agg canvas, no pyplot global state)."""
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses, linewidth=1)
    axes.set(xlabel="step", ylabel="train loss", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
