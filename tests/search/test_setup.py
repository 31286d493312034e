"""Validation: a complete, frozen setup, or one line that says what to fix; nothing created either way."""

from __future__ import annotations

import dataclasses

import pytest

from rkd_search.search import UsageError, parse_budget
from rkd_search.search.setup import SearchOptions, check_flags, check_limits_reachable, validate
from rkd_search.spaces import TrialContext, load_space


def options(tmp_path, **changes) -> SearchOptions:
    base = dict(budget=parse_budget("20MFLOPs"), trials=2, dataset="digits", epochs=1, output=tmp_path / "out",
                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", cache_dir=tmp_path / "cache", progress=False)
    return SearchOptions(**{**base, **changes})


def test_validation_gives_a_frozen_complete_setup_and_creates_nothing(tmp_path):
    setup = validate(options(tmp_path))
    assert setup.output == (tmp_path / "out").resolve() and setup.batch_size == 32 and setup.data.name == "digits"
    assert setup.study_settings["space"] == "default" and setup.teacher.spec.name == "wrn28_1"
    assert setup.context.budget_macs == 20e6
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.batch_size = 64
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, "--seed -1 is out of range"),
    ({"seed": 2**32}, "out of range"),
    ({"experiment": "  "}, "--experiment is empty"),
    ({"jobs": 2, "backend": "ray"}, "--jobs is for the embedded back-end"),
    ({"val_fraction": 0.0}, "--val-fraction 0.0 must be between 0 and 1"),
    ({"trials": 0}, "at least 1"),
])
def test_flags_are_checked_before_anything_is_read(tmp_path, changes, message):
    with pytest.raises(UsageError, match=message):
        check_flags(options(tmp_path, **changes))


@pytest.mark.parametrize("changes, message", [
    ({"max_params": 100.0}, "--max-params 100 is below the smallest student"),
    ({"max_activation_bytes": 1000.0}, "--max-activation-memory 1 kB is below"),
    ({"max_flash_bytes": 1000.0}, "--max-flash 1 kB is below"),
    ({"max_sram_bytes": 1000.0}, "--max-sram 1 kB is below"),
    ({"max_latency_ms": 1e-4}, "--max-latency-ms 0.0001 is below"),
])
def test_a_limit_no_student_of_the_space_can_meet_is_refused(tmp_path, changes, message):
    o = options(tmp_path, **changes)
    context = TrialContext(budget_macs=20e6, in_channels=3, num_classes=10, resolution=32, epochs=1)
    with pytest.raises(UsageError, match=message):
        check_limits_reachable(o, load_space("default"), context, tmp_path / "cache")


def test_limits_the_smallest_students_meet_pass(tmp_path):
    o = options(tmp_path, max_params=50_000.0, max_flash_bytes=256e3, max_sram_bytes=128e3, max_activation_bytes=512e3)
    context = TrialContext(budget_macs=20e6, in_channels=3, num_classes=10, resolution=32, epochs=1)
    check_limits_reachable(o, load_space("default"), context, tmp_path / "cache")


def test_a_rerun_with_other_flags_is_refused(tmp_path):
    from rkd_search.search.study import open_study

    setup = validate(options(tmp_path))
    (tmp_path / "out").mkdir()
    study = open_study(setup.output, ("maximize", "minimize"), "random", 0, 2)
    study.set_user_attr("rkd.settings", setup.study_settings)
    assert validate(options(tmp_path)).study_settings == setup.study_settings
    with pytest.raises(UsageError, match="holds a search with epochs = 1, not 2"):
        validate(options(tmp_path, epochs=2))
