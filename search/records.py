"""A trial as the front, the tables and the progress bar see it: its state and its MLflow record."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class TrialState(str, Enum):
    """The one vocabulary of trial states, written to MLflow as the ``rkd.state`` tag.

    - ``running``: training now;
    - ``paused``: multi-fidelity, stopped at a rung with a checkpoint, waiting to be promoted;
    - ``complete``: trained for every epoch (the only state that can enter the Pareto front);
    - ``infeasible``: over the MAC budget or another limit, never trained;
    - ``pruned``: stopped at a lower rung by multi-fidelity (its ``rkd.epochs`` says where);
    - ``failed``: raised, diverged or was interrupted (an interrupted trial is run again on resume).
    """

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETE = "complete"
    INFEASIBLE = "infeasible"
    PRUNED = "pruned"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """Counts towards ``--trials``: a trial that will not run again."""
        return self in (TrialState.COMPLETE, TrialState.INFEASIBLE, TrialState.PRUNED)

    @property
    def run_status(self) -> str:
        """The MLflow run status that goes with the state."""
        return {TrialState.RUNNING: "RUNNING", TrialState.PAUSED: "SCHEDULED", TrialState.FAILED: "FAILED"}.get(self, "FINISHED")


@dataclass
class TrialRecord:
    """One child run, as the Pareto front and the CLI's tables see it."""

    run_id: str
    name: str
    number: int
    state: TrialState
    feasible: bool
    epochs: int
    epochs_planned: int
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    pareto: bool | None = None
    node: str | None = None
    learned: bool = True

    def __post_init__(self) -> None:
        self.state = TrialState(self.state)

    @property
    def full_fidelity(self) -> bool:
        return self.state is TrialState.COMPLETE and self.feasible and self.epochs >= self.epochs_planned > 0

    @property
    def eligible(self) -> bool:
        """Can enter the Pareto front: trained for every epoch, within budget, and better than chance."""
        return self.full_fidelity and self.learned and "val_acc" in self.metrics
