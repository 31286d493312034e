"""Device and numeric precision: one place decides CUDA vs CPU, autocast dtype and memory format."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" means bf16 autocast on CUDA (fp16 on GPUs without bf16) and fp32 on the CPU.

    bf16 autocast on the CPU was measured (bench/precision.py, WRN-28-0.5 on the CIFAR-10 subset,
    2 seeds x 10 epochs, AVX-512-BF16 CPU): 1.14x faster per epoch but 2.3 points lower test
    accuracy, so it is not the default there; ask for it with precision="bf16".
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(device: torch.device) -> bool:
    """channels_last: the memory format oneDNN (CPU) and cuDNN (CUDA) convolutions prefer; other
    back-ends (MPS, XPU, ...) keep the default contiguous format."""
    return torch.device(device).type in ("cpu", "cuda")
