"""An ImageFolder tree (``train/<class>/<image>``, ``test/``, optionally ``val/``) read into uint8 tensors.

What a user's own images bring is settled here, explicitly, and said: the split and class folders
and the image files may be symbolic links (followed; a broken or looping link is refused, naming it); every
image is decoded as 8-bit RGB (16-bit PNGs are scaled from 0-65535 to 0-255, not truncated;
grayscale, palette, CMYK and alpha images are converted); and every image is resized to one input
size, the one given (``image_size``) or else the most common size among the files (read from their
headers before anything is decoded, so a single huge image costs nothing), with a note saying so
when the files differ. A file that cannot be read is refused in one line. The decoded splits are
cached under ``CACHE/datasets``, keyed by the files (paths, sizes, times) and the input size.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .files import atomic_torch_save

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
Size = tuple[int, int]
"""(height, width) in pixels."""


class DataError(ValueError):
    """A dataset cannot be found or read; the message says what to do."""


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` (which may itself be a link), links to files followed; a broken
    or looping link is refused, naming it."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path} is a broken link (or a loop of links): remove it or point it at an image")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            files.append(path)
    return files


def _signature(root: Path, files: list[Path], image_size: Size | None) -> str:
    digest = hashlib.sha256(f"{root.resolve()}|{image_size}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def choose_size(files: list[Path], image_size: Size | None = None) -> tuple[Size, str]:
    """The input size every image is resized to, and a line saying how it was chosen: ``image_size``
    when given, else the most common size among the files (read from their headers only)."""
    from PIL import Image, UnidentifiedImageError

    sizes: Counter[Size] = Counter()
    for path in files:
        try:
            with Image.open(path) as image:
                sizes[(image.height, image.width)] += 1
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise DataError(f"cannot read {path} ({type(error).__name__}: {error}); remove or replace it") from None
    (common, count), = sizes.most_common(1)
    shown = lambda size: f"{size[1]}x{size[0]}"  # noqa: E731  (width x height, as image tools show it)
    if image_size is not None:
        if len(sizes) == 1 and common == image_size:
            return image_size, f"images: {shown(image_size)}, all of them"
        return image_size, (f"images resized to {shown(image_size)} (--image-size); the files have {len(sizes)} size(s), "
                            f"mostly {shown(common)} ({count:,} of {len(files):,})")
    if len(sizes) == 1:
        return common, f"images: {shown(common)}, all of them"
    others = ", ".join(f"{shown(size)} ({n:,})" for size, n in sizes.most_common(4)[1:])
    return common, (f"images of {len(sizes)} sizes resized to {shown(common)}, the most common ({count:,} of {len(files):,} files; "
                    f"others: {others}{', ...' if len(sizes) > 4 else ''}); --image-size WxH sets another")


def to_uint8(image: Tensor) -> Tensor:
    """An 8-bit image: 16-bit values (0-65535) are scaled to 0-255 and rounded, never truncated or wrapped."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:
        return ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    raise DataError(f"images of type {image.dtype} are not supported: save them as 8- or 16-bit PNG or JPEG")


def decode_images(paths: list[Path], index: dict[str, int], size: Size,
                  count: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Decode ``paths`` as RGB at ``size`` (resized with antialiasing where they differ); labels by class folder."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    images = torch.empty(len(paths), 3, *size, dtype=torch.uint8)
    labels = []
    for number, path in enumerate(paths, start=1):
        try:
            image = to_uint8(decode_image(read_file(str(path)), mode=ImageReadMode.RGB))
        except DataError:
            raise
        except Exception as error:
            raise DataError(f"cannot decode {path} ({str(error).splitlines()[0][:160]}); remove or replace it") from None
        if tuple(image.shape[1:]) != size:
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
            image = image.round().clamp(0, 255).to(torch.uint8)
        images[number - 1] = image
        labels.append(index[path.parent.name])
        if count is not None and (number % 500 == 0 or number == len(paths)):
            count(500 if number % 500 == 0 else number % 500)
    return images, torch.tensor(labels, dtype=torch.int64)


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def load_imagefolder(root: Path, cache_dir: Path, progress: Callable[[int, int], None] | None = None,
                     image_size: Size | None = None):
    """(train, val or None, test, classes, note) of an ImageFolder tree, decoded once and cached."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root / split} is not a folder: --data-dir must hold train/<class>/*.png and test/<class>/*.png")
    splits_present = ["train", "test"] + (["val"] if (root / "val").is_dir() else [])
    classes = _class_folders(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders: expected train/<class>/<image>")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} holds one class folder ({classes[0]}): a classifier needs at least two classes")
    for split in splits_present[1:]:
        split_classes = _class_folders(root / split)
        if split_classes != classes:
            missing = sorted(set(classes) - set(split_classes)) or sorted(set(split_classes) - set(classes))
            raise DataError(f"{root}: {split}/ and train/ hold different class folders ({', '.join(missing[:5])}); make them the same")
    by_folder: dict[tuple[str, str], list[Path]] = {(split, name): [] for split in splits_present for name in classes}
    for split in splits_present:
        for name in classes:
            by_folder[(split, name)] = image_files(root / split / name)
        empty = [name for name in classes if not by_folder[(split, name)]]
        if empty:
            raise DataError(f"{root / split / empty[0]} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): add images of "
                            f"class {empty[0]!r} or remove its folder from every split")
    files = sorted(p for paths in by_folder.values() for p in paths)
    cache = cache_dir / "datasets" / f"imagefolder-{_signature(root, files, image_size)}.pt"
    if cache.exists():
        try:
            stored = torch.load(cache, weights_only=True)
            log.info("loaded %s from cache %s", root, cache)
            val = (stored["val_x"], stored["val_y"]) if "val_x" in stored else None
            return (stored["train_x"], stored["train_y"]), val, (stored["test_x"], stored["test_y"]), stored["classes"], stored["note"]
        except Exception:
            log.warning("ignoring unreadable dataset cache %s", cache)
    size, note = choose_size(files, image_size)
    index = {name: i for i, name in enumerate(classes)}
    decoded = [0]

    def count(done: int) -> None:
        decoded[0] += done
        if progress is not None:
            progress(decoded[0], len(files))

    splits = {split: decode_images([p for name in classes for p in by_folder[(split, name)]], index, size, count)
              for split in splits_present}
    content = {"train_x": splits["train"][0], "train_y": splits["train"][1], "test_x": splits["test"][0],
               "test_y": splits["test"][1], "classes": classes, "note": note}
    if "val" in splits:
        content.update(val_x=splits["val"][0], val_y=splits["val"][1])
    atomic_torch_save(content, cache)
    log.info("decoded %d images from %s, cached at %s", len(files), root, cache)
    return splits["train"], splits.get("val"), splits["test"], classes, note
