"""Distillation losses, one module per paper, each registering its term of the loss mix
(``_registry``: the mix, the configs, the space schema and the command line read it). Relational
losses take per-layer Gram matrices. The modules are imported in the order of the mix."""

from . import ce, kd, graph, rkd  # noqa: F401, I001  (they register their terms, in the mix's order: ce, kd, graph, rkd)
from ._gram import distances, gram_matrix, squared_distances
from ._registry import TERMS, LossInputs, LossTerm, describe_losses, loss_terms, register_loss, unregister_loss
from .graph import graph_rkd_loss, knn_mask, normalize_adjacency, similarity_graph
from .kd import hinton_kd_loss, teacher_kl
from .rkd import rkd_angle_loss, rkd_distance_loss

__all__ = [
    "TERMS",
    "LossInputs",
    "LossTerm",
    "describe_losses",
    "distances",
    "graph_rkd_loss",
    "gram_matrix",
    "hinton_kd_loss",
    "knn_mask",
    "loss_terms",
    "normalize_adjacency",
    "register_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_graph",
    "squared_distances",
    "teacher_kl",
    "unregister_loss",
]
