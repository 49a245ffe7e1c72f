"""AdamW and its learning-rate schedule. The LR is a pure function of the step, so a resumed run
needs nothing but the step counter to continue the schedule exactly."""

from __future__ import annotations

import math

import torch

from resources.train.config import TrainConfig


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


def schedule_state(config: TrainConfig) -> dict[str, object]:
    """The settings `lr_at` reads, as saved in the trainer state."""
    return config.model_dump(include={"schedule", "lr", "min_lr_ratio", "warmup_steps", "max_steps", "decay_fraction"})


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (norm gains are not decayed), fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda")
