"""Data-parallel training of the proxies across the GPUs of one host (torchrun), or one process.

    torchrun --standalone --nproc_per_node 4 -m eval.tiny.train --device cuda ...

Why: a device machine with several GPUs trains a larger proxy within the same wall clock
(issue 9: a larger proxy must be rebuilt within two 10-minute runs). Each rank makes its own
batches (global batch index step * world + rank), DDP averages the gradients, and rank 0 alone
logs, evaluates, checkpoints and exports. Decisions taken from a clock (stop, evaluate, save)
are rank 0's, broadcast every few steps, so every rank runs the same number of steps.
Launched without torchrun (no WORLD_SIZE in the environment) this is one plain process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Ranks:
        """Join the process group torchrun set up; one process when WORLD_SIZE is unset or 1.

        `device` "cuda" becomes cuda:<LOCAL_RANK> (NCCL); on the CPU the backend is gloo."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, device)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            if torch.cuda.device_count() <= local:
                raise SystemExit(f"rank {rank}: LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible")
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
            dist.init_process_group("nccl", device_id=torch.device(device))
        else:
            dist.init_process_group("gloo")
        return cls(rank, world, device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around the model when there are several ranks (gradients averaged over ranks)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Rank 0's flags, on every rank."""
        if self.world == 1:
            return flags
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.broadcast(t, src=0)
        return tuple(bool(x) for x in t.tolist())

    def total(self, n: int) -> int:
        """Sum of an integer over ranks."""
        if self.world == 1:
            return n
        t = torch.tensor([n], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return int(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
