"""The registry of export formats: what a format is, what it writes from, the formats registered (see ``formats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rkd_search.trainer.batches import normalize

from ..errors import UsageError


@dataclass
class ExportJob:
    """What a format writes from, and what it records."""

    model: Any
    spec: Any
    input_shape: tuple[int, ...]
    preprocessing: dict[str, Any] | None
    folder: Path
    raw_input: bool = False
    int8: bool = False
    data: Any = None
    """The search's ``ImageDataset``, when a chosen format needs it."""
    calibration_images: int = 512
    files: dict[str, Path] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _nothing_to_check() -> None:
    return None


@dataclass(frozen=True)
class ExportFormat:
    name: str
    help: str
    write: Callable[[ExportJob], None]
    quantizes: bool = False
    needs_data: Callable[[bool], bool] = lambda int8: False
    check: Callable[[], None] = _nothing_to_check


FORMATS: dict[str, ExportFormat] = {}


def register_format(export_format: ExportFormat) -> ExportFormat:
    FORMATS[export_format.name] = export_format
    return export_format


def unregister_format(name: str) -> None:
    FORMATS.pop(name, None)


def chosen_formats(text: str) -> list[ExportFormat]:
    """The formats ``--format a,b`` names, in the registry's order; ``UsageError`` naming the known ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(FORMATS):
        raise UsageError(f"--format {text!r}: choose from {', '.join(FORMATS)}")
    return [f for name, f in FORMATS.items() if name in names]


def describe_formats() -> str:
    return "; ".join(f"{f.name}: {f.help}" for f in FORMATS.values())


def calibration_images(data, count: int) -> np.ndarray:
    """``count`` training images (uint8, N C H W), the same draw for every exported format."""
    index = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(0))[:count]
    return data.train_images[index].cpu().numpy()


def feed(images: torch.Tensor, raw_input: bool, preprocessing: dict | None) -> np.ndarray:
    """uint8 images as the exported model takes them."""
    if raw_input:
        return images.numpy()
    return normalize(images, tuple(preprocessing["mean"]), tuple(preprocessing["std"])).numpy()
