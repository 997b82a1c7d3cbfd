"""torchrun support shared by the stages that scale out (score, distill): gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def session(device: str):
    """(rank, world size, this rank's device) under torchrun (gloo on CPU, nccl on GPU), else (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if created:
            dist.destroy_process_group()


def broadcast(obj, world: int):
    """`obj` from rank 0 on every rank (pickled by torch.distributed; only ever our own lists and tensors)."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    """Wait for every rank."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def mean(value: float, world: int) -> float:
    """The mean of a number over every rank."""
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    box = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(box)
    return float(box.item()) / world
