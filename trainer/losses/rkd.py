"""Relational knowledge distillation, distance and angle terms.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv:1904.05068).

RKD-D: psi_D(x_i, x_j) = ||x_i - x_j|| / mu, with mu the mean off-diagonal distance of the batch;
loss = Huber(psi_D^S, psi_D^T) averaged over the B^2 pairs (weight 25 in the paper).
RKD-A: psi_A(x_i, x_j, x_k) = <e_ji, e_ki>, e_ji the unit vector from x_i to x_j;
loss = Huber(psi_A^S, psi_A^T) averaged over the B^3 triplets (weight 50). It builds B x B x B
tensors: cheap at B = 128, heavy at B = 512.

Both are computed from the batch's Gram matrix (see ``gram_matrix``), like every relational loss
here, so the teacher's side can be cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._gram import distances
from ._registry import LossTerm, register_loss


def _normalized_distances(gram: Tensor) -> Tensor:
    d = distances(gram.float())
    size = len(d)
    mean = d.sum() / max(size * (size - 1), 1)
    return d / mean.clamp_min(1e-12)


def rkd_distance_loss(student_gram: Tensor, teacher_gram: Tensor) -> Tensor:
    """RKD-D: Huber loss between the mean-normalised pairwise distance matrices."""
    with torch.no_grad():
        teacher = _normalized_distances(teacher_gram)
    return F.smooth_l1_loss(_normalized_distances(student_gram), teacher, reduction="mean")


def _angles(gram: Tensor) -> Tensor:
    gram = gram.float()
    d = distances(gram)
    diagonal = gram.diagonal()
    # <x_j - x_i, x_k - x_i> = G_jk - G_ij - G_ik + G_ii, indexed [i, j, k]
    inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diagonal[:, None, None]
    norms = d[:, :, None] * d[:, None, :]
    return torch.where(norms > 0, inner / norms.clamp_min(1e-12), torch.zeros_like(inner))


def rkd_angle_loss(student_gram: Tensor, teacher_gram: Tensor) -> Tensor:
    """RKD-A: Huber loss between the cosines of all triplets' angles."""
    with torch.no_grad():
        teacher = _angles(teacher_gram)
    return F.smooth_l1_loss(_angles(student_gram), teacher, reduction="mean")


def _over_stages(function):
    def term(config, batch) -> Tensor:
        return torch.stack([function(batch.student_grams[s], batch.teacher_grams[s]) for s in config.rkd_layers]).mean()

    return term


register_loss(LossTerm("rkd_distance", "rkd_distance_weight", _over_stages(rkd_distance_loss),
                       stages=lambda config: tuple(config.rkd_layers), summary="RKD-D, pairwise distances (Park et al. 2019)"))
register_loss(LossTerm("rkd_angle", "rkd_angle_weight", _over_stages(rkd_angle_loss),
                       stages=lambda config: tuple(config.rkd_layers), summary="RKD-A, triplet angles (Park et al. 2019)"))
