"""Teachers a user already has: torchvision and timm classifiers, TorchScript files, pickled modules.

The graph losses read a teacher's features at three stages, matched to the student's three stages
by spatial order. ``TappedTeacher`` gives any classifier that interface: forward hooks on three of
its modules (``taps``) collect their outputs during an ordinary forward pass; the third is average
pooled, as the student's third stage is. A TorchScript module takes no Python hooks, so its
forward is replayed as the chain of its children, Sequential containers opened (checked against its own output on a
batch; one that is not a chain is refused with what to do).

Taps are found, or named: by default the modules that end the last three resolution stages (for
each spatial size, the latest of the shallowest modules producing it), e.g. ``layer2, layer3,
layer4`` of a ResNet, ``features.6, features.12, features.16`` of torchvision's MobileNetV3.

Preprocessing: the teacher is fed as it was trained, not as the student is. Each batch arrives
normalised with the data's mean and std at the data's resolution; the teacher undoes that, resizes
to its own input size and normalises with its own mean and std (ImageNet's for torchvision and
timm teachers unless told otherwise; timm models carry theirs). Since a search computes the
teacher's outputs once, this costs one pass of the teacher at its own size per epoch of targets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import TeacherError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("torchvision", "timm")


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

def parse_reference(reference: str) -> tuple[str, str, str | None] | None:
    """``torchvision:resnet18=weights.pt`` -> ("torchvision", "resnet18", "weights.pt"); None for other references."""
    source, colon, rest = reference.partition(":")
    if not colon or source not in SOURCES:
        return None
    name, _, weights = rest.partition("=")
    return source, name.strip(), weights.strip() or None


def build_architecture(source: str, name: str, num_classes: int) -> nn.Module:
    if source == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError:
            raise TeacherError(f"torchvision has no model {name!r}: pick one of torchvision.models.list_models()") from None
    try:
        import timm
    except ImportError:
        raise TeacherError("a timm teacher needs timm: pip install 'rkd-search[timm]'") from None
    if name not in timm.list_models():
        raise TeacherError(f"timm has no model {name!r}: pick one of timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _classes_in(state_dict: dict[str, Tensor]) -> int | None:
    """The class count a classifier's state_dict was saved with (its last 2-D weight's rows)."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None


def load_module(reference: str, trust_code: bool) -> tuple[nn.Module, str, dict[str, Any], bool]:
    """(model, display name, meta, is TorchScript) for a torchvision/timm reference, a TorchScript
    file or a pickled module. Raises ``TeacherError`` with what to do."""
    parsed = parse_reference(reference)
    if parsed is not None:
        source, name, weights = parsed
        if weights is None:
            raise TeacherError(f"--teacher {reference}: name the weights, {source}:{name}=PATH (a state_dict saved with torch.save)")
        path = Path(weights)
        if not path.is_file():
            raise TeacherError(f"teacher weights {path} do not exist: pass {source}:{name}=PATH with a saved state_dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise TeacherError(f"teacher weights {path} are not a readable state_dict ({type(error).__name__})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise TeacherError(f"teacher weights {path} are not a state_dict (a mapping of names to tensors)")
        model = build_architecture(source, name, _classes_in(state) or 1000)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            key = (missing or unexpected)[0]
            raise TeacherError(f"teacher weights {path} do not fit {source}:{name} ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected, e.g. {key!r}): pass the architecture they were saved from")
        return model.eval(), f"{source}:{name}", {"source": source, "architecture": name, "weights": str(path.resolve())}, False
    path = Path(reference)
    if not path.is_file():
        raise TeacherError(f"teacher {reference} is not a file, an architecture, or torchvision:NAME=WEIGHTS / timm:NAME=WEIGHTS")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - TorchScript or pickled code: tried below
        stored = None
    if isinstance(stored, dict) and stored and all(isinstance(v, Tensor) for v in stored.values()):
        raise TeacherError(f"{path} is a state_dict, which needs its architecture: pass torchvision:NAME={path} "
                           f"or timm:NAME={path}")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
        return model.eval(), f"torchscript:{path.name}", {"source": "torchscript", "file": str(path.resolve())}, True
    except Exception:  # noqa: BLE001 - not TorchScript: maybe a pickled module
        pass
    if not trust_code:
        raise TeacherError(f"teacher checkpoint {path} holds pickled code; load it only if you trust it (--trust-teacher-code)")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise TeacherError(f"teacher checkpoint {path} is not a readable PyTorch file ({type(error).__name__}); re-save it") from None
    if not isinstance(model, nn.Module):
        raise TeacherError(f"{path} holds a {type(model).__name__}, not a module: save the model itself, or its state_dict "
                           "and pass torchvision:NAME=PATH")
    return model.eval(), f"module:{type(model).__name__}", {"source": "pickled module", "file": str(path.resolve())}, False


def default_preprocessing(model: nn.Module, source: str, resolution: int) -> Preprocessing:
    """A timm model's own config; ImageNet's mean and std for the other foreign teachers; the data's size."""
    config = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(config.get("mean", IMAGENET_MEAN))
    std = tuple(config.get("std", IMAGENET_STD))
    return Preprocessing(resolution, mean, std)


def parse_preprocessing(size: int | None, normalization: str | None, model: nn.Module, source: str, data) -> Preprocessing:
    """``--teacher-size`` and ``--teacher-norm imagenet|data|M1,M2,M3/S1,S2,S3`` over the defaults."""
    default = default_preprocessing(model, source, max(data.resolution))
    mean, std = default.mean, default.std
    if normalization:
        if normalization == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif normalization == "data":
            mean, std = tuple(data.mean), tuple(data.std)
        else:
            try:
                left, right = normalization.split("/")
                mean = tuple(float(v) for v in left.split(","))
                std = tuple(float(v) for v in right.split(","))
            except ValueError:
                raise TeacherError(f"--teacher-norm {normalization!r}: write imagenet, data, or MEAN,MEAN,MEAN/STD,STD,STD") from None
        if len(mean) != data.input_shape[0] or len(std) != data.input_shape[0] or min(std) <= 0:
            raise TeacherError(f"--teacher-norm {normalization!r}: give {data.input_shape[0]} means and {data.input_shape[0]} positive stds")
    if size is not None and not 8 <= size <= 1024:
        raise TeacherError(f"--teacher-size {size}: give a size in pixels between 8 and 1024")
    return Preprocessing(size or default.size, mean, std)


def foreign_teacher(reference: str, data, *, taps: str | None = None, size: int | None = None,
                    normalization: str | None = None, trust_code: bool = False) -> tuple[TappedTeacher, str, dict[str, Any]]:
    """Load what ``reference`` names, check it against ``data`` (classes, channels), find or check its
    taps: (the teacher, its display name, meta for the teacher run)."""
    model, name, meta, scripted = load_module(reference, trust_code)
    preprocessing = parse_preprocessing(size, normalization, model, meta["source"], data)
    channels = data.input_shape[0]
    probe = torch.zeros(2, channels, preprocessing.size, preprocessing.size)
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as error:
        raise TeacherError(f"teacher {name} cannot run on {channels}-channel {preprocessing.size}x{preprocessing.size} images "
                           f"({str(error).splitlines()[0][:160]}): pass a teacher made for this data, or --teacher-size") from None
    if not isinstance(logits, Tensor):
        raise TeacherError(f"teacher {name} returns a {type(logits).__name__}, not a tensor of logits: save a module whose "
                           "forward returns the logits alone, (N, classes)")
    if logits.dim() != 2 or logits.shape[1] != data.num_classes:
        found = logits.shape[1] if isinstance(logits, Tensor) and logits.dim() == 2 else "no"
        raise TeacherError(f"teacher {name} predicts {found} classes but {data.name} has {data.num_classes}; "
                           "pass a teacher trained on this dataset")
    replay = scripted
    if replay:
        replayed, _ = replay_chain(model, probe, [])
        if replayed.shape != logits.shape or not torch.allclose(replayed, logits, atol=1e-4, rtol=1e-3):
            raise TeacherError(f"TorchScript teacher {name} is not a chain of its modules, so its features cannot be read: "
                               "save the module with torch.save (--trust-teacher-code) or its state_dict (torchvision:NAME=PATH)")
    chosen = choose_taps(model, probe, taps, replay)
    meta = {**meta, "taps": ",".join(chosen), **preprocessing.describe()}
    return TappedTeacher(model, chosen, preprocessing, data.mean, data.std, replay=replay).eval(), name, meta


def adapter_digest(meta: dict[str, Any]) -> str:
    """What besides the weights changes a foreign teacher's outputs: its taps and preprocessing."""
    keys = {k: meta[k] for k in ("taps", "input_size", "mean", "std") if k in meta}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
