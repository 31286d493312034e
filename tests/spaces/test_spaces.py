"""Search-space files: validation that names the bad key, and the define-by-run function."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from rkd_search.spaces import SpaceError, TrialContext, builtin_spaces, load_space
from rkd_search.trainer import ModelSpec, count_spec_ops

CONTEXT = TrialContext(budget_macs=20e6, in_channels=3, num_classes=10, resolution=32, epochs=2)
MINIMAL = """
name: tiny
student:
  family: wrn
  depth: {wrn: [10, 16]}
  width: {low: 0.25, high: 1.0, step: 0.125}
"""


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_spaces_load_by_name():
    assert {"default", "wrn"} <= set(builtin_spaces())
    for name in builtin_spaces():
        assert load_space(name).name == name


@pytest.mark.parametrize(
    "edit, message",
    [
        (MINIMAL + "graph:\n  kk: 3\n", "graph.kk: unknown key"),
        (MINIMAL + "loss:\n  graph_weight: {low: 10, high: 1}\n", "loss.graph_weight.*low .* must be below high"),
        (MINIMAL.replace("family: wrn", "family: vgg").replace("{wrn:", "{vgg:"), "unknown family 'vgg'"),
        (MINIMAL.replace("[10, 16]", "[10, 17]"), r"depth 17 is invalid"),
        (MINIMAL + "graph:\n  layers: [[1, 5]]\n", "graph: .*layers must be lists of stages"),
        (MINIMAL + "graph:\n  similarity: [cosine, rbf]\n", "graph.similarity: unknown similarity 'rbf'"),
        (MINIMAL.replace("name: tiny\n", ""), "name: required key missing"),
        (MINIMAL + "optim: [1, 2\n", "not valid YAML"),
        (MINIMAL + "enqueue:\n  - {family: wrn, depth: 28, width: 0.5}\n", r"enqueue\[0\]: wrn28 is outside"),
        (MINIMAL + "graph:\n  gaussian_weight: {low: 0, high: 4}\n", "graph.gaussian_weight: must be positive"),
        (MINIMAL + "enqueue:\n  - {family: wrn, depth: 16, width: 0.5, budget_share: 0.5}\n", "budget_share 0.5 needs width: max"),
        (MINIMAL + "enqueue:\n  - {family: wrn, depth: 16, width: max, budget_share: 0}\n", "budget_share.*greater than 0"),
        (MINIMAL + "graph:\n  gaussian_weight: 1.0\nloss:\n  graph_weight: [0.0, 25.0]\n", "gaussian_weight needs a loss.graph_weight above 0"),
        (MINIMAL.replace("{low: 0.25, high: 1.0, step: 0.125}", "wide"), "student.width: write one width .* or a range"),
        (MINIMAL.replace("{low: 0.25, high: 1.0, step: 0.125}", "-0.5"), "student.width: must be positive"),
    ],
)
def test_invalid_spaces_name_the_bad_key(tmp_path, edit, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write(tmp_path, edit))


def test_a_fixed_width_is_a_grid_of_that_one_width(tmp_path):
    space = load_space(write(tmp_path, MINIMAL.replace("{low: 0.25, high: 1.0, step: 0.125}", "0.5")))
    assert space.width_grid() == [0.5]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert space.suggest(trial, CONTEXT).config.student.width == 0.5


def test_missing_space_file_and_unknown_name(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="unknown space 'nope'.*default"):
        load_space("nope")


def test_suggest_builds_a_complete_config_with_dotted_params():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    plan = load_space("default").suggest(study.ask(), CONTEXT)
    assert plan.config.epochs == 2 and plan.config.student.num_classes == 10
    for key in ("student.family", "student.depth", "student.width", "loss.graph_weight", "optim.lr", "train.epochs"):
        assert key in plan.params
    if plan.config.loss.graph_weight > 0:
        assert {"graph.similarity", "graph.k", "graph.layers"} <= set(plan.params)
    assert plan.ops == count_spec_ops(plan.config.student, 32)


def test_budget_aware_widths_keep_candidates_within_budget():
    space = load_space("default")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    plans = []
    for _ in range(40):
        trial = study.ask()
        plans.append(space.suggest(trial, CONTEXT))
        study.tell(trial, [0.5, plans[-1].ops.macs])
    assert all(p.feasible for p in plans)
    assert max(p.ops.macs for p in plans) > 0.6 * CONTEXT.budget_macs  # the range is used, not just tiny students
    widths = {p.config.student.width for p in plans}
    assert len(widths) > 5


def test_without_budget_awareness_many_candidates_are_over_budget(tmp_path):
    text = load_space("default").text.replace("budget_aware: true", "budget_aware: false")
    space = load_space(write(tmp_path, text))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    over = sum(not space.suggest(study.ask(), CONTEXT).feasible for _ in range(40))
    assert over >= 8


GAUSSIAN_SPACE = MINIMAL + """graph:
  similarity: [cosine, gaussian]
  gaussian_weight: {low: 0.25, high: 4.0, log: true}
loss:
  graph_weight: {low: 5.0, high: 250.0, log: true}
"""


def test_a_gaussian_graph_draws_its_own_weight_and_a_cosine_graph_the_loss_weight(tmp_path):
    """The Gaussian graph is far steeper at initialisation, so the space can give it its own weight
    range: every Gaussian trial's weight comes from it, every cosine trial's from loss.graph_weight,
    and the trial's Optuna parameters hold only the weight that was used."""
    space = load_space(write(tmp_path, GAUSSIAN_SPACE))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        plan = space.suggest(trial, CONTEXT)
        loss = plan.config.loss
        seen.add(loss.similarity)
        assert plan.params["loss.graph_weight"] == loss.graph_weight
        if loss.similarity == "gaussian":
            assert 0.25 <= loss.graph_weight <= 4.0 and trial.params["graph.gaussian_weight"] == loss.graph_weight
            assert "loss.graph_weight" not in trial.params
        else:
            assert 5.0 <= loss.graph_weight <= 250.0 and "graph.gaussian_weight" not in trial.params
        study.tell(trial, [0.5, plan.ops.macs])
    assert seen == {"cosine", "gaussian"}
    # without gaussian_weight both similarities share loss.graph_weight, as before
    shared = load_space(write(tmp_path, GAUSSIAN_SPACE.replace("  gaussian_weight: {low: 0.25, high: 4.0, log: true}\n", ""), "shared.yaml"))
    gaussian = [loss for loss in (shared.suggest(study.ask(), CONTEXT).config.loss for _ in range(20)) if loss.similarity == "gaussian"]
    assert gaussian and all(loss.graph_weight >= 5.0 for loss in gaussian)


def test_enqueued_students_are_built_first():
    """The default space's hand-picked students, in order: a shallow MobileNetV2 at the widest width
    within a fifth of the budget and the 2-3-3 MobileNetV2 within half of it (the next grid width is
    over that share), then the paper's WRN-28-0.5 and the ResNet-20 and MobileNetV2 at the widest that fit."""
    space = load_space("default")
    study = optuna.create_study(directions=["maximize", "minimize"])
    for params in space.enqueued_params(CONTEXT):
        study.enqueue_trial(params)
    plans = [space.suggest(study.ask(), CONTEXT) for _ in range(5)]
    assert [p.config.student.name for p in plans] == ["mbv2-2-2-1_0.5_e2k5", "mbv2-2-3-3_0.4375_e6k3", "wrn28_0.5",
                                                      "resnet20_0.6875", "mbv2-2-3-3_0.75_e6k3"]
    for plan, share in zip(plans, (0.2, 0.5, 1.0, 1.0, 1.0)):
        assert plan.ops.macs <= share * CONTEXT.budget_macs
        if plan.config.student.family != "wrn":
            wider = replace(plan.config.student, width=plan.config.student.width + 0.0625)
            assert count_spec_ops(wider, 32).macs > share * CONTEXT.budget_macs
    # each with its own recipe: the shallow one's (the recipe TPE found), the 2-3-3 one's shared at half and at the budget
    assert [(p.config.loss.kd_weight, p.config.loss.graph_weight, p.config.lr) for p in plans if p.config.student.family == "mbv2"] == [
        (0.7, 0.8, 0.15), (0.5, 25.0, 0.1), (0.5, 25.0, 0.1)]


def test_a_budget_share_no_width_meets_leaves_its_student_out(tmp_path):
    seeds = ("enqueue:\n  - {family: wrn, depth: 16, width: max, budget_share: 0.01}\n"
             "  - {family: wrn, depth: 16, width: max, budget_share: 0.5}\n")
    for budget_aware in ("true", "false"):
        text = MINIMAL.replace("student:\n", f"student:\n  budget_aware: {budget_aware}\n") + seeds
        space = load_space(write(tmp_path, text))
        points = space.enqueued_params(CONTEXT)
        assert len(points) == 1, budget_aware  # wrn16 at width 0.25 is over 1% of 20 M MACs
        study = optuna.create_study(directions=["maximize", "minimize"])
        study.enqueue_trial(points[0])
        plan = space.suggest(study.ask(), CONTEXT)
        assert plan.ops.macs <= 10e6 and plan.config.student.width == 0.5, budget_aware  # 0.625 is over half


def test_smallest_student_is_the_cheapest_the_space_allows():
    spec, ops = load_space("default").smallest_student(CONTEXT)
    assert spec.width == 0.25 and ops.macs < 2e6
    # one block per stage, the smallest expansion: cheaper than the shallowest, narrowest residual networks
    assert spec.name == "mbv2-1-1-1_0.25_e2k3"
    for family, depth in (("resnet", 8), ("wrn", 10)):
        assert ops.macs < count_spec_ops(ModelSpec(family, depth, 0.25, num_classes=10), 32).macs
