"""Zero-cost proxies: a score for an untrained student, from a few batches, in about a second.

A search can rank candidates with them before training any (``rkd-search --prescreen N``), and
logs them on every trial so that ``bench/proxy_rank.py`` can measure how well each one predicts
the trained student's validation accuracy. Each is small, with its paper's equation:

- ``graph_similarity`` (distillation-aware; DisWOT, Dong et al., CVPR 2023, found that the
  similarity of the teacher's and the untrained student's sample-relation matrices predicts the
  distilled student's accuracy): minus the graph-RKD loss of Lassance et al. between the teacher's
  and the freshly initialised student's relation graphs,

      G = - (1 / |batches|) sum_b (1 / |stages|) sum_l || A_T^(b,l) - A_S^(b,l) ||_F^2,

  on the first training batches of the search (the batches every trial starts with), with the
  authors' cosine graph, dense, over the three stages. Higher: the student's geometry is already
  closer to the teacher's.
- ``synflow`` (data-free; Tanaka et al., NeurIPS 2020; Abdelfattah et al., ICLR 2021): with every
  weight replaced by its absolute value and an all-ones input, R = 1^T f(1) and

      S = sum_theta | theta * dR / dtheta |,

  reported as log(S) (S spans hundreds of orders of magnitude). Computed in float64 with
  BatchNorm in inference mode; ReLU6 is replaced by ReLU for the computation, since an all-ones
  input drives every unit past 6, where ReLU6 has no gradient (mobile students would all score 0).
- ``naswot`` (data-dependent, label-free; Mellor et al., ICML 2021): each image of one training batch
  gets the binary code c_i of which ReLU units it switches on (every ReLU and ReLU6 of the network,
  as called: the residual blocks call ``torch.relu``, the mobile ones ``nn.ReLU6``), and

      K[i, j] = N_A - d_H(c_i, c_j),     score = log |det K|,

  with N_A the number of units and d_H the Hamming distance: images the untrained network already
  tells apart score high. BatchNorm with batch statistics, as in the first training step.
- ``diswot`` (distillation-aware, both of DisWOT's terms; computed by ``bench/proxy_fixed_recipe.py``,
  which has the teacher network, not logged by the search): on one batch with labels, minus the sum of
  a semantic and a relation distance between the trained teacher and the untrained student,

      semantic: g = d CE / d W_fc = (softmax(z) - Y)^T h / B   (classes x channels: Grad-CAM's channel weights),
                M_s = || n(g_T g_T^T) - n(g_S g_S^T) ||_F^2 / classes^2,
      relation: f = the last stage's feature map before pooling, flattened per image,
                M_r = || n(f_T f_T^T) - n(f_S f_S^T) ||_F^2 / B^2,
      diswot = -(M_s + M_r),

  with n() L2-normalising each row and h the classifier's input. Both matrices are width-free, so
  teacher and student need not match. The authors' code compares channel x channel correlations of
  the classifier gradients after a random 1x1 embedding instead of class x class ones.
- ``params`` and ``macs``: the parameter and multiply-accumulate counts, the baselines any proxy must
  beat (ZiCo, Li et al., ICLR 2023, showed many proxies do not).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .config import TrainConfig
from .batches import train_batches
from .data import ImageDataset
from .losses import gram_matrix, graph_rkd_loss
from .models import ModelSpec, build_model
from .ops import count_spec_ops
from .targets import TeacherSignals

PROXIES = ("graph", "synflow", "naswot", "params", "macs")


def synflow(model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """log of SynFlow's S for ``model`` (left unchanged: the score is computed on a copy)."""
    probe = copy.deepcopy(model).double().eval()
    for name, module in probe.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, child_name, nn.ReLU())
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.abs_()
    probe.zero_grad(set_to_none=True)
    output = probe(torch.ones(1, *input_shape, dtype=torch.float64))
    output.sum().backward()
    total = 0.0
    for module in probe.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.grad is not None:
            total += float((module.weight * module.weight.grad).abs().sum().detach())
    return math.log(total) if total > 0 else float("-inf")


_RELUS = {torch.relu, torch.relu_, F.relu, F.relu6, F.hardtanh}
"""The calls whose output is a ReLU unit's (``nn.ReLU`` and ``nn.ReLU6`` call ``F.relu`` and ``F.hardtanh``);
an output above 0 is a unit switched on, for ReLU6 too."""


class _ActivationCodes(TorchFunctionMode):
    """Accumulates NASWOT's kernel C C^T + (1 - C)(1 - C)^T over every ReLU call of a forward pass."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.kernel = torch.zeros(batch, batch, dtype=torch.float64)
        self.units = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func in _RELUS:
            codes = (output.detach().flatten(1) > 0).double()
            self.kernel += codes @ codes.T + (1 - codes) @ (1 - codes).T
            self.units += codes.shape[1]
        return output


@torch.no_grad()
def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """log |det K| of NASWOT's activation-code kernel for ``model`` on ``images`` (one batch), or
    minus infinity where two images share a code (K is singular). The model runs in training mode."""
    model.train()
    codes = _ActivationCodes(images.shape[0])
    with codes:
        model(images)
    if not codes.units:
        raise ValueError("naswot: the model called no ReLU")
    sign, logdet = torch.linalg.slogdet(codes.kernel)
    return float(logdet) if sign != 0 else float("-inf")


@torch.no_grad()
def graph_similarity(model: nn.Module, data: ImageDataset, teacher: TeacherSignals, *, batch_size: int, seed: int,
                     batches: int = 2, stages: tuple[int, ...] = (1, 2, 3)) -> float:
    """Minus the graph-RKD loss between the teacher's and the untrained ``model``'s relation graphs
    on the first ``batches`` training batches of epoch 0 (BatchNorm with batch statistics, as in
    the first training step)."""
    model.train()
    losses = []
    for index, (images, _) in enumerate(train_batches(data, batch_size, seed, 0)):
        if index >= batches:
            break
        _, teacher_grams = teacher.batch(0, index, images, stages)
        _, features = model.forward_with_features(images)
        student = [gram_matrix(features[s - 1]) for s in stages]
        losses.append(float(graph_rkd_loss(student, [teacher_grams[s] for s in stages], similarity="cosine", k=None,
                                           reduction="sum")))
    return -sum(losses) / len(losses)


def _last_map_and_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits, the classifier's input and the last feature map before pooling (the input of
    ``model.pool`` where the model has one, else its last returned feature)."""
    seen: list[torch.Tensor] = []
    pool = getattr(model, "pool", None)
    hook = pool.register_forward_pre_hook(lambda module, args: seen.append(args[0])) if isinstance(pool, nn.Module) else None
    try:
        logits, features = model.forward_with_features(images)
    finally:
        if hook is not None:
            hook.remove()
    pooled = features[-1].flatten(1)
    return logits, pooled, (seen[-1] if seen else pooled)


def classifier_gradient(logits: torch.Tensor, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d CE / d W of a linear classifier with input ``pooled`` (mean cross-entropy): classes x channels."""
    error = F.softmax(logits.double(), dim=1) - F.one_hot(labels, logits.shape[1]).double()
    return error.T @ pooled.double() / len(labels)


def _row_normalised_gram(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.flatten(1).double()
    return F.normalize(rows @ rows.T, dim=1)


@torch.no_grad()
def diswot(model: nn.Module, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """DisWOT's score of the untrained ``model`` for ``teacher`` on one labelled batch, and its two
    terms (``semantic``, ``relation``: distances, lower is closer). The student runs in training
    mode (batch statistics, as in its first step), the teacher in inference mode."""
    model.train()
    teacher.eval()
    terms, grams = {}, {}
    for name, network in (("student", model), ("teacher", teacher)):
        logits, pooled, last_map = _last_map_and_logits(network, images)
        grams[name] = (_row_normalised_gram(classifier_gradient(logits, pooled, labels)), _row_normalised_gram(last_map))
    classes, batch = grams["student"][0].shape[0], len(images)
    terms["semantic"] = float(((grams["teacher"][0] - grams["student"][0]) ** 2).sum() / classes**2)
    terms["relation"] = float(((grams["teacher"][1] - grams["student"][1]) ** 2).sum() / batch**2)
    return {"diswot": -(terms["semantic"] + terms["relation"]), **terms}


class ZeroCostScorer:
    """The zero-cost scores of a trial's untrained student, memoised per student architecture."""

    def __init__(self, data: ImageDataset, teacher: TeacherSignals | None, device: torch.device | str = "cpu",
                 batches: int = 2) -> None:
        self.device = torch.device(device)
        self.data = data if data.train_images.device == self.device else data.to(self.device)
        self.teacher = teacher
        self.batches = batches
        self.scores: dict[tuple, dict[str, float]] = {}

    def __call__(self, config: TrainConfig) -> dict[str, float]:
        spec = config.student.with_data(self.data.input_shape[0], self.data.num_classes)
        key = (spec, config.batch_size, config.seed)
        if key not in self.scores:
            self.scores[key] = self._score(*key)
        return dict(self.scores[key])

    def _score(self, spec: ModelSpec, batch_size: int, seed: int) -> dict[str, float]:
        torch.manual_seed(seed)  # the trial's own initialisation (fit seeds the same way)
        model = build_model(spec)
        scores = {"params": float(sum(p.numel() for p in model.parameters())),
                  "macs": float(count_spec_ops(spec, self.data.resolution).macs),
                  "synflow": synflow(model, self.data.input_shape)}
        images, _ = next(iter(train_batches(self.data, batch_size, seed, 0)))  # the trial's first batch
        scores["naswot"] = naswot(copy.deepcopy(model).to(self.device), images)  # a copy: its BatchNorm statistics move
        if self.teacher is not None:
            scores["graph"] = graph_similarity(model.to(self.device), self.data, self.teacher, batch_size=batch_size, seed=seed,
                                               batches=self.batches)
        return scores
