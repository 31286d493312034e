"""What the losses need from the teacher, live or computed once per search.

The teacher is frozen and every trial of a search sees the same batches (fixed by seed and epoch),
so its logits and, per stage, the batch's Gram matrix (all that the relational losses read) are
the same in every trial. ``TeacherTargets`` computes them once, stores them per epoch (on disk when
given a cache folder, memory-mapped when read back, so memory stays bounded), and serves them to
every trial; ``LiveTeacher`` runs the teacher instead. Both give ``fit`` the same interface.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from ._device import autocast, resolve_device, resolve_precision, use_channels_last
from .config import STAGES
from .defaults import BATCH_SIZE
from .batches import eval_batches, num_train_batches, train_batches
from .data import ImageDataset
from .losses import gram_matrix
from .checkpoint import weights_digest
from .files import atomic_torch_save, atomic_write_text

log = logging.getLogger(__name__)


class TeacherSignals(Protocol):
    def batch(self, epoch: int, index: int, images: Tensor, stages: tuple[int, ...]) -> tuple[Tensor, dict[int, Tensor]]:
        """Teacher logits and {stage: Gram matrix} for batch ``index`` of ``epoch``."""

    def test_logits(self, data: ImageDataset) -> Tensor:
        """Teacher logits on the test set, in order."""


def _prepare(model: nn.Module, device: torch.device, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, bool]:
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    channels_last = input_shape is not None and use_channels_last(model, device, input_shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


@torch.no_grad()
def _teacher_outputs(model: nn.Module, images: Tensor, stages: tuple[int, ...], precision: str, device: torch.device,
                     channels_last: bool = False):
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(precision, device):
        logits, features = model.forward_with_features(images)
    return logits.float(), {stage: gram_matrix(features[stage - 1]) for stage in stages}


class LiveTeacher:
    """Runs the teacher on every batch (the reference the cache is tested against)."""

    def __init__(self, model: nn.Module, precision: str = "auto", device: str | torch.device | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model, self.channels_last = _prepare(model, self.device, input_shape)

    def batch(self, epoch, index, images, stages):
        return _teacher_outputs(self.model, images, stages, self.precision, self.device, self.channels_last)

    @torch.no_grad()
    def test_logits(self, data: ImageDataset) -> Tensor:
        outputs = []
        for images, _ in eval_batches(data, data.test_images.to(self.device), data.test_labels):
            outputs.append(_teacher_outputs(self.model, images, (), self.precision, self.device, self.channels_last)[0])
        return torch.cat(outputs)


@dataclass
class EpochTargets:
    logits: Tensor  # (batches, B, classes)
    grams: Tensor  # (batches, stages, B, B)


class TeacherTargets:
    """The teacher's logits and per-stage Gram matrices for every batch of ``epochs`` epochs.

    Build it with ``TeacherTargets.compute``; pass it to ``fit(..., teacher=targets)``. It is a
    plain picklable object, so a distributed search ships it to workers once.
    """

    def __init__(self, key: str, batch_size: int, seed: int, precision: str, epochs: list[EpochTargets], test_logits: Tensor,
                 folder: Path | None = None) -> None:
        self.key = key
        self.batch_size = batch_size
        self.seed = seed
        self.precision = precision
        self.epochs = epochs
        self._test_logits = test_logits
        self.folder = folder
        """The cache folder the targets were written to (None: held in memory only)."""
        self._on_device: tuple | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike, epochs: int) -> "TeacherTargets":
        """The first ``epochs`` epochs of targets written by ``compute`` with a cache folder,
        memory-mapped (the pages are shared by every process that opens them)."""
        folder = Path(folder)
        about = json.loads((folder / "about.json").read_text())
        stored_epochs = []
        for epoch in range(epochs):
            stored = torch.load(folder / f"epoch_{epoch:04d}.pt", mmap=True, weights_only=True)
            stored_epochs.append(EpochTargets(stored["logits"], stored["grams"]))
        test_logits = torch.load(folder / "test_logits.pt", mmap=True, weights_only=True)
        return cls(about["key"], int(about["batch_size"]), int(about["seed"]), about["precision"], stored_epochs, test_logits, folder)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_on_device"] = None  # a device copy never travels
        return state

    @property
    def num_epochs(self) -> int:
        return len(self.epochs)

    @property
    def nbytes(self) -> int:
        tensors = [self._test_logits] + [t for e in self.epochs for t in (e.logits, e.grams)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(self, epoch, index, images, stages):
        if epoch >= len(self.epochs):
            raise ValueError(f"teacher targets cover {len(self.epochs)} epochs, the run asked for epoch {epoch + 1}")
        device = images.device
        if self._on_device is None or self._on_device[:2] != (epoch, device):
            stored = self.epochs[epoch]  # the whole epoch moves at once: one copy, not two per batch
            self._on_device = (epoch, device, stored.logits.to(device), stored.grams.to(device))
        _, _, logits, grams = self._on_device
        return logits[index], {s: grams[index, s - 1] for s in stages}

    def test_logits(self, data: ImageDataset) -> Tensor:
        return self._test_logits

    def check_compatible(self, data: ImageDataset, batch_size: int, seed: int, epochs: int, precision: str) -> None:
        """Refuse targets computed for other batches or numerics than the run's (``precision`` resolved)."""
        expected = targets_key(self.key.split(":")[0], data, batch_size, seed, precision)
        if expected != self.key:
            differences = [f"{name} {mine} vs {theirs}" for name, mine, theirs in
                           (("batch size", self.batch_size, batch_size), ("seed", self.seed, seed), ("precision", self.precision, precision))
                           if mine != theirs] or ["the dataset or its augmentation"]
            raise ValueError(
                f"teacher targets were computed for other batches or numerics than this run's ({', '.join(differences)}: "
                "targets vs run); compute them with the run's settings"
            )
        if epochs > len(self.epochs):
            raise ValueError(f"teacher targets cover {len(self.epochs)} epochs but the run trains {epochs}")

    def materialize(self) -> "TeacherTargets":
        """Copy memory-mapped tensors into memory (before shipping to other machines)."""
        epochs = [EpochTargets(e.logits.clone(), e.grams.clone()) for e in self.epochs]
        return TeacherTargets(self.key, self.batch_size, self.seed, self.precision, epochs, self._test_logits.clone())

    @classmethod
    def compute(
        cls,
        teacher: nn.Module,
        data: ImageDataset,
        *,
        epochs: int,
        batch_size: int = BATCH_SIZE,
        seed: int = 0,
        precision: str = "auto",
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: Callable[[int, int], None] | None = None,
        digest: str | None = None,
    ) -> "TeacherTargets":
        """Run the teacher once over ``epochs`` epochs of training batches and the test set.

        With ``cache_dir``, each epoch is saved as a file and reused by later searches with the same
        teacher, data, batch size, seed and precision; only missing epochs are computed, and a
        damaged file is computed again. ``digest`` is the teacher's weights digest when known.
        """
        live = LiveTeacher(teacher, precision, device, data.input_shape)
        key = targets_key(digest or weights_digest(teacher), data, batch_size, seed, live.precision)
        folder = Path(cache_dir) / "targets" / key.replace(":", "-") if cache_dir else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        device_data = data.to(live.device)
        batches = num_train_batches(data, min(batch_size, len(data.train_labels)))
        size = min(batch_size, len(data.train_labels))
        stored: list[EpochTargets] = []
        for epoch in range(epochs):
            path = folder / f"epoch_{epoch:04d}.pt" if folder else None
            cached = _load_cached(path, lambda t: t["logits"].shape[:2] == (batches, size) and t["grams"].shape[:2] == (batches, len(STAGES)))
            if cached is not None:
                stored.append(EpochTargets(cached["logits"], cached["grams"]))
            else:
                stored.append(_compute_epoch(live, device_data, batch_size, seed, epoch))
                if path is not None:
                    atomic_torch_save({"logits": stored[-1].logits, "grams": stored[-1].grams}, path)
                    loaded = torch.load(path, mmap=True, weights_only=True)
                    stored[-1] = EpochTargets(loaded["logits"], loaded["grams"])
            if progress is not None:
                progress(epoch + 1, epochs)
        test_path = folder / "test_logits.pt" if folder else None
        test_logits = _load_cached(test_path, lambda t: t.shape[0] == len(data.test_labels))
        if test_logits is None:
            test_logits = live.test_logits(device_data).cpu()
            if test_path is not None:
                atomic_torch_save(test_logits, test_path)
        if folder is not None:
            atomic_write_text(folder / "about.json", json.dumps({"key": key, "batch_size": batch_size, "seed": seed,
                                                                 "precision": live.precision, "epochs": epochs}))
        return cls(key, batch_size, seed, live.precision, stored, test_logits, folder)


def targets_key(teacher_digest: str, data: ImageDataset, batch_size: int, seed: int, precision: str) -> str:
    """Identifies the batches and numerics the targets were computed for."""
    augmentation = f"{data.augmentation.crop_padding}:{data.augmentation.flip}"
    details = f"{data.fingerprint}:{batch_size}:{seed}:{precision}:{augmentation}:v2"  # v2: an epoch's draws made at once
    return f"{teacher_digest}:{hashlib.sha256(details.encode()).hexdigest()[:16]}"


def _compute_epoch(live: LiveTeacher, data: ImageDataset, batch_size: int, seed: int, epoch: int) -> EpochTargets:
    logits, grams = [], []
    for images, _ in train_batches(data, batch_size, seed, epoch):
        batch_logits, batch_grams = live.batch(epoch, 0, images, STAGES)
        logits.append(batch_logits.cpu())
        grams.append(torch.stack([batch_grams[s] for s in STAGES]).cpu())
    assert len(logits) == num_train_batches(data, min(batch_size, len(data.train_labels)))
    return EpochTargets(torch.stack(logits), torch.stack(grams))


def _load_cached(path: Path | None, looks_right: Callable[[object], bool]):
    """A cache file's content, or None when it is missing or damaged (then it is computed again)."""
    if path is None or not path.exists():
        return None
    try:
        content = torch.load(path, mmap=True, weights_only=True)
        if looks_right(content):
            return content
    except Exception as error:  # torn, truncated or foreign file
        log.warning("teacher targets cache %s is unreadable (%s); computing it again", path, type(error).__name__)
        return None
    log.warning("teacher targets cache %s does not match the batches; computing it again", path)
    return None
