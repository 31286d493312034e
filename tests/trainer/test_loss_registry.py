"""The loss seam: a term added as one module (``logit_loss``) is picked up by the trainer's config
and loss mix, by the search-space schema and the define-by-run function, and by the command line."""

from __future__ import annotations

import optuna
import pytest
import torch

from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig, build_model, fit
from rkd_search.trainer.losses import loss_terms, unregister_loss

from . import logit_loss

SPACE = """
name: logits
student:
  family: wrn
  depth: {wrn: [10]}
  width: {low: 0.25, high: 0.5, step: 0.125}
loss:
  kd_weight: 0.0
  logit_l2_weight: {low: 0.1, high: 1.0}
"""


@pytest.fixture()
def logit_l2():
    term = logit_loss.register()
    yield term
    unregister_loss(term.name)


def test_the_built_in_terms_are_registered_in_the_order_of_the_mix():
    assert [term.name for term in loss_terms()] == ["ce", "kd", "graph", "rkd_distance", "rkd_angle"]


def test_a_loss_of_one_module_is_picked_up_by_the_config_and_the_mix(logit_l2, synthetic):
    config = LossConfig(weights={"logit_l2_weight": 0.5})
    assert config.weight_of(logit_l2) == 0.5 and config.needs_teacher and config.relational_stages == ()
    assert LossConfig.__init__ and TrainConfig.from_dict(TrainConfig(student=ModelSpec("wrn", 10, 0.25), loss=config).to_dict()).loss == config
    with pytest.raises(ValueError, match="unknown loss weight 'nope_weight'"):
        LossConfig(weights={"nope_weight": 1.0})
    with pytest.raises(ValueError, match="loss.logit_l2_weight must be a finite number"):
        LossConfig(weights={"logit_l2_weight": float("nan")})
    torch.manual_seed(0)
    teacher = build_model(ModelSpec("wrn", 10, 0.5, num_classes=4)).eval()
    result = fit(TrainConfig(student=ModelSpec("wrn", 10, 0.25), loss=config, epochs=1, batch_size=32, precision="fp32"), synthetic,
                 teacher=teacher)
    parts = result.history[0].loss_parts
    assert set(parts) == {"ce", "logit_l2"} and parts["logit_l2"] > 0


def test_a_loss_of_one_module_is_searched_by_a_space_file_and_listed_by_the_command_line(logit_l2, tmp_path):
    from rkd_search.search.cli import _search_parser
    from rkd_search.spaces import SpaceError, TrialContext, load_space

    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(tmp_path / "space.yaml")
    context = TrialContext(budget_macs=20e6, in_channels=3, num_classes=10, resolution=32, epochs=2)
    plan = space.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), context)
    weight = plan.params["loss.logit_l2_weight"]
    assert 0.1 <= weight <= 1.0 and plan.config.loss.weight_of(logit_l2) == weight
    (tmp_path / "bad.yaml").write_text(SPACE.replace("logit_l2_weight", "logit_l3_weight"))
    with pytest.raises(SpaceError, match="loss.logit_l3_weight: unknown key .*logit_l2_weight"):
        load_space(tmp_path / "bad.yaml")
    assert "logit_l2_weight: mean squared logit difference" in " ".join(_search_parser().format_help().split())
