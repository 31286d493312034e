from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`), each worker gets its share of the cores, and so do the searches
    the tests start as subprocesses: N workers with all threads each would thrash."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_runtest_setup(item):
    """`--dist loadgroup` must keep each xdist_group on one worker (its session fixtures are built
    once); pytest 9.2 silently breaks that (pytest-dev/pytest-xdist#1386), so a broken grouping
    fails the grouped tests instead of slowing the run."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(f"--dist loadgroup did not group this test (pytest {pytest.__version__}, pytest-dev/pytest-xdist#1386): "
                    "install the test extras, which pin pytest<9.2", pytrace=False)


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
