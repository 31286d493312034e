"""Device and numeric precision: one place decides CUDA vs CPU, autocast dtype and memory format."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


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


def use_channels_last(model: nn.Module, device: torch.device | str, input_shape: tuple[int, ...]) -> bool:
    """Whether to train ``model`` in the channels_last memory format on ``device``.

    On CUDA, yes (cuDNN's fast convolutions are NHWC). On the CPU, only for models that declare it
    measured faster there (``channels_last_on_cpu``: the mobile networks' trial step took 0.75-0.89x as
    long in channels_last, the residual networks' 1.10-1.23x, ``bench/channels_last.py``) and that are
    known safe: oneDNN's weight gradient of a 1x1 stride-2 convolution with fewer than 16 input channels
    crashes the process (a segmentation fault, or "double free or corruption") in channels_last at
    inputs of about 48 px and more (torch 2.14; ``tests/trainer/test_memory_format.py``). Other
    back-ends (MPS, XPU, ...) keep the default format.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not getattr(model, "channels_last_on_cpu", False):
        return False
    return not unsafe_strided_pointwise(model, input_shape)


UNSAFE_CHANNELS = 16
"""A 1x1 stride-2 convolution with fewer input channels than this ..."""
UNSAFE_RESOLUTION = 40
"""... at an input of this many pixels or more is where channels_last crashed (48 px and up, with margin)."""


def unsafe_strided_pointwise(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """The 1x1 stride-2 convolutions of ``model`` that channels_last cannot run safely on the CPU:
    fewer than 16 input channels at an input of 40 px or more. Found with one batch-1 forward pass."""
    suspects = {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)
                and module.kernel_size == (1, 1) and module.stride != (1, 1) and module.in_channels < UNSAFE_CHANNELS}
    if not suspects:
        return []
    found: list[str] = []
    hooks = [module.register_forward_pre_hook(
        lambda module, inputs, name=name: found.append(name) if max(inputs[0].shape[-2:]) >= UNSAFE_RESOLUTION else None)
        for name, module in suspects.items()]
    training = model.training
    try:
        parameter = next(model.parameters())
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return found
