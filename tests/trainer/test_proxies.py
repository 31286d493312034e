"""Zero-cost proxies, each on a case checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rkd_search.trainer import ModelSpec, TrainConfig, build_model, count_spec_ops
from rkd_search.trainer.losses import gram_matrix
from rkd_search.trainer.proxies import ZeroCostScorer, graph_similarity, naswot, synflow


def test_synflow_of_a_two_layer_linear_chain_matches_the_hand_computation():
    # |W1| = [[1, 2], [3, 4]], |W2| = [5, 6]; R = |W2| |W1| 1 = 5 * 3 + 6 * 7 = 57. Every layer's
    # sum of |theta * dR/dtheta| is R itself in a linear chain, so S = 2 R = 114.
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
        model[1].weight.copy_(torch.tensor([[5.0, -6.0]]))
    assert synflow(model, (2,)) == pytest.approx(math.log(114))
    assert model[0].weight[0, 1] == -2.0, "the model itself is left unchanged"


def test_synflow_sees_through_relu6():
    """An all-ones input drives ReLU6 units past 6, where they have no gradient: replaced by ReLU."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU6(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(10.0)
        model[2].weight.fill_(2.0)
    assert synflow(model, (1,)) == pytest.approx(math.log(2 * 20.0))


def _identity_then(*activations: nn.Module) -> nn.Module:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
    return nn.Sequential(layer, *activations)


class TorchRelu(nn.Module):
    def forward(self, x):
        return torch.relu(x)


def test_naswot_of_three_known_codes_matches_the_hand_computation():
    # codes [1, 0], [0, 1], [1, 1]; N_A = 2: K = [[2, 0, 1], [0, 2, 1], [1, 1, 2]], det K = 2 * 3 - 0 + 1 * (0 - 2) = 4
    images = torch.tensor([[1.0, -1.0], [-2.0, 3.0], [0.5, 0.5]])
    assert naswot(_identity_then(nn.ReLU()), images) == pytest.approx(math.log(4))
    # torch.relu then ReLU6 (as the residual and the mobile blocks call them): each unit counted at each call,
    # once (nn.ReLU6's inner calls are not counted again): K doubles, det K = 2^3 * 4
    assert naswot(_identity_then(TorchRelu(), nn.ReLU6()), images) == pytest.approx(math.log(32))
    # two images with one code: K is singular
    assert naswot(_identity_then(nn.ReLU()), torch.tensor([[1.0, -1.0], [2.0, -5.0], [0.5, 0.5]])) == float("-inf")


@pytest.mark.parametrize("name", ["wrn10_0.5", "resnet8_1", "mbv2-1-2-1_0.5_e2k3"])
def test_naswot_scores_every_family(name, synthetic):
    images = synthetic.train_images[:32].float() / 255
    score = naswot(build_model(ModelSpec.parse(name, 3, 4)), images)
    assert math.isfinite(score) and score > 0


class FixedTeacher:
    def __init__(self, grams):
        self.grams = grams

    def batch(self, epoch, index, images, stages):
        return None, {s: self.grams[index][s] for s in stages}


def test_the_graph_proxy_is_zero_for_the_teachers_own_geometry_and_negative_otherwise(synthetic):
    spec = ModelSpec("wrn", 10, 0.5, num_classes=4)
    torch.manual_seed(0)
    model = build_model(spec)
    from rkd_search.trainer.batches import train_batches

    own = []
    model.train()
    with torch.no_grad():
        for index, (images, _) in enumerate(train_batches(synthetic, 32, 0, 0)):
            if index == 2:
                break
            own.append({s + 1: gram_matrix(f) for s, f in enumerate(model.forward_with_features(images)[1])})
    torch.manual_seed(0)
    same = graph_similarity(build_model(spec), synthetic, FixedTeacher(own), batch_size=32, seed=0)
    assert same == pytest.approx(0.0, abs=1e-6)
    other = [{s: torch.eye(32) + 0.5 for s in (1, 2, 3)} for _ in range(2)]
    torch.manual_seed(0)
    assert graph_similarity(build_model(spec), synthetic, FixedTeacher(other), batch_size=32, seed=0) < -0.01


def test_the_scorer_gives_every_proxy_and_parameters_alone_memoised(synthetic):
    from rkd_search.trainer import TeacherTargets

    teacher = build_model(ModelSpec("wrn", 10, 0.5, num_classes=4))
    targets = TeacherTargets.compute(teacher, synthetic, epochs=1, batch_size=32)
    scorer = ZeroCostScorer(synthetic, targets)
    small = scorer(TrainConfig(student=ModelSpec("wrn", 10, 0.25), batch_size=32))
    large = scorer(TrainConfig(student=ModelSpec("wrn", 10, 1.0), batch_size=32))
    assert set(small) == {"graph", "synflow", "naswot", "params", "macs"}
    assert small["macs"] == count_spec_ops(ModelSpec("wrn", 10, 0.25, num_classes=4), synthetic.resolution).macs
    assert small["params"] == sum(p.numel() for p in build_model(ModelSpec("wrn", 10, 0.25, num_classes=4)).parameters())
    assert large["params"] > small["params"] and large["synflow"] > small["synflow"] and small["graph"] <= 0
    assert scorer(TrainConfig(student=ModelSpec("wrn", 10, 0.25), batch_size=32)) == small and len(scorer.scores) == 2


def test_the_semantic_term_reads_the_classifiers_cross_entropy_gradient():
    from rkd_search.trainer.proxies import _last_map_and_logits, classifier_gradient

    torch.manual_seed(0)
    model = build_model(ModelSpec("mbv2", 3, width=0.25, stage_depths=(1, 1, 1), num_classes=3))
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 2, 1, 2])
    logits, pooled, last_map = _last_map_and_logits(model, images)
    nn.functional.cross_entropy(logits, labels).backward()
    assert torch.allclose(classifier_gradient(logits.detach(), pooled.detach(), labels), model.fc.weight.grad.double(), atol=1e-6)
    assert last_map.dim() == 4 and last_map.shape[1] == pooled.shape[1], "the map before pooling, not the pooled vector"


class _Fixed(nn.Module):
    """A network whose outputs are given: the last map before pooling, the pooled vector, the logits."""

    def __init__(self, last_map, pooled, logits):
        super().__init__()
        self.pool = nn.Identity()
        self.last_map, self.pooled, self.logits = last_map, pooled, logits

    def forward_with_features(self, x):
        self.pool(self.last_map)
        return self.logits, [x, x, self.pooled]


def test_diswot_of_a_hand_checked_pair():
    from rkd_search.trainer.proxies import diswot

    labels, logits, pooled = torch.tensor([0, 1]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    # Student maps [1, 0] and [0, 1]: Gram I, rows already unit. Teacher maps [1, 0] and [1, 0]: Gram all
    # ones, rows (a, a) with a = 1/sqrt(2). || . ||_F^2 = 2 (1 - a)^2 + 2 a^2 = 4 - 2 sqrt(2), over B^2 = 4.
    student = _Fixed(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), pooled, logits)
    teacher = _Fixed(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), pooled, logits)
    scores = diswot(student, teacher, torch.zeros(2, 1), labels)
    assert scores["semantic"] == pytest.approx(0.0), "same logits and classifier input: same class correlations"
    assert scores["relation"] == pytest.approx(1 - math.sqrt(2) / 2)
    assert scores["diswot"] == pytest.approx(-(1 - math.sqrt(2) / 2))
    # The same network as its own teacher is as close as can be.
    assert diswot(teacher, teacher, torch.zeros(2, 1), labels) == {"diswot": 0.0, "semantic": 0.0, "relation": 0.0}
