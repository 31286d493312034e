"""The objective every back-end shares: define a trial on the driver, train it where it runs.

``define`` is the define-by-run half: it turns a sampler's trial into a ``TrialPlan`` and sets the
budget constraint (Optuna 5's ``trial.set_constraint``; feasible when <= 0) on every trial, so the
sampler learns from over-budget students without their ever being trained. ``train`` is the
other half: a plain call into ``trainer.fit`` with the shared data and teacher targets.
"""

from __future__ import annotations

from typing import Callable

from spaces import SearchSpace, TrialContext, TrialPlan
from trainer import EpochReport, ImageDataset, TeacherTargets, TrainConfig, TrainResult, fit

CONSTRAINT = "macs_over_budget"
OBJECTIVES = ("val_acc", "macs")
DIRECTIONS = ("maximize", "minimize")


class Objective:
    def __init__(self, space: SearchSpace, context: TrialContext) -> None:
        self.space = space
        self.context = context

    def define(self, trial) -> TrialPlan:
        plan = self.space.suggest(trial, self.context)
        trial.set_constraint(CONSTRAINT, plan.budget_violation)
        return plan

    @staticmethod
    def train(config: TrainConfig, data: ImageDataset, targets: TeacherTargets,
              report: Callable[[EpochReport], bool | None] | None = None, device=None) -> TrainResult:
        return fit(config, data, teacher=targets, report=report, device=device)

    @staticmethod
    def infeasible_values(plan: TrialPlan) -> list[float]:
        """What the sampler is told for a student that was never trained: no accuracy, its MACs."""
        return [0.0, float(plan.ops.macs)]
