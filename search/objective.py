"""The objective every back-end shares, and the narrow interface a trial loop works through.

``Objective.define`` is the define-by-run half: it turns a sampler's trial into a ``TrialPlan``,
measures the student's costs, scores the untrained student with the zero-cost proxies when a
scorer is set, and sets one constraint per limit (Optuna 5's ``trial.set_constraint``; feasible
when <= 0) on every trial, so the sampler learns from over-limit students without their ever
being trained. Training is the other half: a plain call into ``trainer.fit`` with the shared data
and teacher targets (``train_student``), run by a back-end's workers.

``LoopOptions`` are what the back-ends' loops read of the search's options (``loop.TrialLoop``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rkd_search.spaces import SearchSpace, TrialContext, TrialPlan
from rkd_search.trainer import EpochReport, ImageDataset, ModelSpec, TeacherTargets, TrainConfig, TrainResult, TrainState, fit

OBJECTIVES = ("val_acc", "macs")
DIRECTIONS = ("maximize", "minimize")

# Constraint names (Optuna keeps them in this order), each the relative excess over its limit.
MACS, PARAMS, MEMORY, LATENCY = "macs_over_budget", "params_over_limit", "activation_memory_over_limit", "latency_over_limit"
FLASH, SRAM = "flash_over_limit", "sram_over_limit"


@dataclass(frozen=True)
class Limits:
    """What a student must fit: the MAC budget, and optionally parameters, peak activation memory
    (bytes, batch 1, fp32), median batch-1 latency on this machine's CPU (ms), and a
    microcontroller's flash and SRAM at int8 (bytes)."""

    budget_macs: float
    max_params: float | None = None
    max_activation_bytes: float | None = None
    max_latency_ms: float | None = None
    max_flash_bytes: float | None = None
    max_sram_bytes: float | None = None

    def violations(self, plan: TrialPlan) -> dict[str, float]:
        """One entry per limit in force: (value - limit) / limit, feasible when <= 0."""
        values = {MACS: plan.budget_violation}
        for name, limit, value in ((PARAMS, self.max_params, plan.ops.params),
                                   (MEMORY, self.max_activation_bytes, plan.activation_bytes),
                                   (LATENCY, self.max_latency_ms, plan.measures.get("latency_ms")),
                                   (FLASH, self.max_flash_bytes, plan.measures.get("flash_bytes")),
                                   (SRAM, self.max_sram_bytes, plan.measures.get("sram_bytes"))):
            if limit is not None:
                values[name] = (value - limit) / limit if value is not None and math.isfinite(value) else math.inf
        return values


def set_constraints(trial: Any, constraints: dict[str, float]) -> None:
    """Set every limit's violation on the trial (feasible when all are <= 0). A reopened trial
    gets the same values again, which Optuna accepts with a warning that is silenced here; an
    unmeasurable limit counts as far over (a finite 1e9: Optuna stores finite floats)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The constraint value is ignored")
        for name, value in constraints.items():
            trial.set_constraint(name, float(min(value, 1e9)) if not math.isnan(value) else 1e9)


Train = Callable[..., TrainResult]


def train_student(config: TrainConfig, data: ImageDataset, targets: TeacherTargets | None,
                  report: Callable[[EpochReport], bool | None] | None = None, device=None,
                  resume: TrainState | None = None, until: int | None = None) -> TrainResult:
    """A trial's training: ``fit`` with the search's teacher targets."""
    return fit(config, data, teacher=targets, report=report, device=device, resume=resume, until=until)


class Objective:
    def __init__(self, space: SearchSpace, context: TrialContext, limits: Limits,
                 latency: Callable[[ModelSpec], float] | None = None,
                 measures: Callable[[ModelSpec], dict[str, float]] | None = None,
                 scorer: Callable[[TrialPlan], dict[str, float]] | None = None) -> None:
        self.space = space
        self.context = context
        self.limits = limits
        self.latency = latency
        self.measures = measures
        self.scorer = scorer

    def define(self, trial) -> TrialPlan:
        """The trial's plan, its costs measured and every limit set as a constraint (on every trial)."""
        plan = self.space.suggest(trial, self.context)
        if self.measures is not None:
            plan.measures.update(self.measures(plan.config.student))
        if self.latency is not None:
            plan.measures["latency_ms"] = self.latency(plan.config.student)
        plan.constraints = self.limits.violations(plan)
        set_constraints(trial, plan.constraints)
        return plan

    def score(self, plan: TrialPlan) -> dict[str, float]:
        """The untrained student's zero-cost scores (empty without a scorer or over a limit)."""
        if self.scorer is None or not plan.feasible:
            return {}
        if not plan.scores:
            plan.scores = self.scorer(plan)
        return plan.scores

    @staticmethod
    def infeasible_values(plan: TrialPlan) -> list[float]:
        """What the sampler is told for a student that was never trained: no accuracy, its MACs."""
        return [0.0, float(plan.ops.macs)]

    @staticmethod
    def values(result: TrainResult) -> list[float]:
        return [result.val_acc, float(result.macs)]


@dataclass
class LoopOptions:
    """What the trial loops read of the search's options."""

    trials: int
    epochs: int
    rungs: list[int]
    """Epochs at which trials are compared; ``[epochs]`` without multi-fidelity."""
    eta: int
    device: Any = None
    jobs: int = 1
    """Trials training at once (worker processes of the embedded back-end)."""
    checkpoints: Path | None = None
    """Where paused trials keep their training state (multi-fidelity)."""
    deadline: float | None = None
    """``time.monotonic()`` after which no new work starts (``--timeout``)."""
    max_student_epochs: int | None = None
    """A compute budget: no new work starts once the search's trials trained this many epochs in all."""
    max_consecutive_failures: int = 3

    @property
    def multi_fidelity(self) -> bool:
        return len(self.rungs) > 1

    def out_of_time(self, student_epochs: int) -> bool:
        """The deadline or the compute budget is reached: start no new work."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            return True
        return self.max_student_epochs is not None and student_epochs >= self.max_student_epochs

    def compute_left(self, student_epochs: int) -> int | None:
        """Student-epochs left in the compute budget, or None without one."""
        return None if self.max_student_epochs is None else max(0, self.max_student_epochs - student_epochs)
