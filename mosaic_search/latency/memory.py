"""What a profile run needs in memory, estimated from the config before anything is allocated, against what the
device has: a run that cannot fit is refused in one line (exit 2) instead of being killed by the kernel or failing
in a raw allocation error minutes later."""

from __future__ import annotations

import os

from ..errors import UsageError

GIB = 1024 ** 3


def weight_bytes(dims, dtype_bytes: int) -> int:
    """The decoder's weights (attention, MLP, embeddings and head) in bytes: a lower bound on the whole model's
    (a VLM's vision tower is left out)."""
    attention = 2 * dims.hidden_size * dims.num_heads * dims.head_dim + 2 * dims.hidden_size * dims.kv_dim
    mlp = 3 * dims.hidden_size * dims.intermediate_size
    return (dims.num_layers * (attention + mlp) + 2 * dims.vocab_size * dims.hidden_size) * dtype_bytes


def workload_bytes(dims, workload, dtype_bytes: int) -> int:
    """A lower bound on what one workload adds: a prefill's hidden states and one layer's widest intermediate (the
    MLP's, or the query projection's) for every token; a decode step's full-attention cache over every layer."""
    tokens = workload.batch_size * workload.seq_len
    if workload.phase == "prefill":
        widest = max(2 * dims.intermediate_size, dims.num_heads * dims.head_dim + 2 * dims.kv_dim)
        return tokens * (2 * dims.hidden_size + widest) * dtype_bytes
    return tokens * 2 * dims.kv_dim * dims.num_layers * dtype_bytes


def available_bytes(device: str) -> int | None:
    """Memory a run can take on `device`: free memory of a CUDA device, the host's available memory (Linux
    /proc/meminfo MemAvailable) for cpu; None where it cannot be read."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(dims, workloads, dtype_bytes: int, copies: int, device: str, available: int | None = None) -> None:
    """Refuse (UsageError, exit 2) a profile whose lower-bound need exceeds what `device` has: `copies` models of
    `dims` (the timed one, and a paired timer's untouched reference) plus its largest workload. The message names the
    need, its parts and the limit."""
    available = available_bytes(device) if available is None else available
    if available is None:
        return
    weights = copies * weight_bytes(dims, dtype_bytes)
    largest = max(workloads, key=lambda w: workload_bytes(dims, w, dtype_bytes))
    need = weights + workload_bytes(dims, largest, dtype_bytes)
    if need > available:
        copies_text = f"{copies} copies of the model" if copies > 1 else "the model"
        advice = ("the model alone does not fit: profile on a device with more memory" if weights > available else
                  "profile shorter or fewer workloads (--workload), or on a device with more memory")
        raise UsageError(f"profiling needs at least {need / GIB:.1f} GiB ({copies_text}: {weights / GIB:.1f} GiB; "
                         f"workload {largest.name}: {(need - weights) / GIB:.1f} GiB) but {device} has "
                         f"{available / GIB:.1f} GiB available; {advice}")
