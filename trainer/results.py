"""What ``fit`` reports and returns: each epoch's report, the state a paused run continues from, and
the result (the selection metric, test metrics, teacher fidelity, cost, and the weights)."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .files import atomic_torch_save
from .models import ModelSpec


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

    def to_bytes(self) -> bytes:
        """The result and its weights as one ``torch.save`` file of plain tensors and primitives, as a
        worker process or a Ray trial sends it to the driver (``from_bytes`` reads it, weights only)."""
        buffer = io.BytesIO()
        torch.save({"result": self.to_dict(), "weights": self.state_dict}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "TrainResult":
        stored = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        return cls.from_dict(stored["result"], stored["weights"])

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
