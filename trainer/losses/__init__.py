"""Distillation losses, one module per paper. Relational losses take per-layer Gram matrices."""

from ._gram import distances, gram_matrix, squared_distances
from .graph import graph_rkd_loss, knn_mask, normalize_adjacency, similarity_graph
from .kd import hinton_kd_loss, teacher_kl
from .rkd import rkd_angle_loss, rkd_distance_loss

__all__ = [
    "distances",
    "graph_rkd_loss",
    "gram_matrix",
    "hinton_kd_loss",
    "knn_mask",
    "normalize_adjacency",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_graph",
    "squared_distances",
    "teacher_kl",
]
