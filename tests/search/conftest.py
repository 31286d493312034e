from __future__ import annotations

import pytest

from .helpers import add_decoy_packages, run_cli, search_args


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
    """A 3-trial search on the CIFAR-10 subset (2 epochs), from a folder with decoy packages."""
    root = tmp_path_factory.mktemp("cifar-search")
    add_decoy_packages(root)
    out = root / "out"
    args = ["--budget", "20MFLOPs", "--trials", "3", "--epochs", "2", "--teacher-epochs", "2", "--dataset", "imagefolder",
            "--data-dir", str(cifar_dir), "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db", "--no-progress"]
    result = run_cli(*args, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out
