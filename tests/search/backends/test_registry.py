"""The back-end seam: a back-end written in the tests (``inline``, a few dozen lines) runs a whole
search through the registry, and the command line offers what is registered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rkd_search.search import SearchOptions, UsageError, parse_budget
from rkd_search.search.backends import REGISTRY, get_backend, register_backend
from rkd_search.search.options import check

from . import inline


@pytest.fixture()
def inline_backend():
    register_backend("inline", "inline", "every trial in this process, one after another (a test back-end)", inline)
    inline.CALLS.clear()
    yield REGISTRY["inline"]
    REGISTRY.pop("inline", None)


def test_a_back_end_defined_in_the_tests_runs_a_search_through_the_registry(inline_backend, tmp_path):
    from rkd_search.search.driver import run_search
    from rkd_search.search.tracking import Tracker, TrackingSettings

    out = tmp_path / "out"
    cache = Path(os.environ.get("RKD_TEST_SHARED_CACHE") or tmp_path / "cache")
    options = SearchOptions(budget=parse_budget("4MFLOPs"), trials=2, dataset="digits", epochs=2, teacher_epochs=1, output=out,
                            tracking_uri=f"sqlite:///{out}/mlflow.db", cache_dir=cache, progress=False, backend="inline")
    front = run_search(options)
    assert inline.CALLS == ["check", "prepare", "connect", "run_trials", "close"]
    tracker = Tracker(TrackingSettings(f"sqlite:///{out}/mlflow.db", "rkd-search"))
    records = tracker.trial_records(tracker.latest_search(str(out.resolve())))
    assert len(records) == 2 and all(r.state == "complete" and r.epochs == 2 for r in records)
    assert front and all(r.pareto for r in front)


def test_the_command_line_offers_the_registered_back_ends_and_refuses_another_ones_flags(inline_backend):
    from rkd_search.search.cli import _search_parser

    parser = _search_parser()
    args = parser.parse_args(["--budget", "4M", "--backend", "inline"])
    assert args.backend == "inline" and "inline: every trial in this process" in parser.format_help()
    with pytest.raises(UsageError, match="--jobs is for the embedded back-end \\(--backend optuna\\)"):
        check(SearchOptions(budget=parse_budget("4M"), backend="inline", jobs=2))
    with pytest.raises(UsageError, match="unknown backend 'slurm': choose one of optuna, ray, inline"):
        get_backend("slurm")
