from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cifar10_small_dir() -> Path:
    """The CIFAR-10 subset: $RKD_TEST_DATA, else ../shared/data/cifar10-small beside the checkout."""
    path = Path(os.environ.get("RKD_TEST_DATA") or REPO.parent / "shared" / "data" / "cifar10-small")
    if not (path / "train").is_dir():
        pytest.fail(f"CIFAR-10 subset not found at {path}: set RKD_TEST_DATA to a folder with train/ and test/")
    return path


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    return cifar10_small_dir()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rkd-cache")


def make_synthetic(num_classes: int = 4, train_per_class: int = 64, test_per_class: int = 32, resolution: int = 16, seed: int = 0):
    """A generated, learnable dataset for unit tests: a fixed smooth pattern per class plus noise."""
    import torch
    import torch.nn.functional as F

    from rkd_search.trainer import dataset_from_tensors
    from rkd_search.trainer.data import Augmentation

    generator = torch.Generator().manual_seed(seed + 7919)
    patterns = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=generator), size=resolution, mode="bilinear")

    def draw(per_class: int):
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = 0.25 * torch.randn(len(labels), 3, resolution, resolution, generator=generator)
        images = ((patterns[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        return images, labels

    return dataset_from_tensors("synthetic", draw(train_per_class), draw(test_per_class), [f"class{i}" for i in range(num_classes)],
                                seed=seed, augmentation=Augmentation(crop_padding=0, flip=False), batch_size=32)


@pytest.fixture(scope="session")
def synthetic():
    return make_synthetic(seed=0)
