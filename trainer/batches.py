"""Deterministic augmented batches drawn from an ``ImageDataset``.

The whole pipeline is a few tensors and a generator (as in airbench): images stay uint8 on the
training device, a batch is cropped, flipped and normalised in one go, and the order and
augmentation of every batch of an epoch are fixed by (seed, epoch). Every trial of a search sees
the same batches, which is what lets the teacher's outputs be computed once and reused.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import Augmentation, ImageDataset


def normalize(images: Tensor, mean: tuple[float, ...] | Tensor, std: tuple[float, ...] | Tensor) -> Tensor:
    """uint8 (N, C, H, W) -> float32, standardised per channel (``mean``/``std`` as tuples or (1, C, 1, 1) tensors)."""
    mean_t = mean if isinstance(mean, Tensor) else torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = std if isinstance(std, Tensor) else torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255) - mean_t) / std_t


def _stats_on(dataset: ImageDataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """The normalisation as tensors on ``device``: made once per epoch, not once per batch (on a GPU
    each small host-to-device copy is a synchronisation)."""
    mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    return mean, torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1).to(device)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that fixes an epoch's order and augmentation: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def num_train_batches(dataset: ImageDataset, batch_size: int) -> int:
    return max(1, len(dataset.train_labels) // batch_size)


def _crop_and_flip(images: Tensor, pad: int, dy: Tensor | None, dx: Tensor | None, flip: Tensor | None) -> Tensor:
    n, c, h, w = images.shape
    device = images.device
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch_index = torch.arange(n, device=device)[:, None, None, None]
        channel_index = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch_index, channel_index, rows, cols]
    if flip is not None:
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def _draws(n: int, augmentation: Augmentation, generator: torch.Generator) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Crop offsets and flips for ``n`` images, drawn on the CPU (so batches do not depend on the device)."""
    pad = augmentation.crop_padding
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad > 0 else None
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad > 0 else None
    flip = torch.rand(n, generator=generator) < 0.5 if augmentation.flip else None
    return dy, dx, flip


def augment_batch(images: Tensor, augmentation: Augmentation, generator: torch.Generator) -> Tensor:
    """Random crop (zero padding) and horizontal flip of a whole uint8 batch at once."""
    draws = [d.to(images.device) if d is not None else None for d in _draws(len(images), augmentation, generator)]
    return _crop_and_flip(images, augmentation.crop_padding, *draws)


def train_batches(
    dataset: ImageDataset, batch_size: int, seed: int, epoch: int, augment: bool = True
) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's training batches as (normalised float images, labels), full batches only.

    Order and augmentation depend on (seed, epoch) alone, so two calls give identical batches, on
    any device: the epoch's order, crop offsets and flips are drawn at once on the CPU and moved
    to the data's device in one copy (per-batch copies would synchronise a GPU at every step).
    """
    generator = epoch_generator(seed, epoch)
    count = len(dataset.train_labels)
    size = min(batch_size, count)
    batches = num_train_batches(dataset, size)
    device = dataset.train_labels.device
    order = torch.randperm(count, generator=generator)
    draws = _draws(batches * size, dataset.augmentation, generator) if augment else (None, None, None)
    order, *draws = [t.to(device) if t is not None else None for t in (order, *draws)]
    mean, std = _stats_on(dataset, device)
    for batch in range(batches):
        part = slice(batch * size, (batch + 1) * size)
        index = order[part]
        images = dataset.train_images[index]
        if augment:
            images = _crop_and_flip(images, dataset.augmentation.crop_padding, *(d[part] if d is not None else None for d in draws))
        yield normalize(images, mean, std), dataset.train_labels[index]


def eval_batches(
    dataset: ImageDataset, images: Tensor, labels: Tensor, batch_size: int = 500
) -> Iterator[tuple[Tensor, Tensor]]:
    mean, std = _stats_on(dataset, images.device)
    for start in range(0, len(labels), batch_size):
        yield normalize(images[start : start + batch_size], mean, std), labels[start : start + batch_size]
