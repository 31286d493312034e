"""What to run next, and when to stop: the policy a back-end that launches trials itself shares.

A ``Scheduler`` holds the rung table of multi-fidelity (``fidelity``), the epochs each running
trial has trained, the compute budget (``--max-student-epochs``, ``--timeout``) and the failure
limit; the back-end tells it what started, trained, finished and failed, and asks it for the next
piece of work (``next_work``) and for the trials to stop (``hopeless``). It knows nothing of how
trials run (worker processes, a cluster's jobs): the local back-end maps its answers onto jobs; a
Slurm or Dask launcher would do the same. (Ray Tune schedules its own trials and applies the same
promotion rule through ``fidelity.promotable``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from . import names
from .errors import SearchError
from .fidelity import RungTable
from .lifecycle import Lifecycle
from .objective import LoopOptions


@dataclass(frozen=True)
class Work:
    """Train trial ``number`` to epoch ``until``; ``resume``: from its checkpoint (paused or left running)."""

    number: int
    until: int
    why: str
    resume: bool


@dataclass
class FailureLimit:
    """``limit`` trials failing in a row stop the search (a broken setup, not an unlucky student)."""

    limit: int
    failures: int = 0

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, message: str) -> None:
        self.failures += 1
        if self.failures >= self.limit:
            raise SearchError(f"{self.failures} trials in a row failed, the last with {message}; "
                              f"see the {names.ERROR} tags in MLflow")


@dataclass
class Scheduler:
    lifecycle: Lifecycle
    options: LoopOptions
    table: RungTable
    failures: FailureLimit
    trained: dict[int, int] = field(default_factory=dict)
    """Running trial -> the epochs it has trained (its last report, or where it resumed from)."""

    @classmethod
    def for_loop(cls, lifecycle: Lifecycle, options: LoopOptions) -> "Scheduler":
        return cls(lifecycle, options, lifecycle.rung_table(options.trials), FailureLimit(options.max_consecutive_failures))

    # -- the compute budget -------------------------------------------------------------------------
    def committed_epochs(self, running: Iterable[int]) -> int:
        """Student-epochs trained, plus those the running trials will still train before they report:
        with several jobs, a budget counted on trained epochs alone started trials for compute
        already promised (``--jobs 8``, ``--max-student-epochs 96``: 120 trained)."""
        promised = sum(max(0, self.table.targets.get(n, 0) - self.trained.get(n, 0)) for n in running)
        return self.lifecycle.recorder.student_epochs + promised

    def out_of_time(self, running: Iterable[int]) -> bool:
        """The deadline passed or the compute budget is spent or promised: start nothing more."""
        return self.options.out_of_time(self.committed_epochs(running))

    def compute_short(self, running: Iterable[int]) -> bool:
        """The compute budget left could not train one more student fully: start no new trial."""
        left = self.options.compute_left(self.committed_epochs(running))
        return left is not None and left < self.options.epochs

    def finishing(self, running: Iterable[int]) -> bool:
        """No new trial will start: the rungs promote with ceil so the best paused trials finish."""
        return self.table.started >= self.options.trials or self.compute_short(running)

    def stopped_early(self, running: Iterable[int]) -> bool:
        """The deadline or the compute budget ended the run before ``--trials`` trials were started."""
        return self.out_of_time(running) or (self.compute_short(running) and self.table.started < self.options.trials)

    # -- choosing the next work -----------------------------------------------------------------------
    def next_work(self, running: set[int]) -> Work | None:
        """Resume what a stopped process left in flight, else promote, else start a new trial."""
        lifecycle, options = self.lifecycle, self.options
        for number, target in sorted(self.table.targets.items()):  # in flight when the last process stopped
            if number in running or target <= self.table.reached.get(number, 0):
                continue
            plan = lifecycle.plan_of(number)
            if not plan.feasible:  # stopped between the sampler's ask and tell
                lifecycle.infeasible(number, plan)
                self.table.forget(number)
                continue
            return Work(number, target, "resumed", resume=True)
        promotion = self.table.promotion(options.eta, lifecycle.objective.limits.budget_macs,
                                         lifecycle.recorder.front.learned_threshold, running,
                                         finishing=self.finishing(running))
        if promotion is not None:
            number, until = promotion
            return Work(number, until, "promoted", resume=True)
        while self.table.started < options.trials and not self.compute_short(running):
            number, plan = lifecycle.ask()
            self.table.started += 1
            if plan.feasible:
                return Work(number, options.rungs[0], "new", resume=False)
            lifecycle.infeasible(number, plan)
        return None

    def hopeless(self, running: set[int]) -> list[tuple[int, str]]:
        """Paused trials to stop now: dominated at their rung, or unable to finish within the compute left."""
        if not self.options.multi_fidelity:
            return []
        stop = [(number, "dominated at its rung") for number in self.table.hopeless(self.options.eta)]
        left = self.options.compute_left(self.committed_epochs(running))
        if left is not None:
            stop += [(number, "cannot finish within the compute left") for number in self.table.paused(running)
                     if self.table.epochs_to_finish(number) > left and number not in dict(stop)]
        return stop

    # -- what happened ----------------------------------------------------------------------------------
    def started(self, number: int, until: int) -> None:
        self.trained[number] = self.table.reached.get(number, 0)
        self.table.train_to(number, until)

    def epoch(self, number: int, epoch: int) -> None:
        self.trained[number] = epoch

    def reached(self, number: int, epochs: int, val_acc: float, macs: float) -> None:
        """A trial reported at a rung (paused there, or finished)."""
        self.failures.succeeded()
        self.trained.pop(number, None)  # not running any more (a paused trial resumes from table.reached)
        self.table.record(number, epochs, val_acc, macs)

    def ended(self, number: int) -> None:
        """Finished or stopped for good: out of the rung table's live trials."""
        self.trained.pop(number, None)
        self.table.forget(number)

    def failed(self, number: int, message: str) -> None:
        """A failed trial does not count towards ``--trials``: another one is sampled (until the limit)."""
        self.ended(number)
        self.table.started -= 1
        self.failures.failed(message)
