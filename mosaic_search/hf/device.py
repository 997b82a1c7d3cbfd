"""The machine a stage runs on: the device check every stage makes, its default dtype, and the environment
fingerprint recorded in artifacts (a profile is only valid for the machine and libraries it names)."""

from __future__ import annotations

import platform
import subprocess

from ..errors import UsageError, check

# the dtypes a model directory is written in (build, distill)
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_dtype(dtype: str | None) -> str | None:
    """`dtype` if it is one of `DTYPES` (None, the device's default, passes); UsageError naming them otherwise."""
    check(dtype is None or dtype in DTYPES, "dtype", f'must be one of {", ".join(DTYPES)}, got "{dtype}"')
    return dtype


def default_dtype(device: str) -> str:
    """bfloat16 on CUDA (what the kernels and a served model use), float32 elsewhere (CPU bf16 matmuls are slow)."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def environment(device: str) -> dict:
    """The device and library fingerprint recorded in profiles (a profile is only valid for these)."""
    import importlib.metadata as md

    import torch

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    env = {"device": device, "torch": torch.__version__, "transformers": version("transformers"),
           "fla": version("flash-linear-attention") or version("fla-core"), "triton": version("triton")}
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["driver"] = _driver_version()
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def _driver_version():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_device(device: str) -> str:
    """Validate the device string against this machine (exit 2 for a device that is not present)."""
    import torch

    if device == "cpu":
        return device
    if isinstance(device, str) and device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {device} is not available on this machine (no CUDA device); use `device` cpu")
        return device
    raise UsageError(f'unknown device "{device}": use cpu or cuda')
