from __future__ import annotations

import pytest

from rkd_search.search.tracking import Tracker, TrackingSettings


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    return Tracker(TrackingSettings(f"sqlite:///{folder}/mlflow.db", "loops"))
