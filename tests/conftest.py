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


@pytest.fixture(scope="session")
def synthetic():
    from trainer import load_dataset

    return load_dataset("synthetic", seed=0)
