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


PARALLEL = ("ddp", "fsdp")


def wrap(model, world: int, parallel: str, device: str, layers=()):
    """The model as training runs it under torchrun: PyTorch DDP (a replica per process, gradients averaged), or
    FSDP2 (`fully_shard` on each of `layers`, then the root: every process holds a 1/world shard of each parameter
    and gathers a layer's whole weights only while it runs, for models that do not fit one device). Frozen models
    (a teacher) take the same FSDP2 wrapping; DDP leaves them alone. One process: the model itself."""
    if world == 1:
        return model
    if parallel == "ddp":
        if not any(p.requires_grad for p in model.parameters()):
            return model
        from torch.nn.parallel import DistributedDataParallel

        # a plan's `none` layers keep a norm that nothing reads any more: a parameter with no gradient, which DDP
        # must be told to expect
        return DistributedDataParallel(model, find_unused_parameters=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.split(":")[0], (world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(tensor) -> bool:
    """Whether a tensor is an FSDP2 shard (a DTensor)."""
    return hasattr(tensor, "full_tensor")


def whole(tensor):
    """A tensor's whole value on this process: gathered when it is an FSDP2 shard (collective: every process calls
    it in the same order), else the tensor itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(value, like):
    """`value` (a whole tensor, the same on every process) laid out as `like`: sharded the same way when `like` is
    an FSDP2 shard (collective), else `value` itself."""
    if not is_sharded(like):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements)
