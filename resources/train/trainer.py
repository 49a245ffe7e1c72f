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
- **Continual pre-training.** `RunSpec.continue_from` loads another run's weights (and, on request, its
  optimizer) into a fresh run: the step counter starts at 0, so the LR warms up again (re-warming
  ends better than keeping the decayed LR), and replay comes from a source over the old shards
  (`resources.train.data.with_replay`). Each manifest lists every shard of the whole lineage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaConfig, LlamaForCausalLM

from resources.train.checkpoints import (
    STATE_FILE,
    check_resumable,
    check_same_shape,
    clean_partial,
    copy_tokenizer,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    parent_lineage,
    plot_losses,
    read_manifest,
    resolve_checkpoint,
    save_checkpoint,
)
from resources.train.config import RunSpec, TrainConfig, run_record
from resources.train.data import TokenSource, TrainData
from resources.train.distributed import Placement
from resources.train.presets import build_model, flops_per_token, model_config, total_params
from resources.train.throughput import Throughput, default_peak_flops

log = logging.getLogger(__name__)

# What `lr_at` reads, saved in the trainer state.
SCHEDULE_SETTINGS = {"schedule", "lr", "min_lr_ratio", "warmup_steps", "max_steps", "decay_fraction"}


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


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (norm gains are not decayed), fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda")


def train(
    config: TrainConfig,
    spec: RunSpec,
    sources: Sequence[TokenSource],
    progress: Callable[[dict[str, float]], None] | None = None,
    cooldown_sources: Sequence[TokenSource] | None = None,
) -> TrainResult:
    """Train (or resume, or continue) a model on the given token sources; see the module docstring.

    `progress` is called on rank 0 every `log_every` steps with step, loss, lr, tokens_seen and
    tokens_per_s (the Dagster asset logs them). Raises `DataError` for unusable data (empty, or ids
    outside the vocabulary) before a model is built, `CheckpointError` for an unusable `continue_from`
    or a resume with another model shape, and `NonFiniteLossError` when training diverges.
    """
    placement = Placement.setup(config.device)
    run: _Run | None = None
    try:
        run = _Run(config, spec, sources, progress, placement, cooldown_sources)
        return run.execute()
    finally:
        if run is not None:
            run.forward_model = None  # DDP's reducer must go before its process group, or its destructor may hang
        placement.teardown()


class _Run:
    """The state of one `train` call: built, optionally restored, stepped, saved."""

    def __init__(
        self,
        config: TrainConfig,
        spec: RunSpec,
        sources: Sequence[TokenSource],
        progress: Callable[[dict[str, float]], None] | None,
        placement: Placement,
        cooldown_sources: Sequence[TokenSource] | None = None,
    ) -> None:
        self.config, self.spec, self.progress, self.dist = config, spec, progress, placement
        self.data = TrainData(sources, config.seq_len, config.micro_batch_size, seed=config.seed, rank=self.dist.rank)
        self.data.validate(spec.vocab_size)
        # MeCo: metadata-conditioned for most of the run, plain text for the final cool-down. Batches
        # stay a pure function of the step, so resume is unaffected.
        self.cooldown_start = config.max_steps - round(config.cooldown_fraction * config.max_steps)
        self.cooldown = None
        if cooldown_sources and self.cooldown_start < config.max_steps:
            self.cooldown = TrainData(
                cooldown_sources, config.seq_len, config.micro_batch_size, seed=config.seed, rank=self.dist.rank
            )
        self.run_dir = Path(spec.out_dir)
        device = self.dist.device
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        self.model_config: LlamaConfig = model_config(
            config.preset,
            spec.vocab_size,
            config.seq_len,
            dtype=torch.bfloat16 if self.bf16 else torch.float32,
            bos_token_id=spec.bos_token_id,
            eos_token_id=spec.eos_token_id,
        )
        self.tokens_per_step = config.micro_batch_size * config.seq_len * config.grad_accum_steps * self.dist.world
        self.throughput = Throughput(
            self.tokens_per_step,
            flops_per_token(self.model_config, config.seq_len),
            config.peak_flops or default_peak_flops(device, self.bf16),
            self.dist.world,
        )
        self.step = 0
        self.tokens_seen = 0  # counted, not derived from the step: a resume may change the batch or world size
        self.losses: list[float] = []
        self.pending: list[torch.Tensor] = []  # per step [loss, grad_norm], still on the device
        self.last_checkpoint: Path | None = None
        self.resumed_from: Path | None = None
        self.lineage: dict[str, Any] = {"continued_from": None, "parent_trained_on": [], "parent_tokens": 0}
        self.forward_model: torch.nn.Module | None = None  # the model as called: compiled and/or DDP-wrapped

    def _build(self) -> dict[str, Any] | None:
        """Model and optimizer, restored from a checkpoint of this run or a parent run. Returns the
        trainer state being resumed, if any."""
        config, spec, device = self.config, self.spec, self.dist.device
        torch.manual_seed(config.seed)
        self.model: LlamaForCausalLM = build_model(self.model_config)
        resume = None
        if self.dist.rank == 0:  # rank 0 cleans partial saves and picks the checkpoint every rank resumes
            clean_partial(self.run_dir)
            resume = latest_checkpoint(self.run_dir)
        resume = self.dist.from_rank0(resume)
        state: dict[str, Any] | None = None
        if resume is not None:
            state = load_trainer_state(resume)
            check_resumable(state, run_record(config, spec), self.data.describe(), self.dist.world, self.run_dir)
            load_weights(self.model, resume)
            self.resumed_from = self.last_checkpoint = resume
            self.step, self.losses, self.tokens_seen = state["step"], list(state["loss_history"]), state["tokens_seen"]
            self.lineage = state["lineage"]
            log.info("resuming %s from %s (step %d)", self.run_dir, resume, self.step)
        elif spec.continue_from:
            parent = resolve_checkpoint(spec.continue_from)
            check_same_shape(self.model_config, parent)
            load_weights(self.model, parent)
            self.lineage = parent_lineage(parent)
            log.info("continual pre-training from %s: LR warms up again over %d steps", parent, config.warmup_steps)
        self.model.to(device).train()
        self.optimizer = build_optimizer(self.model, config, device)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["cpu"])
            if device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        elif spec.continue_from and config.load_optimizer:
            self.optimizer.load_state_dict(load_trainer_state(resolve_checkpoint(spec.continue_from))["optimizer"])
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.forward_model = torch.compile(self.model) if config.compile else self.model
        if self.dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)
        return state

    def execute(self) -> TrainResult:
        config = self.config
        state = self._build()
        if state is not None and self.step >= config.max_steps:
            log.info("%s already trained to step %d", self.run_dir, self.step)
            return self._result(read_manifest(self.last_checkpoint)["metrics"])
        first = self.step
        self.throughput.restart(first)
        while self.step < config.max_steps:
            self._train_step()
            if self.step == first + 1 < config.max_steps:
                # The first step pays for compilation and allocator warm-up: not part of the rate.
                self.pending[-1].tolist()
                self.throughput.restart(self.step)
            at_checkpoint = self.step % config.checkpoint_every == 0 or self.step == config.max_steps
            if at_checkpoint or self.step % config.log_every == 0:
                self._flush()
            if at_checkpoint:
                self._save()
                self.throughput.restart(self.step)  # the save is not part of the rate either
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
        values = self.dist.mean(torch.stack(self.pending))
        self.pending.clear()
        rows = values.cpu().tolist()  # waits for the device: the time since the mark is all compute
        self.throughput.measure(self.step)
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
                    "tokens_per_s": self.throughput.tokens_per_s,
                }
            )

    def _metrics(self) -> dict[str, Any]:
        return {
            "loss": self.losses[-1],
            **self.throughput.metrics(),
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
        """Rank 0 writes (atomically, see resources.train.checkpoints); the others wait for it in the
        broadcast of its path."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NonFiniteLossError(self.step, "the weights became non-finite", self.last_checkpoint)
        if self.dist.rank == 0:
            self.last_checkpoint = save_checkpoint(self.run_dir, self.step, self._write_files, self._manifest())
            log.info("saved %s (loss %.4f)", self.last_checkpoint, self.losses[-1])
        self.last_checkpoint = self.dist.from_rank0(self.last_checkpoint)

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
                "vocab_size": self.spec.vocab_size,
                "seq_len": self.config.seq_len,
            },
            "config": run_record(self.config, self.spec),
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
            "schedule": self.config.model_dump(include=SCHEDULE_SETTINGS),
            "rng": rng,
            "data": {
                "seed": self.config.seed,
                "next_step": self.step,
                "world_size": self.dist.world,
                "sources": self.data.describe(),
            },
            "loss_history": list(self.losses),
            "tokens_seen": self.tokens_seen,
            "config": run_record(self.config, self.spec),
            "lineage": self.lineage,
        }
        torch.save(state, directory / STATE_FILE)
        plot_losses(self.losses, directory, f"{self.config.preset} · {self.run_dir.name}")
        if self.spec.tokenizer_path:
            copy_tokenizer(self.spec.tokenizer_path, directory)
