from __future__ import annotations

import os

import pytest

from .helpers import add_decoy_packages, run_cli, search_args


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
def cifar_search(tmp_path_factory, cifar_dir):
    """A 3-trial search on the CIFAR-10 subset (its val/ split), from a folder with decoy packages."""
    root = tmp_path_factory.mktemp("cifar-search")
    add_decoy_packages(root)
    out = root / "out"
    result = run_cli(*search_args(out, 3, "--dataset", "imagefolder", "--data-dir", str(cifar_dir), "--teacher", "wrn16_1"),
                     cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """A real MLflow SQLite store for the in-process tests of a module."""
    from rkd_search.search.tracking import Tracker, TrackingSettings

    folder = tmp_path_factory.mktemp("mlflow")
    return Tracker(TrackingSettings(f"sqlite:///{folder}/mlflow.db", "loops"))
