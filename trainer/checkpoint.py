"""Model checkpoints that load without running pickled code, the weights digest, and the teacher checks.

Kept apart from the training code so that everything reading a checkpoint (the teacher targets,
the search, the export) depends on this module alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import ImageDataset
from .files import atomic_torch_save
from .models import ModelSpec, build_model

CHECKPOINT_FORMAT = "rkd-search/model-v1"


class TeacherError(ValueError):
    """A teacher checkpoint cannot be used; the message says what to do."""


def save_checkpoint(model: nn.Module, spec: ModelSpec, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``{format, spec, state_dict, meta}``: plain tensors and primitives, loadable with weights_only."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "state_dict": state, "meta": meta or {}}, path)


def load_checkpoint(path: str | os.PathLike, *, trust_code: bool = False) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Load a model written by ``save_checkpoint``.

    Only tensors and primitives are unpickled (``weights_only=True``). A file holding a whole
    pickled module runs code when loaded: it is refused unless ``trust_code`` is set.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"teacher checkpoint {path} does not exist: pass a file written by rkd-search, or leave --teacher out to train one")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if not trust_code:
            reason = type(error).__name__
            if "Unsupported global" in str(error):
                raise TeacherError(
                    f"teacher checkpoint {path} holds pickled code; load it only if you trust it (--trust-teacher-code)"
                ) from None
            raise TeacherError(f"teacher checkpoint {path} is not a readable PyTorch file ({reason}); re-save or retrain it") from None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as second:
            raise TeacherError(f"teacher checkpoint {path} is not a readable PyTorch file ({type(second).__name__}); re-save or retrain it") from None
    if isinstance(stored, nn.Module):
        if not hasattr(stored, "forward_with_features") or not hasattr(stored, "spec"):
            raise TeacherError(f"{path} holds a module without forward_with_features/spec; save it with rkd-search's save_checkpoint")
        return stored.eval(), stored.spec, {}
    if not isinstance(stored, dict) or stored.get("format") != CHECKPOINT_FORMAT:
        raise TeacherError(f"{path} is not an rkd-search model checkpoint (no '{CHECKPOINT_FORMAT}' format key); save it with save_checkpoint")
    try:
        spec = ModelSpec.from_dict(stored["spec"])
        model = build_model(spec)
        model.load_state_dict(stored["state_dict"])
    except Exception as error:
        raise TeacherError(f"teacher checkpoint {path} does not match its own spec ({str(error).splitlines()[0][:160]})") from None
    return model.eval(), spec, dict(stored.get("meta", {}))


def is_own_checkpoint(path: str | os.PathLike, trust_code: bool = False) -> bool:
    """Whether ``path`` is a model written by rkd-search (its checkpoint format, or, with
    ``trust_code``, a pickled module of its own with ``forward_with_features`` and ``spec``).
    A missing or unreadable file counts as one, so that ``load_checkpoint`` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        return not path.suffix == ".ts"
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code, TorchScript, or not a PyTorch file at all
        if "Unsupported global" in str(error) and trust_code:
            try:
                stored = torch.load(path, map_location="cpu", weights_only=False)
            except Exception:
                return True
            return isinstance(stored, nn.Module) and hasattr(stored, "forward_with_features") and hasattr(stored, "spec")
        return not _is_torchscript(path) and "Unsupported global" not in str(error)
    if isinstance(stored, dict) and stored.get("format") == CHECKPOINT_FORMAT:
        return True
    return not (isinstance(stored, dict) and stored and all(isinstance(v, torch.Tensor) for v in stored.values()))


def _is_torchscript(path: Path) -> bool:
    try:
        torch.jit.load(str(path), map_location="cpu")
        return True
    except Exception:
        return False


def check_teacher_fits(spec: ModelSpec, data: ImageDataset, source: str) -> None:
    if spec.num_classes != data.num_classes:
        raise TeacherError(
            f"teacher {source} predicts {spec.num_classes} classes but {data.name} has {data.num_classes}; "
            "pass a teacher trained on this dataset, or leave --teacher out to train one"
        )
    if spec.in_channels != data.input_shape[0]:
        raise TeacherError(
            f"teacher {source} takes {spec.in_channels}-channel images but {data.name} has {data.input_shape[0]}; "
            "pass a teacher trained on this dataset"
        )


def weights_digest(model: nn.Module) -> str:
    """A hash of the model's weights: identifies a teacher in cache keys and in MLflow."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
