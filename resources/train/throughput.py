"""Training throughput and model FLOPs utilisation (MFU), measured over training steps only: the
first step (compilation, allocator warm-up) and checkpoint writes are left out of the rate."""

from __future__ import annotations

import time

import torch

# Dense bf16 peak FLOP/s per GPU (datasheets); fp32 training uses TF32 tensor cores, half of it.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
# A nominal CPU core: 2 AVX2 FMA units x 8 fp32 lanes x 2 FLOP x ~3 GHz. Only for a comparable MFU.
CPU_PEAK_PER_THREAD = 1e11


def default_peak_flops(device: torch.device, bf16: bool) -> float | None:
    if device.type == "cpu":
        return CPU_PEAK_PER_THREAD * torch.get_num_threads()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak if bf16 else peak / 2
    return None


class Throughput:
    """Measured intervals: `restart(step)` opens one, `measure(step)` (after the device has caught
    up) closes it and opens the next."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None, world: int) -> None:
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world = peak_flops, world
        self.measured_tokens, self.measured_seconds = 0, 0.0
        self.mark = (0.0, 0)  # (time, step) where the current interval started

    def restart(self, step: int) -> None:
        self.mark = (time.perf_counter(), step)

    def measure(self, step: int) -> None:
        started, steps_before = self.mark
        self.measured_seconds += time.perf_counter() - started
        self.measured_tokens += (step - steps_before) * self.tokens_per_step
        self.restart(step)

    @property
    def tokens_per_s(self) -> float:
        return self.measured_tokens / self.measured_seconds if self.measured_seconds > 0 else 0.0

    def metrics(self) -> dict[str, float | None]:
        """The rate, and MFU where the device's peak is known (None otherwise)."""
        rate = self.tokens_per_s
        mfu = self.flops_per_token * rate / (self.peak_flops * self.world) if self.peak_flops and rate else None
        return {
            "tokens_per_s": rate,
            "mfu": mfu,
            "peak_flops_per_device": self.peak_flops,
            "flops_per_token": self.flops_per_token,
        }
