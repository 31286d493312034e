"""Teachers a user already has: torchvision and timm classifiers, TorchScript files, pickled modules.

Each is loaded (``load_module``), checked against the data (classes, channels), fed as it was
trained, and given the three-stage feature interface of the graph losses (``taps.TappedTeacher``).

Preprocessing: the teacher is fed as it was trained, not as the student is. Each batch arrives
normalised with the data's mean and std at the data's resolution; the teacher undoes that, resizes
to its own input size and normalises with its own mean and std (ImageNet's for torchvision and
timm teachers unless told otherwise; timm models carry theirs). Since a search computes the
teacher's outputs once, this costs one pass of the teacher at its own size per epoch of targets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import TeacherError
from .taps import Preprocessing, TappedTeacher, choose_taps, replay_chain

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("torchvision", "timm")


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
