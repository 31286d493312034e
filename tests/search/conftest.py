from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import add_decoy_packages, imagefolder_subset, mlflow_runs, run_cli, search_args


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One cache of teachers, teacher targets and decoded datasets for the session's searches, and
    for every pytest-xdist worker's (each entry is keyed by what it depends on and written
    atomically, as a user's cache shared by concurrent searches): the digits teacher is trained once."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-cache"
    path.mkdir(exist_ok=True)
    os.environ["RKD_TEST_SHARED_CACHE"] = str(path)
    yield path
    os.environ.pop("RKD_TEST_SHARED_CACHE", None)


@pytest.fixture(scope="session")
def cifar_lite_dir(tmp_path_factory, cifar_dir):
    """The CIFAR-10 subset with fewer images per class (links to its files): 200 training, 50
    validation and 100 test images: searches train and evaluate fast, and exports are checked on
    every one of these 1,000 test images (the int8 checks compare the exported and the PyTorch
    student on the same images, so the paired difference is what counts)."""
    return imagefolder_subset(cifar_dir, tmp_path_factory.mktemp("cifar-lite"), {"train": 200, "val": 50, "test": 100})


@pytest.fixture(scope="session", autouse=True)
def empty_store(tmp_path_factory):
    """An MLflow SQLite store with its schema and nothing else, copied into each new search's folder."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates the schema
    os.environ["RKD_TEST_EMPTY_STORE"] = str(path)
    yield path
    os.environ.pop("RKD_TEST_EMPTY_STORE", None)


@dataclass(frozen=True)
class DigitsSearch:
    """The session's digits search: 3 trials of 2 epochs, then the same command with 4 trials."""

    root: Path
    out: Path
    first: subprocess.CompletedProcess
    first_runs: frozenset[str]
    """The trial run ids in the store after the first command."""
    trained_first: frozenset[str]
    """Of those, the trials it trained."""
    second: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def digits_search(tmp_path_factory) -> DigitsSearch:
    """A 3-trial digits search of 2 epochs, started from a folder holding a user's own search/,
    spaces/ and trainer/, then resumed with ``--trials 4``: the tests that read a search (its store,
    its exports, the MLflow UI) and the test of resuming share these two commands."""
    root = tmp_path_factory.mktemp("digits-search")
    add_decoy_packages(root)
    out = root / "out"
    first = run_cli(*search_args(out, 3, "--dataset", "digits", epochs=2), cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    _, _, _, children = mlflow_runs(out)
    runs = frozenset(c.info.run_id for c in children)
    trained = frozenset(c.info.run_id for c in children if c.data.tags["rkd.state"] == "complete")
    second = run_cli(*search_args(out, 4, "--dataset", "digits", epochs=2), cwd=root)
    assert second.returncode == 0, second.stderr[-3000:]
    return DigitsSearch(root, out, first, runs, trained, second)


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
