"""The teacher's features at three stages, whatever the classifier: ``TappedTeacher``.

The graph losses read a teacher's features at three stages, matched to the student's three stages
by spatial order. Forward hooks on three of its modules (``taps``) collect their outputs during an
ordinary forward pass; the third is average pooled, as the student's third stage is. A TorchScript
module takes no Python hooks, so its forward is replayed as the chain of its children, Sequential
containers opened (checked against its own output on a batch by ``foreign``). By default the taps
are the modules that end the last three resolution stages (for each spatial size, the latest of
the shallowest modules producing it), e.g. ``layer2, layer3, layer4`` of a ResNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import TeacherError


@dataclass(frozen=True)
class Preprocessing:
    """How the teacher wants its input: square size, and mean and std on [0, 1] pixels."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def describe(self) -> dict[str, Any]:
        return {"input_size": self.size, "mean": list(self.mean), "std": list(self.std)}


class TappedTeacher(nn.Module):
    """A classifier with ``forward_with_features(x) -> (logits, [tap1, tap2, tap3 pooled])``, fed
    the data's normalised batches and preprocessing them as the teacher expects."""

    channels_last_on_cpu = False

    def __init__(self, model: nn.Module, taps: list[str], preprocessing: Preprocessing, data_mean, data_std,
                 replay: bool = False) -> None:
        super().__init__()
        self.model = model
        self.taps = list(taps)
        self.preprocessing = preprocessing
        self.replay = replay
        self.register_buffer("data_mean", torch.tensor(data_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("data_std", torch.tensor(data_std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("mean", torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std, dtype=torch.float32).view(1, -1, 1, 1))
        self._captured: dict[str, Tensor] = {}
        if not replay:
            modules = dict(model.named_modules())
            for name in self.taps:
                modules[name].register_forward_hook(self._capture(name))

    def _capture(self, name: str):
        def hook(module, inputs, output):
            self._captured[name] = output

        return hook

    def prepare(self, x: Tensor) -> Tensor:
        """The data's normalised batch as the teacher expects it."""
        pixels = x.float() * self.data_std + self.data_mean
        size = self.preprocessing.size
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (pixels - self.mean) / self.std

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.prepare(x)
        if self.replay:
            logits, features = replay_chain(self.model, x, self.taps)
        else:
            self._captured.clear()
            logits = self.model(x)
            features = [self._captured[name] for name in self.taps]
        features = list(features)
        last = features[-1]
        features[-1] = last.mean(dim=(2, 3)) if last.dim() == 4 else last.flatten(1)
        return logits, features

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.prepare(x))


def replay_chain(model: nn.Module, x: Tensor, taps: list[str]) -> tuple[Tensor, list[Tensor]]:
    """Run ``model`` as the chain of its children (flattening before the first linear layer,
    descending into Sequential containers), keeping the outputs of ``taps``."""
    features = {}
    for name, _, x in _chain(model, x):
        if name in taps:
            features[name] = x
    return x, [features[name] for name in taps]


def _is_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) or getattr(module, "original_name", "") == "Sequential"


def _chain(model: nn.Module, x: Tensor, prefix: str = ""):
    """(name, module, output) for each child of ``model`` run in order, a Sequential's own children
    first and then the Sequential itself (its output is its last child's)."""
    for name, child in model.named_children():
        if x.dim() > 2 and _is_linear(child):
            x = torch.flatten(x, 1)
        if _is_sequential(child) and not _is_linear(child):
            for inner in _chain(child, x, f"{prefix}{name}."):
                yield inner
                x = inner[2]
        else:
            x = child(x)
        yield f"{prefix}{name}", child, x


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    original = getattr(module, "original_name", "")  # a TorchScript module keeps its class name here
    if original == "Linear":
        return True
    if original in ("Sequential",) or isinstance(module, nn.Sequential):
        first = next(iter(module.children()), None)
        return first is not None and _is_linear(first)
    return False


# -- finding the taps -------------------------------------------------------------------------------------

GLOBAL_POOLS = {"AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "SelectAdaptivePool2d"}
"""Modules whose 1 x 1 output is the head's pooling, not a stage (timm's SelectAdaptivePool2d included)."""


def _is_global_pool(module: nn.Module) -> bool:
    return getattr(module, "original_name", type(module).__name__) in GLOBAL_POOLS  # original_name: TorchScript's


def module_outputs(model: nn.Module, x: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, output shape) of every module whose output is a 4-D tensor, in execution order
    (global pooling left out)."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name or _is_global_pool(module):
            continue

        def hook(module, inputs, output, name=name):
            if isinstance(output, Tensor) and output.dim() == 4:
                seen.append((name, tuple(output.shape)))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def chain_outputs(model: nn.Module, x: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """As ``module_outputs`` for a module run as the chain of its children (TorchScript)."""
    seen = []
    with torch.no_grad():
        for name, child, out in _chain(model, x):
            if _is_global_pool(child):  # on the chain, the head starts here (a block's own pooling is inside the block)
                break
            if out.dim() == 4:
                seen.append((name, tuple(out.shape)))
    return seen


def default_taps(outputs: list[tuple[str, tuple[int, ...]]]) -> list[str]:
    """The modules ending the last three resolution stages: for each spatial size, the last of the
    shallowest modules that output it; the last three sizes. A 1 x 1 size is a stage only when the
    main path reaches it (a ResNet-18's layer4 on 32 px images), not when only modules nested
    deeper than the stages output it (squeeze-and-excitation convolutions)."""
    by_size: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    for order, (name, shape) in enumerate(outputs):
        by_size.setdefault(tuple(shape[-2:]), []).append((name.count("."), order, name))
    stages = []
    for size, candidates in by_size.items():
        depth = min(d for d, _, _ in candidates)
        order, name = max((o, n) for d, o, n in candidates if d == depth)
        stages.append((order, name, depth, size))
    main_depth = max((depth for _, _, depth, size in stages if size[0] * size[1] > 1), default=0)
    stages = sorted((order, name) for order, name, depth, size in stages if size[0] * size[1] > 1 or depth <= main_depth)
    return [name for _, name in stages[-3:]]


def choose_taps(model: nn.Module, x: Tensor, named: str | None, replay: bool) -> list[str]:
    outputs = chain_outputs(model, x) if replay else module_outputs(model, x)
    names = [name for name, _ in outputs]
    if named:
        taps = [t.strip() for t in named.split(",") if t.strip()]
        unknown = [t for t in taps if t not in names]
        if len(taps) != 3 or unknown:
            what = f"{unknown[0]!r} is not a module with a feature-map output" if unknown else "three taps are needed"
            raise TeacherError(f"--teacher-taps: {what}; the teacher's candidates are {', '.join(_shown(outputs))}")
        order = {name: i for i, name in enumerate(names)}
        return sorted(taps, key=order.__getitem__)
    taps = default_taps(outputs)
    if len(taps) < 3:
        raise TeacherError(f"cannot find three resolution stages in the teacher (its feature-map outputs: "
                           f"{', '.join(_shown(outputs)) or 'none'}): pass --teacher-taps A,B,C")
    return taps


def _shown(outputs: list[tuple[str, tuple[int, ...]]], limit: int = 30) -> list[str]:
    """The ``limit`` shallowest candidates (the stages before their blocks' insides), in execution order."""
    keep = sorted(sorted(range(len(outputs)), key=lambda i: (outputs[i][0].count("."), i))[:limit])
    shown = [f"{outputs[i][0]} ({outputs[i][1][-2]}x{outputs[i][1][-1]})" for i in keep]
    return shown + ([f"... {len(outputs) - limit} more"] if len(outputs) > limit else [])


# -- loading what the user has ---------------------------------------------------------------------------
