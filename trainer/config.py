"""Plain configs and results of one training run: what ``fit`` takes and what it gives back."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args


from .defaults import BATCH_SIZE, EPOCHS, KD_TEMPERATURE
from .losses import LossTerm, loss_terms
from .losses.graph import Reduction, Similarity
from .models import ModelSpec

# The vocabulary of a run, declared once: the configs below, the search-space schema and the CLI
# all read these.
STAGES = (1, 2, 3)
Schedule = Literal["cosine", "step"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Compile = Literal["auto", "on", "off"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)
COMPILE_MODES: tuple[str, ...] = get_args(Compile)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name.split('.')[-1]} {value!r} for {name}: use {' or '.join(choices)}")


@dataclass(frozen=True)
class LossConfig:
    """The loss mix: the registered terms (``losses``: CE + Hinton KD + graph-RKD + RKD-D + RKD-A,
    and any term a module registers), each with its own weight.

    Stages are numbered 1..3 (stage 3 is read after global average pooling). ``k=None`` keeps the
    dense graph; ``bandwidth`` scales the Gaussian kernel's sigma relative to the batch's median
    pairwise distance. Weights follow the papers' scales: KD includes T^2, graph-RKD with "sum"
    reduction used lambda = 25, RKD-D 25, RKD-A 50. ``weights`` holds the weights of terms registered
    beyond the built-in ones, by their weight key (``{"logit_l2_weight": 0.5}``).
    """

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    temperature: float = KD_TEMPERATURE
    graph_weight: float = 0.0
    similarity: Similarity = "cosine"
    k: int | None = None
    bandwidth: float = 1.0
    power: int = 1
    layers: tuple[int, ...] = STAGES
    layer_weights: tuple[float, ...] | None = None
    reduction: Reduction = "sum"
    rkd_distance_weight: float = 0.0
    rkd_angle_weight: float = 0.0
    rkd_layers: tuple[int, ...] = (3,)
    weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        extra = dict(self.weights.items() if isinstance(self.weights, dict) else self.weights)
        object.__setattr__(self, "weights", tuple(sorted((str(k), v) for k, v in extra.items())))
        object.__setattr__(self, "layers", tuple(int(s) for s in self.layers))
        object.__setattr__(self, "rkd_layers", tuple(int(s) for s in self.rkd_layers))
        if self.layer_weights is not None:
            object.__setattr__(self, "layer_weights", tuple(float(w) for w in self.layer_weights))
            if len(self.layer_weights) != len(self.layers):
                raise ValueError("loss.layer_weights needs one weight per entry of loss.layers")
        for name in ("layers", "rkd_layers"):
            stages = getattr(self, name)
            if not stages or any(s not in STAGES for s in stages):
                raise ValueError(f"loss.{name} must list stages among {STAGES}, got {stages}")
        _check_choice("loss.similarity", self.similarity, SIMILARITIES)
        _check_choice("loss.reduction", self.reduction, REDUCTIONS)
        if self.power < 1:
            raise ValueError(f"loss.power must be at least 1, got {self.power}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"loss.k must be at least 1 (or None for dense), got {self.k}")
        unknown = sorted(set(extra) - {term.weight for term in loss_terms()})
        if unknown:
            raise ValueError(f"unknown loss weight {unknown[0]!r}: the registered terms' weights are "
                             f"{', '.join(term.weight for term in loss_terms())}")
        numbers = {"temperature": self.temperature, "bandwidth": self.bandwidth,
                   **{term.weight: self.weight_of(term) for term in loss_terms()}}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"loss.{name} must be a finite number, got {value!r}")
        if self.temperature <= 0 or self.bandwidth <= 0:
            raise ValueError("loss.temperature and loss.bandwidth must be positive")
        weights = [self.weight_of(term) for term in loss_terms()]
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError("loss weights must be >= 0 with at least one positive")

    def weight_of(self, term: LossTerm) -> float:
        """The weight of a registered term: its field, or its entry of ``weights`` (0 when absent)."""
        if term.weight in _FIELDS:
            return getattr(self, term.weight)
        return dict(self.weights).get(term.weight, 0.0)

    def weighted(self) -> list[LossTerm]:
        """The terms of the mix: those with a positive weight, and those always computed (CE)."""
        return [term for term in loss_terms() if term.always or self.weight_of(term) > 0]

    @property
    def needs_teacher(self) -> bool:
        return any(term.teacher and self.weight_of(term) > 0 for term in loss_terms())

    @property
    def relational_stages(self) -> tuple[int, ...]:
        """The stages whose Gram matrices the weighted terms read."""
        stages: set[int] = set()
        for term in loss_terms():
            if self.weight_of(term) > 0:
                stages.update(term.stages(self))
        return tuple(sorted(stages))


_FIELDS = {f.name for f in fields(LossConfig)}
"""The weights that are ``LossConfig`` fields (the built-in terms'); the others live in ``weights``."""


@dataclass(frozen=True)
class TrainConfig:
    """One student's training run. ``seed`` fixes the batches (order and augmentation) and the init."""

    student: ModelSpec
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    """Nesterov momentum (the usual CIFAR recipe of pytorch-cifar-models; the graph-KD authors' plain SGD without)."""
    schedule: Schedule = "cosine"
    seed: int = 0
    precision: Precision = "auto"
    compile: Compile = "auto"
    """The training step (student forward, losses, backward) through ``torch.compile``: ``on`` only;
    ``auto`` stays eager until a measurement shows compiling equal and faster. On the CPU a compiled
    step was faster (0.80 of eager's time for WRN-28-0.5) but a cold compile took longer than a
    15-epoch trial on 5,000 images saves (``bench/trial_cost.py``); on a GPU none is measured yet. A
    step whose compilation fails trains eagerly (``TrainResult.compile_fallback`` says why)."""

    def __post_init__(self) -> None:
        if isinstance(self.student, str):  # a model name, as build_model takes it: "wrn10_0.25", "mbv2-2-3-3_0.5_e6k3"
            object.__setattr__(self, "student", ModelSpec.parse(self.student))
        if not isinstance(self.student, ModelSpec):
            raise TypeError(f"student must be a ModelSpec or a model name such as 'wrn16_1', got {type(self.student).__name__}")
        if not isinstance(self.loss, LossConfig):
            raise TypeError(f"loss must be a LossConfig, got {type(self.loss).__name__}")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"optim.{name} must be a finite number, got {value!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"optim: lr must be > 0, weight_decay >= 0 and momentum in [0, 1), got "
                             f"lr={self.lr}, weight_decay={self.weight_decay}, momentum={self.momentum}")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("optim: nesterov needs a momentum above 0")
        _check_choice("optim.schedule", self.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("compile", self.compile, COMPILE_MODES)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["student"] = self.student.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        data["student"] = ModelSpec.from_dict(data["student"])
        data["loss"] = LossConfig(**data.get("loss", {}))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
