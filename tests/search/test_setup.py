"""Validation: a complete, frozen setup, or one line that says what to fix; nothing created either way."""

from __future__ import annotations

import dataclasses

import pytest

from rkd_search.search import UsageError, parse_budget
from rkd_search.search.options import SearchOptions
from rkd_search.search.options import check as check_flags
from rkd_search.search.setup import check_limits_reachable, validate
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


@pytest.mark.parametrize("family, depth", [("wrn", 10), ("resnet", 8), ("mbv2", 3)])
def test_every_cost_is_counted_at_the_images_real_height_and_width(tmp_path, family, depth):
    """Tall 64x32 images (height 64): a trial's MACs are thop's count on a (1, 3, 64, 32) input, and its
    activation memory and SRAM lie between the 32x32 and 64x64 ones (they were counted at 32x32)."""
    import thop
    import torch
    from optuna.trial import FixedTrial
    from PIL import Image

    from rkd_search.trainer import build_model
    from rkd_search.trainer.ops import int8_sram_bytes, peak_activation_bytes

    for split in ("train", "test"):
        for index, name in enumerate(("a", "b")):
            (tmp_path / "tall" / split / name).mkdir(parents=True)
            for number in range(6):
                Image.new("RGB", (32, 64), (40 * index + number, 90, 200)).save(tmp_path / "tall" / split / name / f"{number}.png")
    setup = validate(options(tmp_path, dataset="imagefolder", data_dir=str(tmp_path / "tall"), budget=parse_budget("200MFLOPs"),
                             batch_size=4))
    assert setup.data.resolution == (64, 32) and setup.context.resolution == (64, 32)
    space = load_space("default")
    fixed = {"student.family": family, "student.width_fill": 0.0, "loss.graph_weight": 1.0, "loss.kd_weight": 0.0,
             "graph.similarity": "cosine", "graph.k": 128, "graph.layers": "1,2,3", "optim.lr": 0.1, "optim.weight_decay": 5e-4,
             "optim.schedule": "cosine"}
    if family == "mbv2":
        fixed.update({f"student.mbv2.depth.{i}": 1 for i in (1, 2, 3)} | {"student.mbv2.expansion": 2, "student.mbv2.kernel": 3})
    else:
        fixed[f"student.{family}.depth"] = depth
    plan = space.suggest(FixedTrial(fixed), setup.context)
    spec = plan.config.student
    macs, _ = thop.profile(build_model(spec).eval(), inputs=(torch.zeros(1, 3, 64, 32),), verbose=False)
    assert plan.ops.macs == int(macs)
    assert peak_activation_bytes(spec, 32) < plan.activation_bytes < peak_activation_bytes(spec, 64)
    assert int8_sram_bytes(spec, 32) < plan.measures["sram_bytes"] < int8_sram_bytes(spec, 64)
