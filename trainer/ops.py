"""Counting a model's operations: thop's multiply-accumulates, cross-checked with torch.

thop (ultralytics-thop) counts MACs, which thop and most NAS papers call "FLOPs"; budgets are
compared with this number. ``flops`` is torch's FlopCounterMode count (2 x MACs for convolutions
and matrix products, BatchNorm and element-wise ops ignored), logged beside it. The students this
package builds hold no matrix product outside their Conv2d and Linear layers, so their FLOPs are
counted from those layers' shapes (the same number, tested; FlopCounterMode's first use in a
process imports TorchDynamo, ~2.5 s).
"""

from __future__ import annotations

import copy
import logging
import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import Tuple, Union

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


SMALL_MODEL_PARAMS = 2_000_000
"""Below this, counting on the CPU (one real batch-1 pass, ~50 ms) beats the meta device (~250 ms:
its BatchNorm runs through Python decompositions); above it, building the model costs more."""


Resolution = Union[int, Tuple[int, int]]
"""An input size: (height, width) in pixels, or one number for a square image."""


def input_hw(resolution: Resolution) -> tuple[int, int]:
    """(height, width) of ``resolution``: every cost is counted at the data's real shape."""
    if isinstance(resolution, int):
        return resolution, resolution
    height, width = resolution
    return int(height), int(width)


def count_spec_ops(spec: ModelSpec, resolution: Resolution) -> OpsCount:
    """``count_ops`` for a spec at an input of ``resolution`` (height, width), memoised (specs are hashable)."""
    return _count_spec_ops(spec, input_hw(resolution))


@lru_cache(maxsize=4096)
def _count_spec_ops(spec: ModelSpec, hw: tuple[int, int]) -> OpsCount:
    return _count(_model_to_measure(spec), (spec.in_channels, *hw), layer_flops=True)


def _model_to_measure(spec: ModelSpec) -> nn.Module:
    """``spec`` built on the CPU if small (``SMALL_MODEL_PARAMS``), else on the meta device (shapes
    only; its BatchNorm runs through Python decompositions, whose first use imports TorchDynamo)."""
    with torch.device("meta"):
        model = build_model(spec)
    if sum(p.numel() for p in model.parameters()) <= SMALL_MODEL_PARAMS:
        with torch.device("cpu"):
            model = build_model(spec)
    return model.eval()


def count_teacher_ops(model: nn.Module, input_shape: tuple[int, int, int]) -> OpsCount:
    """A foreign teacher's count, through its own preprocessing (so at its own input size). A
    TorchScript teacher takes no hooks, so thop cannot count it: its MACs are then half of torch's
    FlopCounterMode count (which counts a multiply-accumulate of a convolution or linear layer as
    two FLOPs; other operations add nothing)."""
    try:
        return count_ops(model, input_shape)
    except Exception:  # noqa: BLE001 - TorchScript inside, or a module the meta device cannot run
        x = torch.zeros(1, *input_shape)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
        flops = int(counter.get_total_flops())
        return OpsCount(macs=flops // 2, flops=flops, params=sum(p.numel() for p in model.parameters()))


def _count(probe: nn.Module, input_shape: tuple[int, int, int], layer_flops: bool = False) -> OpsCount:
    """thop's MACs and the FLOPs: FlopCounterMode's, or with ``layer_flops`` those of the Conv2d
    and Linear layers (for models whose every matrix product is one of them)."""
    import thop  # imported here: ~0.3 s on first import

    probe.eval()
    x = torch.zeros(1, *input_shape, device=next(probe.parameters()).device)
    with torch.no_grad():
        if layer_flops:
            with _ConvLinearFlops(probe) as counter:
                macs, _ = thop.profile(probe, inputs=(x,), verbose=False)
            flops = counter.flops
        else:
            macs, _ = thop.profile(probe, inputs=(x,), verbose=False)
            with FlopCounterMode(display=False) as torch_counter:
                probe(x)
            flops = torch_counter.get_total_flops()
    params = sum(p.numel() for p in probe.parameters())
    return OpsCount(macs=int(macs), flops=int(flops), params=int(params))


class _ConvLinearFlops:
    """FLOPs of a forward pass's Conv2d and Linear layers, as FlopCounterMode counts them: two per
    multiply-accumulate, biases not counted."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.flops, self.handles = model, 0, []

    def __enter__(self) -> "_ConvLinearFlops":
        for module in self.model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self.handles.append(module.register_forward_hook(self._hook))
        return self

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        self.flops += 2 * output.numel() * per_output

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


# -- peak activation memory ---------------------------------------------------------------------------

# Operations that write no new buffer at deployment: BatchNorm is folded into the convolution
# before it, activations run fused or in place, and reshapes are views.
_ALIAS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Flatten)
_ALIAS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.flatten}
_ALIAS_METHODS = {"relu", "relu_", "view", "reshape", "flatten"}
_ADD = {operator.add, operator.iadd, torch.add}

BYTES_PER_ACTIVATION = 4
"""Activations are counted as fp32 (4 bytes), the precision of the trained and exported model;
an int8 deployment needs a quarter of it."""


def peak_activation_bytes(spec: ModelSpec, resolution: Resolution, bytes_per_element: int = BYTES_PER_ACTIVATION) -> int:
    """Peak bytes of activations alive at once in a batch-1 forward pass (as MCUNet and uNAS count).

    The forward pass is traced (torch.fx) and walked in execution order. At every operation that
    writes a new buffer, the live set is its output plus every buffer produced earlier and read at
    or after it (its inputs, and tensors kept for a later residual addition); the peak is the
    largest such sum. The input image counts; weights (flash) do not. BatchNorm, activations and
    reshapes write no buffer of their own (folded, fused or views), and a residual addition writes
    in place into an operand that is not read again.
    """
    return _peak_activation_elements(spec, input_hw(resolution)) * bytes_per_element


@lru_cache(maxsize=4096)
def _peak_activation_elements(spec: ModelSpec, hw: tuple[int, int]) -> int:
    """The liveness walk of ``peak_activation_bytes``, in elements (every precision scales it alike)."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    model = _model_to_measure(spec)
    graph = symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(graph).propagate(torch.zeros(1, spec.in_channels, *hw, device=next(model.parameters()).device))
    nodes = [n for n in graph.graph.nodes]
    index = {node: i for i, node in enumerate(nodes)}
    modules = dict(graph.named_modules())

    def aliases_input(node) -> bool:
        if node.op == "call_module":
            return isinstance(modules[node.target], _ALIAS_MODULES)
        if node.op == "call_function":
            return node.target in _ALIAS_FUNCTIONS
        return node.op == "call_method" and node.target in _ALIAS_METHODS

    buffer: dict = {}  # node -> the node whose buffer holds its value
    for node in nodes:
        if node.op == "output":
            continue
        inputs = node.all_input_nodes
        buffer[node] = buffer[inputs[0]] if inputs and aliases_input(node) else node
    last_use = {b: index[b] for b in set(buffer.values())}
    for node in nodes:
        for source in node.all_input_nodes:
            last_use[buffer[source]] = max(last_use[buffer[source]], index[node])
    for node in nodes:  # residual additions write into an operand that dies there
        if node.op == "call_function" and node.target in _ADD and buffer[node] is node:
            dying = [buffer[s] for s in node.all_input_nodes if last_use[buffer[s]] == index[node]]
            if dying:
                target = dying[0]
                for other, holder in buffer.items():
                    if holder is node:
                        buffer[other] = target
                last_use[target] = max(last_use[target], last_use.pop(node))

    def size(node) -> int:
        meta = node.meta.get("tensor_meta")
        return int(meta.shape.numel()) if meta is not None else 0

    sizes = {b: size(b) for b in last_use}
    peak = 0
    for node in nodes:
        if buffer.get(node) is node:  # this operation writes a new buffer
            i = index[node]
            peak = max(peak, sum(sizes[b] for b, end in last_use.items() if index[b] <= i <= end))
    return peak


# -- a microcontroller's units: flash and SRAM of the int8 model -----------------------------------------

INT8_BIAS_BYTES = 4
"""Biases of an int8 model are int32 (TFLite's fully-integer scheme): 4 bytes each."""


@lru_cache(maxsize=4096)
def int8_flash_bytes(spec: ModelSpec) -> int:
    """Bytes of the model's constants in a fully-integer (int8) deployment, as flash holds them.

    Every convolution's and linear layer's weights at one byte each, and one int32 bias per
    output channel (BatchNorm is folded into the convolution before it, which gives every
    convolution a bias). Not counted: per-channel quantization scales and zero points (a few bytes
    per channel), the model file's own structure (a ``.tflite`` file adds its flatbuffer headers
    and operator list; the exported file's size is reported beside this count), and the
    interpreter's code.
    """
    with torch.device("meta"):
        model = build_model(spec)
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            total += module.weight.numel() + INT8_BIAS_BYTES * module.weight.shape[0]
    return int(total)


def int8_sram_bytes(spec: ModelSpec, resolution: Resolution) -> int:
    """Peak bytes of int8 activations alive at once in a batch-1 forward pass (the input and the
    output included): ``peak_activation_bytes`` at one byte per element. TFLite Micro's tensor
    arena adds scratch buffers of some kernels and alignment padding, which are not counted."""
    return peak_activation_bytes(spec, resolution, 1)
