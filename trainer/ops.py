"""Counting a model's operations: thop's multiply-accumulates, cross-checked with torch.

thop (ultralytics-thop) counts MACs, which thop and most NAS papers call "FLOPs"; budgets are
compared with this number. ``flops`` is torch's FlopCounterMode count (2 x MACs for convolutions
and matrix products, BatchNorm and element-wise ops ignored), logged beside it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import ModelSpec, build_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpsCount:
    macs: int
    """Multiply-accumulates per image counted by thop (the budget's unit)."""
    flops: int
    """Floating-point operations per image counted by torch.utils.flop_counter."""
    params: int


def count_ops(model: nn.Module, input_shape: tuple[int, int, int]) -> OpsCount:
    """Count one image's MACs (thop), FLOPs (torch) and the parameter count of ``model``.

    Counts run on a copy moved to the meta device: shapes only, no arithmetic, and the caller's
    model keeps no counting buffers or hooks. ``input_shape`` is (channels, height, width).
    """
    return _count(copy.deepcopy(model).to("meta"), input_shape)


@lru_cache(maxsize=4096)
def count_spec_ops(spec: ModelSpec, resolution: int) -> OpsCount:
    """``count_ops`` for a spec at a square input resolution, memoised (specs are hashable)."""
    with torch.device("meta"):
        model = build_model(spec)
    return _count(model, (spec.in_channels, resolution, resolution))


def _count(probe: nn.Module, input_shape: tuple[int, int, int]) -> OpsCount:
    import thop  # imported here: ~0.3 s on first import

    probe.eval()
    x = torch.zeros(1, *input_shape, device="meta")
    with torch.no_grad():
        macs, _ = thop.profile(probe, inputs=(x,), verbose=False)
        with FlopCounterMode(display=False) as counter:
            probe(x)
    params = sum(p.numel() for p in probe.parameters())
    return OpsCount(macs=int(macs), flops=int(counter.get_total_flops()), params=int(params))
