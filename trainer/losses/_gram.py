"""Batch Gram matrices: the one summary of a layer that every relational loss here needs.

Graph-RKD's cosine and Gaussian similarities, RKD's distances and RKD's angles are all functions
of the pairwise inner products of the batch's flattened features. Reducing a layer to its B x B
Gram matrix is what lets the teacher's side be computed once per search and cached.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gram_matrix(features: Tensor) -> Tensor:
    """B x B inner products of the flattened per-sample features, in float32.

    The order of the flattened entries does not change a Gram matrix, so a channels_last map is
    flattened in its memory order (a view, no copy).
    """
    if features.dim() == 4 and features.is_contiguous(memory_format=torch.channels_last):
        features = features.permute(0, 2, 3, 1)
    flat = features.reshape(len(features), -1).float()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return flat @ flat.T


def squared_distances(gram: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances from a Gram matrix (clamped at 0, zero diagonal)."""
    norms = gram.diagonal()
    d2 = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0)
    return d2 * (1 - torch.eye(len(gram), device=gram.device, dtype=gram.dtype))


def distances(gram: Tensor, eps: float = 1e-12) -> Tensor:
    """Pairwise Euclidean distances with a zero diagonal; the gradient is finite everywhere."""
    d2 = squared_distances(gram)
    off_diagonal = 1 - torch.eye(len(gram), device=gram.device, dtype=gram.dtype)
    return (d2 + eps).sqrt() * off_diagonal
