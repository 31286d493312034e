"""Plain configs and results of one training run: what ``fit`` takes and what it gives back."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from .defaults import BATCH_SIZE, EPOCHS
from .files import atomic_torch_save
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
    """The loss mix: CE + Hinton KD + graph-RKD + RKD-D + RKD-A, each with its own weight.

    Stages are numbered 1..3 (stage 3 is read after global average pooling). ``k=None`` keeps the
    dense graph; ``bandwidth`` scales the Gaussian kernel's sigma relative to the batch's median
    pairwise distance. Weights follow the papers' scales: KD includes T^2, graph-RKD with "sum"
    reduction used lambda = 25, RKD-D 25, RKD-A 50.
    """

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    temperature: float = 4.0
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

    def __post_init__(self) -> None:
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
        for name in ("ce_weight", "kd_weight", "temperature", "graph_weight", "bandwidth", "rkd_distance_weight", "rkd_angle_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"loss.{name} must be a finite number, got {value!r}")
        if self.temperature <= 0 or self.bandwidth <= 0:
            raise ValueError("loss.temperature and loss.bandwidth must be positive")
        weights = (self.ce_weight, self.kd_weight, self.graph_weight, self.rkd_distance_weight, self.rkd_angle_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError("loss weights must be >= 0 with at least one positive")

    @property
    def needs_teacher(self) -> bool:
        return self.kd_weight > 0 or self.relational_stages != ()

    @property
    def relational_stages(self) -> tuple[int, ...]:
        """The stages whose Gram matrices the relational terms read."""
        stages: set[int] = set()
        if self.graph_weight > 0:
            stages.update(self.layers)
        if self.rkd_distance_weight > 0 or self.rkd_angle_weight > 0:
            stages.update(self.rkd_layers)
        return tuple(sorted(stages))


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


@dataclass
class EpochReport:
    """What ``fit`` reports after each epoch; the callback may answer True to stop training."""

    epoch: int
    epochs: int
    val_acc: float
    train_loss: float
    loss_parts: dict[str, float]
    lr: float
    seconds: float
    """The whole epoch: its training steps, then the validation pass (``eval_seconds`` of it)."""
    eval_seconds: float = 0.0


@dataclass
class TrainState:
    """A run paused after ``epoch`` epochs: enough to continue it exactly.

    ``fit(config, data, resume=state)`` continues where the state stopped; since the learning-rate
    schedule is defined over ``config.epochs`` and the batches by (seed, epoch), the continued run
    equals one uninterrupted run. Saved files hold tensors and primitives only (``weights_only``).
    """

    epoch: int
    model: dict[str, Any] = field(repr=False)
    optimizer: dict[str, Any] = field(repr=False)
    history: list[EpochReport] = field(default_factory=list)
    train_seconds: float = 0.0

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state atomically (a crash leaves the previous file, never a torn one)."""
        return atomic_torch_save({"format": "rkd-search/train-state-v1", "epoch": self.epoch, "model": self.model,
                                  "optimizer": self.optimizer, "history": [asdict(h) for h in self.history],
                                  "train_seconds": self.train_seconds}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainState":
        """Read a state written by ``save``; raises ``ValueError`` for a damaged or foreign file."""
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("format") != "rkd-search/train-state-v1":
                raise ValueError("not an rkd-search training state")
            return cls(int(stored["epoch"]), stored["model"], stored["optimizer"],
                       [EpochReport(**h) for h in stored["history"]], float(stored["train_seconds"]))
        except Exception as error:
            raise ValueError(f"cannot read the training state {path} ({type(error).__name__}: {error})") from None


@dataclass
class TrainResult:
    """A finished, stopped or paused run: selection metric, test metrics, teacher fidelity and cost.

    A run paused before its last epoch (``fit(..., until=r)``) has no test metrics (they are
    measured once, at the end) and carries ``state`` to continue from.
    """

    spec: ModelSpec
    val_acc: float
    test_acc: float | None
    teacher_agreement: float | None
    teacher_kl: float | None
    macs: int
    flops: int
    params: int
    train_seconds: float
    epochs_done: int
    epochs_planned: int
    stopped_early: bool
    input_shape: tuple[int, int, int] = (3, 32, 32)
    history: list[EpochReport] = field(default_factory=list)
    state_dict: dict[str, Any] | None = field(default=None, repr=False)
    state: TrainState | None = field(default=None, repr=False, compare=False)
    paused: bool = False
    """Stopped before its last epoch by ``until``; ``state`` (when kept) continues it."""
    compile_seconds: float = 0.0
    """Seconds the first compiled steps took beyond an eager step (0 when not compiled); part of
    ``train_seconds``."""
    compile_fallback: str = ""
    """Why the compiled step went back to eager (its compilation failed); empty otherwise."""

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready primitives (the weights travel as a tensor file)."""
        data = asdict(self)
        data.pop("state_dict")
        data.pop("state")
        data["spec"] = self.spec.to_dict()
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], state_dict: dict[str, Any] | None = None) -> "TrainResult":
        data = dict(data)
        data["spec"] = ModelSpec.from_dict(data["spec"])
        data["input_shape"] = tuple(data["input_shape"])
        data["history"] = [EpochReport(**epoch) for epoch in data.get("history", [])]
        return cls(**data, state_dict=state_dict)

    def metrics(self) -> dict[str, float]:
        """The scalar metrics (test and teacher-fidelity metrics left out when not measured)."""
        values = {
            "val_acc": self.val_acc,
            "macs": float(self.macs),
            "flops": float(self.flops),
            "params": float(self.params),
            "train_seconds": self.train_seconds,
            "epochs_done": float(self.epochs_done),
        }
        if self.test_acc is not None:
            values["test_acc"] = self.test_acc
        if self.teacher_agreement is not None:
            values["teacher_agreement"] = self.teacher_agreement
            values["teacher_kl"] = float(self.teacher_kl)
        if self.compile_seconds:
            values["compile_seconds"] = self.compile_seconds
        return values
