"""Several training processes (started by ``torchrun``: WORLD_SIZE and RANK set) with
PyTorch DDP: the process group, and the sums and barriers the run needs."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        created = True
    return Dist(dist.get_rank(), dist.get_world_size(), created)


def all_sum(values: list[float], dist_ctx: Dist) -> list[float]:
    if dist_ctx.world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(dist_ctx: Dist) -> None:
    if dist_ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


def teardown(dist_ctx: Dist) -> None:
    """Leave the process group this process created."""
    if dist_ctx.created:
        import torch.distributed as dist

        dist.destroy_process_group()
