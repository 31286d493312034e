from __future__ import annotations

import os

import pytest

from .helpers import add_decoy_packages, run_cli, search_args


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One cache of teachers, teacher targets and decoded datasets for the session's searches."""
    path = tmp_path_factory.mktemp("shared-cache")
    os.environ["RKD_TEST_SHARED_CACHE"] = str(path)
    yield path
    os.environ.pop("RKD_TEST_SHARED_CACHE", None)


@pytest.fixture(scope="session")
def cifar_lite_dir(tmp_path_factory, cifar_dir):
    """The CIFAR-10 subset with fewer images per class (links to its files): 200 training, 50
    validation and 100 test images: searches train and evaluate fast, and exports are checked on
    every one of these 1,000 test images (the int8 checks compare the exported and the PyTorch
    student on the same images, so the paired difference is what counts)."""
    root = tmp_path_factory.mktemp("cifar-lite")
    for split, count in (("train", 200), ("val", 50), ("test", 100)):
        for folder in sorted((cifar_dir / split).iterdir()):
            target = root / split / folder.name
            target.mkdir(parents=True)
            for path in sorted(folder.iterdir())[:count]:
                (target / path.name).symlink_to(path)
    return root


@pytest.fixture(scope="session", autouse=True)
def empty_store(tmp_path_factory):
    """An MLflow SQLite store with its schema and nothing else, copied into each new search's folder."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates the schema
    os.environ["RKD_TEST_EMPTY_STORE"] = str(path)
    yield path
    os.environ.pop("RKD_TEST_EMPTY_STORE", None)


@pytest.fixture(scope="session")
def digits_search(tmp_path_factory):
    """A 3-trial digits search, started from a folder holding a user's own search/, spaces/ and trainer/."""
    root = tmp_path_factory.mktemp("digits-search")
    add_decoy_packages(root)
    result = run_cli(*search_args(root / "out", 3, "--dataset", "digits"), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="session")
def cifar_search(tmp_path_factory, cifar_lite_dir):
    """A 3-trial search on CIFAR-10 images (``cifar_lite_dir``, with its val/ split), from a folder
    with decoy packages: 3 epochs of batches of 64 (93 steps) get its students well above chance
    (about 30%; 1,000 images and 16 steps left them at chance and the front empty)."""
    root = tmp_path_factory.mktemp("cifar-search")
    add_decoy_packages(root)
    out = root / "out"
    result = run_cli(*search_args(out, 3, "--dataset", "imagefolder", "--data-dir", str(cifar_lite_dir), "--teacher", "wrn16_1",
                                  "--batch-size", "64", epochs=3), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """A real MLflow SQLite store for the in-process tests of a module."""
    from rkd_search.search.tracking import Tracker, TrackingSettings

    folder = tmp_path_factory.mktemp("mlflow")
    return Tracker(TrackingSettings(f"sqlite:///{folder}/mlflow.db", "loops"))
