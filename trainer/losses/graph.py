"""Graph-based relative knowledge distillation.

Lassance, Bontonou, Boukli Hacene, Gripon, Tang, Ortega, "Deep geometric knowledge distillation
with graphs", ICASSP 2020 (arXiv:1911.03080); code: github.com/cadurosar/graph_kd.

For each tapped layer l, the batch's samples are the vertices of a graph whose weights are the
similarities of their features: W_ij = cos(x_i, x_j) (the authors' choice) or a Gaussian kernel
exp(-||x_i - x_j||^2 / (2 sigma^2)) with sigma = bandwidth x the batch's median pairwise distance.
The diagonal is set to 0 and the graph normalised, A = D^-1/2 W D^-1/2. Optionally only each row's
k largest entries of the teacher's A are kept (mask made symmetric, applied to both graphs after
normalising), and powers A^p are compared. The loss is

    L_graph = sum_l w_l ||A_T^l - A_S^l||_F^2 / sum_l w_l,

summed over the B^2 entries ("sum", as in the authors' runs with lambda = 25) or averaged
("mean", their first version: B^2 times smaller). Both graphs are scale-free: multiplying a
layer's features by a constant changes neither.

The Gaussian graph is much steeper than the cosine one where the batch's points sit close
together, as the pooled last stage of a freshly initialised student does: dW/dd grows as
1/sigma^2 with sigma the median distance. Measured on WRN-28-1 -> WRN-28-0.5 (CIFAR-10 subset) at
initialisation, its gradient norm per unit weight on stage 3 is 6.7 against 0.03 for the cosine
graph (CE: 1.8; `python bench/graph_gradients.py`); at the authors' lambda = 25 training collapses
to chance, at lambda = 1 it trains (`python bench/compare_methods.py`).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

from ._gram import squared_distances
from ._registry import LossTerm, register_loss

Similarity = Literal["cosine", "gaussian"]
Reduction = Literal["sum", "mean"]


def similarity_graph(gram: Tensor, similarity: Similarity = "cosine", bandwidth: float = 1.0) -> Tensor:
    """The B x B similarity matrix W of one layer (zero diagonal), from its Gram matrix."""
    eye = torch.eye(len(gram), device=gram.device, dtype=torch.bool)
    if similarity == "cosine":
        norms = gram.diagonal().clamp_min(1e-12).sqrt()
        weights = gram / (norms[:, None] * norms[None, :])
    elif similarity == "gaussian":
        d2 = squared_distances(gram)
        off_diagonal = d2[~eye]
        median = off_diagonal.detach().sqrt().median()
        sigma2 = (bandwidth * median).clamp_min(1e-12) ** 2
        weights = torch.exp(-d2 / (2 * sigma2))
    else:
        raise ValueError(f"unknown similarity {similarity!r}: use 'cosine' or 'gaussian'")
    return weights.masked_fill(eye, 0.0)


def normalize_adjacency(weights: Tensor, eps: float = 1e-8) -> Tensor:
    """A = D^-1/2 W D^-1/2, with D the row sums of W.

    A vertex whose degree is zero or negative (possible when features can be negative, so cosine
    similarities are) gets D^-1/2 = 0: it is isolated instead of producing inf or NaN.
    """
    degree = weights.sum(dim=1)
    inv_sqrt = torch.where(degree > eps, degree.clamp_min(eps).rsqrt(), torch.zeros_like(degree))
    return inv_sqrt[:, None] * weights * inv_sqrt[None, :]


def knn_mask(adjacency: Tensor, k: int | None) -> Tensor | None:
    """Symmetric mask keeping each row's k largest entries: M = min(1, M + M^T).

    ``None`` (dense) when k is None or k >= B, the authors' default k = batch size.
    """
    size = len(adjacency)
    if k is None or k >= size:
        return None
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    top = adjacency.topk(k, dim=1).indices
    mask = torch.zeros_like(adjacency).scatter_(1, top, 1.0)
    return (mask + mask.T).clamp_max(1.0)


def graph_rkd_loss(
    student_grams: Sequence[Tensor],
    teacher_grams: Sequence[Tensor],
    *,
    similarity: Similarity = "cosine",
    k: int | None = None,
    bandwidth: float = 1.0,
    power: int = 1,
    layer_weights: Sequence[float] | None = None,
    reduction: Reduction = "sum",
) -> Tensor:
    """Weighted mean over layers of ||A_T - A_S||_F^2 between the teacher's and student's graphs.

    Takes one Gram matrix per tapped layer (see ``gram_matrix``) for each network, so teacher and
    student widths never need to match. The teacher's side carries no gradient.
    """
    if len(student_grams) != len(teacher_grams) or not student_grams:
        raise ValueError("graph_rkd_loss needs one student and one teacher Gram matrix per layer")
    if power < 1:
        raise ValueError(f"power must be >= 1, got {power}")
    weights = list(layer_weights) if layer_weights is not None else [1.0] * len(student_grams)
    if len(weights) != len(student_grams):
        raise ValueError("layer_weights needs one weight per tapped layer")
    total = student_grams[0].new_zeros(())
    for student_gram, teacher_gram, weight in zip(student_grams, teacher_grams, weights):
        with torch.no_grad():
            teacher = normalize_adjacency(similarity_graph(teacher_gram.float(), similarity, bandwidth))
            mask = knn_mask(teacher, k)
            teacher = torch.linalg.matrix_power(teacher, power) if power > 1 else teacher
        student = normalize_adjacency(similarity_graph(student_gram.float(), similarity, bandwidth))
        student = torch.linalg.matrix_power(student, power) if power > 1 else student
        difference = teacher - student
        if mask is not None:
            difference = difference * mask
        squared = difference.square()
        layer_loss = squared.sum() if reduction == "sum" else squared.mean()
        total = total + weight * layer_loss
    return total / sum(weights)


def _graph_term(config, batch) -> Tensor:
    return graph_rkd_loss([batch.student_grams[s] for s in config.layers], [batch.teacher_grams[s] for s in config.layers],
                          similarity=config.similarity, k=config.k, bandwidth=config.bandwidth, power=config.power,
                          layer_weights=config.layer_weights, reduction=config.reduction)


register_loss(LossTerm("graph", "graph_weight", _graph_term, stages=lambda config: tuple(config.layers),
                       summary="graph-based relative KD on the graph.layers stages (Lassance et al. 2020)"))
