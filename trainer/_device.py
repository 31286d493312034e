"""Device and numeric precision: one place decides CUDA vs CPU, autocast dtype and memory format."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" means bf16 autocast where the hardware runs it natively (CUDA, or a CPU with
    AVX-512-BF16/AMX), else fp16 on older GPUs and fp32 on other CPUs."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(device: torch.device) -> bool:
    """channels_last is faster on CUDA and, measured here, on CPU too (WRN-28-0.5 training with bf16
    autocast: 1167 vs 946 img/s on 2 AVX-512 cores)."""
    return True
