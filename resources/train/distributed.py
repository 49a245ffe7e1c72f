"""Where this process trains under `torchrun`: its rank, the world size and its device, and the few
collective operations the loop needs (one process: each is a no-op)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Placement:
    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this process created the process group, so it destroys it too

    @classmethod
    def setup(cls, device_arg: str) -> Placement:
        """Rank and device from torchrun's environment; a process group is created when launched
        with more than one process and the caller has not made one (NCCL on GPU, gloo on CPU)."""
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
        return cls(rank, world, device, owns)

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def from_rank0(self, value: T) -> T:
        """Rank 0's `value` on every rank (a picklable object)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean over ranks."""
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return values
