"""Teachers: a checkpoint given by the user, or an architecture trained once and cached.

``find_teacher`` reads what the user named (a file is loaded and checked against the data, an
architecture name is parsed) without training anything; ``prepare_teacher`` turns that into a
``Teacher``: the frozen model, its spec, metadata, checkpoint path, weights digest and operations,
training and caching it first when needed. The weights are hashed once, here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoint import TeacherError, check_teacher_fits, is_own_checkpoint, load_checkpoint, save_checkpoint, weights_digest
from .config import LossConfig, TrainConfig
from .results import EpochReport, TrainState
from .data import ImageDataset, default_cache_dir
from .defaults import TEACHER, TEACHER_EPOCHS
from .fit import fit
from .models import ModelSpec, build_model
from .foreign import adapter_digest, foreign_teacher, parse_reference
from .ops import OpsCount, count_spec_ops, count_teacher_ops

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class TeacherSource:
    """What ``--teacher`` names: a loaded model (``model`` set) or one of rkd-search's
    architectures to train (``spec`` set, ``model`` None)."""

    name: str
    """Shown and logged: ``wrn28_1``, ``torchvision:resnet18``, ``torchscript:teacher.pt``, ..."""
    reference: str
    """Identifies the teacher across runs: the checkpoint's absolute path, or ``NAME-eEPOCHS-sSEED``."""
    spec: ModelSpec | None = None
    """rkd-search's own architecture (None for a foreign teacher)."""
    model: nn.Module | None = None
    checkpoint: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Teacher:
    """A teacher ready to distil from."""

    model: nn.Module
    name: str
    reference: str
    meta: dict[str, Any]
    checkpoint: Path | None
    digest: str
    ops: OpsCount
    spec: ModelSpec | None = None


def find_teacher(reference: str, data: ImageDataset, *, epochs: int = TEACHER_EPOCHS, seed: int = 0,
                 trust_code: bool = False, taps: str | None = None, size: int | None = None,
                 normalization: str | None = None) -> TeacherSource:
    """Read ``reference``: one of rkd-search's architectures (trained later), its checkpoint file, or
    a teacher the user has (``torchvision:NAME=WEIGHTS``, ``timm:NAME=WEIGHTS``, a TorchScript file,
    a pickled module): loaded and checked against ``data`` now, its taps found or checked.

    Raises ``TeacherError`` with what to do when the file is missing, unreadable, unsafe or made
    for other data, the architecture is unknown, or the taps cannot be found. Nothing is trained or written.
    """
    if not reference.strip():
        raise TeacherError("--teacher is empty: pass an architecture such as wrn28_1 (the default), a checkpoint file, "
                           "or torchvision:NAME=WEIGHTS")
    if Path(reference).is_dir():
        raise TeacherError(f"--teacher {reference} is a folder: pass the teacher's file (a checkpoint, a TorchScript or "
                           "state_dict file) or an architecture such as wrn28_1")
    foreign = parse_reference(reference) is not None
    looks_like_file = reference.endswith(CHECKPOINT_SUFFIXES + (".ts", ".jit")) or "/" in reference or Path(reference).exists()
    own_options = taps is None and size is None and normalization is None
    if not foreign and looks_like_file and own_options and is_own_checkpoint(reference, trust_code):
        model, spec, meta = load_checkpoint(reference, trust_code=trust_code)
        check_teacher_fits(spec, data, reference)
        path = Path(reference).resolve()
        return TeacherSource(spec.name, str(path), spec, model, path, meta)
    if foreign or looks_like_file:
        model, name, meta = foreign_teacher(reference, data, taps=taps, size=size, normalization=normalization,
                                            trust_code=trust_code)
        path = Path(meta.get("weights") or meta["file"])
        return TeacherSource(name, f"{name}|{path}|{adapter_digest(meta)}", None, model, path, meta)
    if not own_options:
        raise TeacherError("--teacher-taps, --teacher-size and --teacher-norm are for a teacher you bring "
                           "(torchvision:NAME=WEIGHTS, timm:NAME=WEIGHTS, a TorchScript or pickled module)")
    try:
        spec = ModelSpec.parse(reference, data.input_shape[0], data.num_classes)
    except ValueError as error:
        raise TeacherError(f"--teacher: {error}; or pass a checkpoint file, or torchvision:NAME=WEIGHTS") from None
    return TeacherSource(spec.name, f"{spec.name}-e{epochs}-s{seed}", spec)


def prepare_teacher(
    source: TeacherSource | str,
    data: ImageDataset,
    *,
    epochs: int = TEACHER_EPOCHS,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    report: Callable[[EpochReport], bool | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    resumed: Callable[[int, Path], None] | None = None,
) -> Teacher:
    """The teacher of a search in one call: loaded, or trained once and cached, then hashed and counted.
    ``report`` receives each training epoch's report, ``progress`` the batches within it, ``resumed``
    the epoch and checkpoint a stopped training continues from."""
    if isinstance(source, str):
        source = find_teacher(source, data, epochs=epochs, seed=seed)
    if source.model is not None:
        model, spec, meta, checkpoint = source.model, source.spec, source.meta, source.checkpoint
    else:
        model, spec, meta, checkpoint = train_teacher(data, source.spec, epochs=epochs, seed=seed, cache_dir=cache_dir,
                                                      device=device, report=report, progress=progress, resumed=resumed)
    digest = weights_digest(model)
    if spec is not None:
        ops = count_spec_ops(spec, data.resolution)
    else:  # a foreign teacher: counted at the data's resolution through its own preprocessing
        digest = f"{digest}{adapter_digest(meta)}"
        ops = count_teacher_ops(model, data.input_shape)
    return Teacher(model.eval(), source.name, source.reference, meta, checkpoint, digest, ops, spec)


def teacher_cache_path(data: ImageDataset, spec: ModelSpec, epochs: int, seed: int, cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "teachers" / f"{data.name}-{data.fingerprint}-{spec.name}-e{epochs}-s{seed}.pt"


def train_teacher(
    data: ImageDataset,
    spec: ModelSpec | str = TEACHER,
    *,
    epochs: int = TEACHER_EPOCHS,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    report: Callable[[EpochReport], bool | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    compile: str = "auto",
    resumed: Callable[[int, Path], None] | None = None,
) -> tuple[nn.Module, ModelSpec, dict[str, Any], Path]:
    """Train a teacher with cross-entropy, or load it if this (dataset, architecture, epochs, seed) was trained before.

    Its training state is saved after every epoch beside the cached teacher (``*.partial.pt``): a
    training stopped (Ctrl-C, kill -9) continues from there, to the weights an uninterrupted one
    gives; ``resumed(epoch, path)`` is told first. ``compile`` is ``TrainConfig.compile`` (the
    training step through torch.compile; ``auto``: on CUDA)."""
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    spec = spec.with_data(data.input_shape[0], data.num_classes)
    path = teacher_cache_path(data, spec, epochs, seed, cache_dir)
    if path.exists():
        try:
            model, spec, meta = load_checkpoint(path)
            log.info("reusing cached teacher %s", path)
            return model, spec, meta, path
        except TeacherError:
            log.warning("cached teacher %s is unreadable; training it again", path)
    config = TrainConfig(student=spec, loss=LossConfig(), epochs=epochs, seed=seed, batch_size=data.default_batch_size, compile=compile)
    partial = path.with_name(path.stem + ".partial.pt")
    state = None
    if partial.exists():
        try:
            state = TrainState.load(partial)
        except ValueError as error:
            log.warning("%s; training the teacher from the start", error)
        else:
            if resumed is not None:
                resumed(state.epoch, partial)
    result = fit(config, data, report=report, device=device, batch_progress=progress, resume=state,
                 checkpoint=lambda s: s.save(partial))
    model = build_model(spec)
    model.load_state_dict(result.state_dict)
    meta = {
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint,
        "epochs": epochs,
        "seed": seed,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
        "macs": result.macs,
        "params": result.params,
        "train_seconds": result.train_seconds,
    }
    save_checkpoint(model, spec, path, meta)
    partial.unlink(missing_ok=True)
    return model.eval(), spec, meta, path
