from __future__ import annotations

import pytest

from .helpers import run_cli, search_args


@pytest.fixture(scope="session")
def digits_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-search")
    result = run_cli(*search_args(root / "out", 3, "--dataset", "digits"), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


