"""What happens outside the study as trials start, train, pause and end: the progress bar and MLflow.

The trial lifecycle is the recorder's only caller (``start``, ``epoch``, ``pause``, ``finish``).
The recorder keeps the trials' records, and after each trial that completes it brings the Pareto
front up to date (the ``rkd.pareto`` tags, ``pareto.csv`` and ``pareto.png`` in the output folder
and on the parent run, and the front's hypervolume, logged on the parent run against cumulative
student-epochs), so a running or interrupted search can be browsed and exported at any time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkd_search.spaces import TrialPlan
from rkd_search.trainer import EpochReport, TrainResult

from . import names
from .pareto import compute_front, hypervolume, learned_threshold
from .records import TrialRecord, TrialState
from .report import Progress, plot_front, write_csv
from .tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontSettings:
    """What the front is measured against and where it is written: the output folder, the MAC
    budget, the plot's title, and the validation split (its size and majority-class share)."""

    output: Path
    budget_macs: float
    title: str
    majority_share: float
    """Share of the most frequent class in the validation split: the accuracy of guessing."""
    val_size: int

    @property
    def learned_threshold(self) -> float:
        return learned_threshold(self.majority_share, self.val_size)


@dataclass
class Recorder:
    tracker: Tracker
    parent_id: str
    progress: Progress
    front: FrontSettings
    student: dict[str, Any] = field(default_factory=dict)
    """What ``spec.json`` records beside each student: its preprocessing, class names, input size."""
    records: list[TrialRecord] = field(default_factory=list)
    student_epochs: int = 0
    """Epochs trained by every trial of the search so far: the compute axis of the hypervolume."""

    # -- the calls of the trial lifecycle -------------------------------------------------------------
    def start(self, number: int, key: str, plan: TrialPlan, tags: dict[str, Any] | None = None) -> str:
        """Open (or reopen, for a resumed trial) the trial's child run."""
        run_id = self.tracker.start_trial(self.parent_id, number, key, plan.config.student.name, plan.params,
                                          plan_metrics(plan), plan.feasible, tags)
        self._keep(run_id, number, plan, TrialState.RUNNING, {}, 0, tags)
        return run_id

    def epoch(self, run_id: str, number: int, plan: TrialPlan, report: EpochReport) -> None:
        self.tracker.log_epoch(run_id, report)
        self.student_epochs += 1
        self.update_bar(f"t{number} {plan.config.student.name} epoch {report.epoch}/{report.epochs}")

    def pause(self, run_id: str, number: int, plan: TrialPlan, result: TrainResult) -> None:
        """A multi-fidelity trial stopped at a rung, its checkpoint kept: visible, not finished."""
        self.tracker.finish_trial(run_id, TrialState.PAUSED, metrics={"val_acc": result.val_acc, **plan_metrics(plan)},
                                  epochs=result.epochs_done)
        self._keep(run_id, number, plan, TrialState.PAUSED, {"val_acc": result.val_acc}, result.epochs_done)
        self.update_bar()

    def finish(self, run_id: str, number: int, plan: TrialPlan, state: TrialState, result: TrainResult | None = None,
               error: str | None = None, tags: dict[str, Any] | None = None, status: str | None = None,
               partial: dict[str, float] | None = None, epochs_done: int = 0) -> TrialRecord:
        """End a trial's run and bring the front up to date.

        ``partial`` holds what a trial stopped early got to (its last validation accuracy) and
        ``epochs_done`` how far it got; neither counts for the front, which wants full fidelity.
        """
        state = TrialState(state)
        tags = dict(tags or {})
        if result is not None:
            tags[names.LEARNED] = str(result.val_acc > self.front.learned_threshold).lower()
            if result.compile_fallback:
                tags[names.COMPILE_FALLBACK] = result.compile_fallback
        epochs = result.epochs_done if result else epochs_done
        self.tracker.finish_trial(run_id, state, result, {**self.student, "config": plan.config.to_dict()} if result else None,
                                  error, tags, status, metrics={**plan_metrics(plan), **(partial or {})}, epochs=epochs)
        metrics = result.metrics() if result else dict(partial or {})
        record = self._keep(run_id, number, plan, state, metrics, epochs, tags)
        if self.progress.bar is not None and state.finished:
            self.progress.bar.update(1)
        if state is TrialState.COMPLETE:
            self.update_front()
        self.update_bar()
        return record

    # -- records, bar and front -------------------------------------------------------------------------
    def _keep(self, run_id: str, number: int, plan: TrialPlan, state: TrialState, metrics: dict[str, float], epochs: int,
              tags: dict[str, Any] | None = None) -> TrialRecord:
        previous = next((r for r in self.records if r.run_id == run_id), None)
        record = TrialRecord(run_id, f"t{number:03d}-{plan.config.student.name}", number, state, plan.feasible, epochs,
                             plan.config.epochs, {**plan_metrics(plan), **metrics}, {k: str(v) for k, v in plan.params.items()},
                             pareto=previous.pareto if previous else None, node=(tags or {}).get(names.NODE),
                             learned=(tags or {}).get(names.LEARNED, "true") == "true")
        self.records = [r for r in self.records if r.run_id != run_id] + [record]
        return record

    def reload(self) -> None:
        """Read the records back from MLflow (a resumed search starts from what is there)."""
        self.records = self.tracker.trial_records(self.parent_id)

    def update_bar(self, running: str | None = None) -> None:
        bar = self.progress.bar
        if bar is None:
            return
        front = compute_front(self.records)
        best = max((r.metrics["val_acc"] for r in front), default=float("nan"))
        postfix = {"front": len(front), "best_val": f"{best:.3f}",
                   "over_budget": sum(r.state is TrialState.INFEASIBLE for r in self.records)}
        paused = sum(r.state is TrialState.PAUSED for r in self.records)
        if paused:
            postfix["paused"] = paused
        if running:
            postfix["now"] = running
        bar.set_postfix(postfix)

    def update_front(self) -> list[TrialRecord]:
        """Tag the front, rewrite its table and plot, and log its hypervolume at the compute spent so far."""
        front = compute_front(self.records)
        self.tracker.mark_front(self.records, {r.run_id for r in front})
        settings = self.front
        settings.output.mkdir(parents=True, exist_ok=True)
        csv_path = write_csv(front, settings.output / "pareto.csv", settings.val_size)
        png_path = plot_front(self.records, front, settings.budget_macs, settings.output / "pareto.png",
                              f"{settings.title} ({len(self.records)} trials)")
        self.tracker.log_parent_files(self.parent_id, [csv_path, png_path])
        volume = hypervolume(front, settings.budget_macs, settings.majority_share)
        metrics = {"hypervolume": volume, "front_size": float(len(front))}
        if front:
            metrics["best_val_acc"] = max(r.metrics["val_acc"] for r in front)
        self.tracker.log_metrics(self.parent_id, metrics, step=self.student_epochs)
        return front


def plan_metrics(plan: TrialPlan) -> dict[str, float]:
    """The costs every trial logs, trained or not: MACs, FLOPs, parameters, peak activation memory,
    what else was measured (latency, flash, SRAM) and the zero-cost scores of the untrained student."""
    metrics = {"macs": float(plan.ops.macs), "flops": float(plan.ops.flops), "params": float(plan.ops.params),
               "activation_bytes": float(plan.activation_bytes)}
    metrics.update({k: float(v) for k, v in plan.measures.items()})
    metrics.update({f"score.{k}": float(v) for k, v in plan.scores.items()})
    return metrics
