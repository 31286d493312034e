"""Each loss's defining properties, and agreement with the authors' formulations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rkd_search.trainer.losses import (
    gram_matrix,
    graph_rkd_loss,
    hinton_kd_loss,
    knn_mask,
    normalize_adjacency,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_graph,
)

B = 32


def features(*shape, seed=0, positive=True):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.relu() if positive else x


def graph_loss(student, teacher, **kwargs):
    return graph_rkd_loss([gram_matrix(s) for s in student], [gram_matrix(t) for t in teacher], **kwargs)


GRAPH_VARIANTS = [
    dict(similarity="cosine"),
    dict(similarity="cosine", k=5),
    dict(similarity="gaussian", bandwidth=0.5),
    dict(similarity="gaussian", bandwidth=2.0, k=8, power=2),
    dict(similarity="cosine", reduction="mean", layer_weights=[1.0, 3.0]),
]


@pytest.mark.parametrize("kwargs", GRAPH_VARIANTS)
def test_graph_loss_is_zero_when_student_equals_teacher(kwargs):
    maps = [features(B, 4, 8, 8), features(B, 16, seed=1)]
    assert graph_loss(maps, maps, **kwargs).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("kwargs", GRAPH_VARIANTS)
def test_graph_loss_handles_different_widths_and_is_positive(kwargs):
    teacher = [features(B, 16, 8, 8), features(B, 64, seed=1)]
    student = [features(B, 4, 8, 8, seed=2), features(B, 8, seed=3)]
    loss = graph_loss(student, teacher, **kwargs)
    assert torch.isfinite(loss) and loss.item() > 0


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda s, t: graph_loss([s], [t]),
        lambda s, t: graph_loss([s], [t], similarity="gaussian", k=4),
        lambda s, t: rkd_distance_loss(gram_matrix(s), gram_matrix(t)),
        lambda s, t: rkd_angle_loss(gram_matrix(s), gram_matrix(t)),
        lambda s, t: hinton_kd_loss(s, t),
    ],
    ids=["graph-cosine", "graph-gaussian-knn", "rkd-d", "rkd-a", "kd"],
)
def test_gradient_reaches_the_student_only(loss_fn):
    student = features(B, 10, seed=1).requires_grad_()
    teacher = features(B, 10, seed=2).requires_grad_()
    loss_fn(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_k_equal_to_batch_size_is_the_dense_graph():
    teacher, student = [features(B, 20)], [features(B, 6, seed=1)]
    dense = graph_loss(student, teacher)
    assert graph_loss(student, teacher, k=B).item() == pytest.approx(dense.item(), rel=1e-6)
    assert graph_loss(student, teacher, k=10 * B).item() == pytest.approx(dense.item(), rel=1e-6)
    assert graph_loss(student, teacher, k=3).item() < dense.item()


@pytest.mark.parametrize("similarity", ["cosine", "gaussian"])
def test_graphs_and_masks_are_symmetric_with_empty_diagonal(similarity):
    gram = gram_matrix(features(B, 12))
    weights = similarity_graph(gram, similarity, bandwidth=0.7)
    adjacency = normalize_adjacency(weights)
    mask = knn_mask(adjacency, 3)
    for matrix in (weights, adjacency, mask):
        torch.testing.assert_close(matrix, matrix.T)
    assert weights.diagonal().abs().max() == 0
    assert (mask.sum(1) >= 3).all()


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda s, t: graph_loss([s], [t]),
        lambda s, t: graph_loss([s], [t], similarity="gaussian", bandwidth=0.8, k=6),
        lambda s, t: rkd_distance_loss(gram_matrix(s), gram_matrix(t)),
        lambda s, t: rkd_angle_loss(gram_matrix(s), gram_matrix(t)),
    ],
    ids=["graph-cosine", "graph-gaussian", "rkd-d", "rkd-a"],
)
def test_scale_free_losses_ignore_feature_scale(loss_fn):
    student, teacher = features(B, 10, seed=1), features(B, 30, seed=2)
    reference = loss_fn(student, teacher).item()
    assert loss_fn(3.7 * student, teacher).item() == pytest.approx(reference, rel=1e-4)
    assert loss_fn(student, 0.01 * teacher).item() == pytest.approx(reference, rel=1e-4)


def test_mean_reduction_is_sum_over_batch_squared():
    teacher, student = [features(B, 20)], [features(B, 6, seed=1)]
    total = graph_loss(student, teacher, reduction="sum").item()
    assert graph_loss(student, teacher, reduction="mean").item() == pytest.approx(total / B**2, rel=1e-6)


def test_cosine_graph_matches_the_authors_construction():
    """graph_kd: L2-normalise, inner products, zero diagonal, D^-1/2 W D^-1/2, squared Frobenius."""
    s, t = features(B, 3, 4, 4, seed=1), features(B, 7, 4, 4, seed=2)

    def authors_graph(x):
        x = F.normalize(x.flatten(1), dim=1)
        w = x @ x.T
        w = w - torch.diag(torch.diag(w))
        d = w.sum(1).pow(-0.5)
        return d[:, None] * w * d[None, :]

    expected = (authors_graph(t) - authors_graph(s)).pow(2).sum()
    assert graph_loss([s], [t]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_knn_mask_uses_the_teachers_graph_on_both_sides():
    s, t = features(B, 5, seed=1), features(B, 9, seed=2)
    a_s = normalize_adjacency(similarity_graph(gram_matrix(s)))
    a_t = normalize_adjacency(similarity_graph(gram_matrix(t)))
    top = a_t.topk(4, dim=1).indices
    mask = torch.zeros(B, B).scatter_(1, top, 1.0)
    mask = torch.clamp(mask + mask.T, max=1)
    expected = ((a_t - a_s) * mask).pow(2).sum()
    assert graph_loss([s], [t], k=4).item() == pytest.approx(expected.item(), rel=1e-5)


def test_negative_features_and_zero_rows_stay_finite():
    student = features(B, 8, seed=1, positive=False).requires_grad_()
    teacher = features(B, 8, seed=2, positive=False)
    teacher[0] = 0.0
    loss = graph_loss([student], [teacher])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_rkd_matches_park_et_al_reference_code():
    """The RKD authors' pdist-based losses, computed directly from features."""

    def pdist(e, eps=1e-12):
        e_square = e.pow(2).sum(dim=1)
        prod = e @ e.t()
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt()
        res = res.clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    def distance(student, teacher):
        t_d = pdist(teacher)
        t_d = t_d / t_d[t_d > 0].mean()
        d = pdist(student)
        d = d / d[d > 0].mean()
        return F.smooth_l1_loss(d, t_d)

    def angle(student, teacher):
        td = teacher.unsqueeze(0) - teacher.unsqueeze(1)
        t_angle = torch.bmm(F.normalize(td, p=2, dim=2), F.normalize(td, p=2, dim=2).transpose(1, 2)).view(-1)
        sd = student.unsqueeze(0) - student.unsqueeze(1)
        s_angle = torch.bmm(F.normalize(sd, p=2, dim=2), F.normalize(sd, p=2, dim=2).transpose(1, 2)).view(-1)
        return F.smooth_l1_loss(s_angle, t_angle)

    s, t = features(16, 6, seed=1), features(16, 11, seed=2)
    assert rkd_distance_loss(gram_matrix(s), gram_matrix(t)).item() == pytest.approx(distance(s, t).item(), rel=1e-4)
    assert rkd_angle_loss(gram_matrix(s), gram_matrix(t)).item() == pytest.approx(angle(s, t).item(), rel=1e-3)


def test_rkd_zero_for_identical_features():
    x = features(B, 10)
    assert rkd_distance_loss(gram_matrix(x), gram_matrix(x)).item() == pytest.approx(0.0, abs=1e-8)
    assert rkd_angle_loss(gram_matrix(x), gram_matrix(x)).item() == pytest.approx(0.0, abs=1e-8)


def test_hinton_kd_scales_by_temperature_squared():
    student, teacher = torch.randn(B, 10), torch.randn(B, 10)
    for temperature in (1.0, 4.0):
        p_t = F.softmax(teacher / temperature, 1)
        kl = (p_t * (p_t.log() - F.log_softmax(student / temperature, 1))).sum(1).mean()
        assert hinton_kd_loss(student, teacher, temperature).item() == pytest.approx(
            (kl * temperature**2).item(), rel=1e-5
        )
    assert hinton_kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
