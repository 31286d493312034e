"""Datasets as in-memory uint8 tensors: CIFAR, an ImageFolder tree (``imagefolder``), scikit-learn's
digits, or tensors a user has; with a validation split (the data's ``val/`` folder, or a stratified
share of ``train/``) and the normalisation measured on the training images. The batches drawn from
them are ``batches``'.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .defaults import BATCH_SIZE, SMALL_BATCH_SIZE, VAL_FRACTION
from .files import atomic_torch_save
from .imagefolder import DataError, Size, load_imagefolder

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")


@dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding, and horizontal flip (disabled for digits)."""

    crop_padding: int = 4
    flip: bool = True


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W) tensors with int64 labels; validation carved from train."""

    name: str
    classes: list[str]
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation = field(default_factory=Augmentation)
    default_batch_size: int = BATCH_SIZE
    """The paper's 128, or smaller for a tiny dataset (digits) so that short runs still take enough steps."""
    val_source: str = ""
    """Where the validation images come from: the data's own ``val/`` folder, or a share of ``train/``."""
    note: str = ""
    """How the images were read, when that needs saying (their sizes, and what they were resized to)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def resolution(self) -> tuple[int, int]:
        """The images' (height, width): every cost (MACs, memory, latency) is counted at it."""
        return int(self.train_images.shape[-2]), int(self.train_images.shape[-1])

    @property
    def fingerprint(self) -> str:
        """A short hash of every image and label of the three splits: keys the teacher and target caches."""
        if not hasattr(self, "_fingerprint"):
            digest = hashlib.sha256(self.name.encode())
            for tensor in (self.train_images, self.train_labels, self.val_images, self.val_labels,
                           self.test_images, self.test_labels):
                digest.update(tensor.contiguous().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def to(self, device: torch.device | str) -> "ImageDataset":
        moved = {
            name: getattr(self, name).to(device)
            for name in ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
        }
        result = replace(self, **moved)
        if hasattr(self, "_fingerprint"):
            result._fingerprint = self._fingerprint
        return result

    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset as one file of plain tensors and values (``load`` memory-maps it)."""
        fields = {name: getattr(self, name) for name in _TENSORS}
        meta = {"name": self.name, "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "crop_padding": self.augmentation.crop_padding, "flip": self.augmentation.flip,
                "default_batch_size": self.default_batch_size, "val_source": self.val_source, "note": self.note,
                "fingerprint": self.fingerprint}
        return atomic_torch_save({"format": "rkd-search/dataset-v1", "meta": meta,
                                  **{k: v.cpu().contiguous() for k, v in fields.items()}}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageDataset":
        """A dataset written by ``save``, its tensors memory-mapped (shared by every process reading it)."""
        stored = torch.load(path, mmap=True, weights_only=True)
        if stored.get("format") != "rkd-search/dataset-v1":
            raise DataError(f"{path} is not a dataset written by rkd-search")
        meta = stored["meta"]
        dataset = cls(meta["name"], list(meta["classes"]), *(stored[name] for name in _TENSORS), tuple(meta["mean"]),
                      tuple(meta["std"]), Augmentation(meta["crop_padding"], meta["flip"]), meta["default_batch_size"],
                      meta["val_source"], meta.get("note", ""))
        dataset._fingerprint = meta["fingerprint"]
        return dataset


_TENSORS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: Callable[[int, int], None] | None = None,
    image_size: Size | None = None,
) -> ImageDataset:
    """Load ``name`` (one of ``DATASETS``) into memory with its validation split.

    An ImageFolder tree's own ``val/`` folder is the validation split when it exists (the layout
    many datasets have); otherwise a seeded, stratified ``val_fraction`` of ``train/`` is held out.
    ``data_dir`` defaults to ``$RKD_DATA_DIR``, and for CIFAR to ``CACHE/data/NAME``, where it is
    downloaded when the network allows. ImageFolder trees are decoded once and cached as tensors
    under ``cache_dir`` (default ``$RKD_CACHE_DIR`` or ``~/.cache/rkd-search``); ``progress(done,
    total)`` is called while images are decoded. ``image_size`` (height, width) is the size an
    ImageFolder tree's images are resized to (default: their most common size; see ``imagefolder``).
    """
    if data_dir is None and os.environ.get("RKD_DATA_DIR"):
        data_dir = os.environ["RKD_DATA_DIR"]
    if not 0 < val_fraction < 1:
        raise DataError(f"the validation fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    augmentation, batch_size, val, note = Augmentation(), BATCH_SIZE, None, ""
    if image_size is not None and name != "imagefolder":
        raise DataError(f"an image size is for --dataset imagefolder; {name} has its own")
    if name in ("cifar10", "cifar100"):
        if data_dir is None:
            data_dir = default_data_dir(name, cache_dir)
        train, test, classes = _load_cifar(name, data_dir, download)
    elif name == "imagefolder":
        if data_dir is None:
            raise DataError("--dataset imagefolder needs --data-dir (or RKD_DATA_DIR) pointing at a folder with train/ and test/")
        train, val, test, classes, note = load_imagefolder(Path(data_dir), Path(cache_dir) if cache_dir else default_cache_dir(),
                                                           progress, image_size)
    elif name == "digits":
        train, test, classes = _load_digits()
        augmentation, batch_size = Augmentation(crop_padding=4, flip=False), SMALL_BATCH_SIZE
    else:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    data = dataset_from_tensors(name, train, test, classes, val_fraction=val_fraction, seed=seed,
                                augmentation=augmentation, batch_size=batch_size, val=val)
    data.note = note
    return data


def dataset_from_tensors(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    classes: list[str],
    *,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    augmentation: Augmentation | None = None,
    batch_size: int = BATCH_SIZE,
    val: tuple[Tensor, Tensor] | None = None,
) -> ImageDataset:
    """An ``ImageDataset`` from uint8 (N, C, H, W) images and int64 labels. The validation split is
    ``val`` when given, else carved from ``train`` (stratified, seeded); the normalisation is
    measured on the training images."""
    if len(classes) < 2:
        raise DataError(f"{name} has {len(classes)} class{'es' if len(classes) != 1 else ''}: a classifier needs at least two")
    if val is not None:
        (train_x, train_y), (val_x, val_y) = train, val
        source = "val/ folder"
    else:
        (train_x, train_y), (val_x, val_y) = _stratified_split(*train, val_fraction, seed)
        source = f"{val_fraction:.0%} of train/, stratified (seed {seed})"
    mean, std = _channel_stats(train_x)
    return ImageDataset(name, classes, train_x, train_y, val_x, val_y, *test, mean, std,
                        augmentation or Augmentation(), batch_size, source)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RKD_CACHE_DIR") or Path.home() / ".cache" / "rkd-search")


def default_data_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a downloadable dataset lives when no folder is given: ``CACHE/data/NAME``."""
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "data" / name


def _stratified_split(images: Tensor, labels: Tensor, fraction: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    val_index = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_index.append(members[: max(1, round(fraction * len(members)))])
    val = torch.cat(val_index).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return (images[keep], labels[keep]), (images[val], labels[val])


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def _load_cifar(name: str, data_dir, download: bool):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    data_dir = Path(data_dir)
    created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]
    try:
        train = cls(str(data_dir), train=True, download=download)
        test = cls(str(data_dir), train=False, download=download)
    except Exception as error:  # no network, partial download, corrupt archive
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        for path in created:  # a failed download leaves no empty folders behind
            shutil.rmtree(path, ignore_errors=True)
        raise DataError(
            f"{name} is not in {data_dir} and could not be downloaded ({reason}): put the "
            f"extracted {cls.base_folder}/ there (or pass --data-dir), or use --dataset imagefolder --data-dir DIR, or --dataset digits"
        ) from None

    def tensors(split):
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(split.targets, dtype=torch.int64)

    return tensors(train), tensors(test), list(train.classes)


def _load_digits(resolution: int = 32):
    """scikit-learn's 8x8 handwritten digits (1,797 images, ships offline), upscaled to 32x32."""
    pixels, target = _digits_arrays()
    images = torch.from_numpy(pixels).float().view(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(target).long()
    # a fixed, stratified 80/20 train/test split (the data has no official one)
    (train_x, train_y), (test_x, test_y) = _stratified_split(images, labels, 0.2, seed=12345)
    return (train_x, train_y), (test_x, test_y), [str(i) for i in range(10)]


def _digits_arrays():
    """The digits' pixels (N, 64) and labels, read from the file scikit-learn ships (its
    ``load_digits`` reads the same file, but importing scikit-learn costs ~3 s per process)."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits  # a layout this reader does not know

        digits = load_digits()
        return digits.data, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)
