"""The training step's forward half, eager or compiled: the student's forward under autocast and
the loss mix of the registered terms (``losses``); autograd then runs the backward.

``loss_mix`` computes each weighted term of a ``LossConfig`` on a batch. ``step_loss`` wraps the
student's forward and the mix, through ``torch.compile`` when asked (``compile="on"``; ``auto``
stays eager until a measurement shows compiling equal and faster). A step that fails to compile
trains eagerly and says why (``StepLoss.fallback``).
"""

from __future__ import annotations

import logging
import statistics
from typing import Callable

import torch
from torch import Tensor, nn

from ._device import autocast
from .config import LossConfig
from .losses import LossInputs, gram_matrix

log = logging.getLogger(__name__)


def distillation_loss(
    loss: LossConfig,
    logits: Tensor,
    labels: Tensor,
    features: list[Tensor],
    teacher_logits: Tensor | None,
    teacher_grams: dict[int, Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted loss mix of ``loss`` and its parts (unweighted and detached, still on the device)."""
    total, parts = loss_mix(loss, logits, labels, features, teacher_logits, teacher_grams)
    return total, {name: value.detach() for name, value in parts.items()}


def loss_mix(loss: LossConfig, logits: Tensor, labels: Tensor, features: list[Tensor], teacher_logits: Tensor | None,
             teacher_grams: dict[int, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Every term of ``loss.weighted()`` (the registry's, in its order) on the batch, and their weighted sum."""
    student_grams = {stage: gram_matrix(features[stage - 1]) for stage in loss.relational_stages}
    batch = LossInputs(logits, labels, teacher_logits, student_grams, teacher_grams)
    terms = loss.weighted()
    parts = {term.name: term.compute(loss, batch) for term in terms}
    return sum(loss.weight_of(term) * parts[term.name] for term in terms), parts


def compiles(mode: str, device: torch.device) -> bool:
    """Only when asked (``on``): ``auto`` keeps the step eager on every device until a measurement
    shows the compiled step at least as accurate and faster there. On the CPU it was not worth its
    compile time (``bench/trial_cost.py``); no compiled step has been measured on a GPU yet."""
    return mode == "on"


COMPILE_BACKEND = "inductor"
"""``torch.compile``'s back-end for the training step (the tests put a failing one here)."""


_COMPILED_FOR: list = []  # what the Dynamo cache of this process was filled for (at most one key)


def compile_cache_for(key) -> None:
    """Empty Dynamo's cache when the step to compile differs from the last compiled one.

    Dynamo keeps one cache per code object, shared by every closure of ``forward_loss`` in the
    process, and after ``torch._dynamo.config.recompile_limit`` (8) guard failures it runs the
    function eagerly with a single log warning: a worker process training its ninth architecture
    silently lost the compiled step (measured here). A new architecture now starts from an empty
    cache; repeats of the same one (a paused trial continued) keep it, and Inductor's on-disk cache
    still serves a kernel compiled before."""
    if _COMPILED_FOR != [key]:
        torch._dynamo.reset()
        _COMPILED_FOR[:] = [key]


class StepLoss:
    """The step's forward half (student forward under autocast, the loss mix), eager or through
    ``torch.compile``; autograd then runs the compiled backward. Shapes are static per batch size
    (``dynamic=False``): a last, smaller batch compiles once more. The optimiser step stays eager
    (its learning rate changes every step). Inductor's on-disk graph cache serves later trials of
    the same architecture.

    ``compile_seconds``: how much longer than the median step the slow steps took (compiling the
    forward on a new shape, the backward on its first call, a recompilation), from the whole-step
    times ``fit`` records when compiled."""

    def __init__(self, function: Callable, compiled: bool) -> None:
        self.compiled = compiled
        self.eager = function
        self.function = torch.compile(function, dynamic=False, backend=COMPILE_BACKEND) if compiled else function
        self.step_seconds: list[float] = []
        self.fallback = ""
        """Why the step went back to eager (its compilation failed); empty while it has not."""

    def __call__(self, *args) -> tuple[Tensor, dict[str, Tensor]]:
        try:
            total, parts = self.function(*args)
        except Exception as error:
            if not self.compiled or not type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            # a compiler failure (Dynamo, Inductor, a back-end) must not cost the trial: it trains eagerly
            inner = getattr(error, "inner_exception", None) or error.__cause__
            why = f"{type(inner).__name__}: {inner}" if inner is not None else str(error)
            self.fallback = f"{type(error).__name__} ({' '.join(why.split())[:300]})"
            log.warning("the compiled training step failed (%s); this student trains eagerly", self.fallback)
            self.compiled, self.function = False, self.eager
            total, parts = self.function(*args)
        return total, {name: value.detach() for name, value in parts.items()}

    @property
    def compile_seconds(self) -> float:
        if not self.compiled or not self.step_seconds:
            return 0.0
        typical = statistics.median(self.step_seconds)
        return sum(max(0.0, seconds - typical) for seconds in self.step_seconds)


def step_loss(student: nn.Module, loss: LossConfig, precision: str, device: torch.device, *, compiled: bool) -> StepLoss:
    def forward_loss(images: Tensor, labels: Tensor, teacher_logits: Tensor | None, teacher_grams: dict[int, Tensor]):
        with autocast(precision, device):
            logits, features = student.forward_with_features(images)
        # The parts leave undetached: a compiled function that returns a detached intermediate beside
        # the loss returns the loss without its graph (torch 2.14's Dynamo; measured here).
        return loss_mix(loss, logits, labels, features, teacher_logits, teacher_grams)

    return StepLoss(forward_loss, compiled)
