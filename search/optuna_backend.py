"""The embedded back-end: Optuna's ask-and-tell loop, one trial at a time in this process.

Ask-and-tell keeps every state change explicit: an over-limit student is told to the sampler with
its constraints and never trained; a failure marks the trial FAIL; the study lives in a journal
file under the output folder, so rerunning the same command runs only what is still missing.

Multi-fidelity (``LoopOptions.rungs`` longer than one) is asynchronous successive halving with the
multi-objective promotion rule of ``fidelity``: each new trial trains to the first rung and pauses
there (its training state saved under ``OUTPUT/checkpoints``, the Optuna trial left RUNNING, the
MLflow run SCHEDULED); the loop's next job is the highest promotable paused trial, continued from
its checkpoint to the next rung, else a new trial. A paused trial that can no longer be promoted
is told PRUNED and its checkpoint deleted; a trial that reaches ``--epochs`` is told COMPLETE.

Whatever stops the process (Ctrl-C, kill -9), the study keeps the trial RUNNING: the output
folder's lock guarantees no other process owns it, so the next run resumes it with the same
parameters, from its last checkpoint when it has one.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState as OptunaState

from rkd_search.spaces import TrialPlan
from rkd_search.trainer import TrainResult, TrainState

from .errors import SearchError
from .fidelity import RUNGS_ATTR, TARGET_ATTR, RungEntry, hopeless, promotable
from .objective import Objective, TrialLoop
from .records import TrialState

log = logging.getLogger(__name__)



@dataclass
class Job:
    """Train ``trial`` (with ``plan``) from its checkpoint, or from scratch, up to ``until`` epochs."""

    trial: optuna.trial.Trial
    plan: TrialPlan
    until: int
    resume: TrainState | None = None
    why: str = "new"


@dataclass
class Ladder:
    """The rung tables of a multi-fidelity search, rebuilt from the study (so a rerun resumes them)."""

    loop: TrialLoop
    entries: dict[int, list[RungEntry]] = field(default_factory=dict)
    reached: dict[int, int] = field(default_factory=dict)  # alive trial number -> highest rung epoch reached (0: none)
    targets: dict[int, int] = field(default_factory=dict)  # alive trial number -> epoch it is trained to
    started: int = 0

    @classmethod
    def from_study(cls, loop: TrialLoop) -> "Ladder":
        ladder = cls(loop, {r: [] for r in loop.options.rungs})
        for trial in loop.study.get_trials(deepcopy=False):
            if trial.state in (OptunaState.FAIL, OptunaState.WAITING):
                continue
            ladder.started += 1
            rungs = {int(k): v for k, v in trial.user_attrs.get(RUNGS_ATTR, {}).items()}
            macs = trial.user_attrs.get("rkd.macs")
            for epochs, val_acc in rungs.items():
                if epochs in ladder.entries and macs is not None:
                    ladder.entries[epochs].append(RungEntry(trial.number, val_acc, macs))
            if trial.state == OptunaState.RUNNING:
                ladder.reached[trial.number] = max(rungs, default=0)
                ladder.targets[trial.number] = int(trial.user_attrs.get(TARGET_ATTR, loop.options.rungs[0]))
        return ladder

    @property
    def rungs(self) -> list[int]:
        return self.loop.options.rungs

    def promoted_from(self, rung: int) -> set[int]:
        """Trials of ``rung`` already promoted: recorded at a higher rung, or being trained to one."""
        higher = {e.number for r in self.rungs if r > rung for e in self.entries[r]}
        return higher | {n for n, target in self.targets.items() if target > rung}

    def most_entries(self, rung: int) -> int:
        """The most trials ``rung`` can ever hold: those there, plus every alive trial below it and
        every trial not started yet."""
        below = sum(1 for n, reached in self.reached.items() if reached < rung)
        return len(self.entries[rung]) + below + max(0, self.loop.options.trials - self.started)

    def record(self, number: int, epochs: int, val_acc: float, macs: float) -> None:
        self.entries[epochs] = [e for e in self.entries[epochs] if e.number != number] + [RungEntry(number, val_acc, macs)]
        self.reached[number] = epochs

    def forget(self, number: int) -> None:
        self.reached.pop(number, None)
        self.targets.pop(number, None)

    def paused(self) -> list[int]:
        return [n for n, reached in self.reached.items() if reached and self.targets.get(n, 0) <= reached]

    def hopeless(self) -> list[int]:
        """Paused trials that no later trial can help up (see ``fidelity.hopeless``)."""
        eta = self.loop.options.eta
        out = []
        for number in self.paused():
            rung = self.reached[number]
            entries = self.entries[rung]
            entry = next(e for e in entries if e.number == number)
            if hopeless(entry, entries, eta, self.most_entries(rung)):
                out.append(number)
        return out

    def promotion(self) -> tuple[int, int] | None:
        """(trial, next rung) of the first promotable paused trial, from the highest rung down."""
        paused = set(self.paused())
        budget = self.loop.objective.limits.budget_macs
        for index in range(len(self.rungs) - 2, -1, -1):
            rung = self.rungs[index]
            for number in promotable(self.entries[rung], self.loop.options.eta, budget, self.promoted_from(rung),
                                     self.loop.recorder.front.learned_threshold):
                if number in paused:
                    return number, self.rungs[index + 1]
        return None


def checkpoint_path(loop: TrialLoop, number: int) -> Path | None:
    folder = loop.options.checkpoints
    return folder / f"trial-{number:05d}.pt" if folder is not None else None


def _load_checkpoint(loop: TrialLoop, number: int, reached: int) -> TrainState | None:
    """The paused trial's state, or None (then it is trained from scratch: same seed, same weights)."""
    path = checkpoint_path(loop, number)
    if path is None or not path.exists():
        return None
    try:
        state = TrainState.load(path)
    except ValueError as error:
        log.warning("%s; trial %d is trained again from scratch", error, number)
        return None
    return state if state.epoch == reached else None


def _drop_checkpoint(loop: TrialLoop, number: int) -> None:
    path = checkpoint_path(loop, number)
    if path is not None:
        path.unlink(missing_ok=True)


def _set_attr(loop: TrialLoop, trial, key: str, value) -> None:
    loop.study._storage.set_trial_user_attr(trial._trial_id, key, value)


def _existing_trial(loop: TrialLoop, number: int) -> optuna.trial.Trial:
    frozen = loop.study.get_trials(deepcopy=False)[number]
    return optuna.trial.Trial(loop.study, frozen._trial_id)


def _key(number: int) -> str:
    return f"optuna:{number}"


def _prune(loop: TrialLoop, ladder: Ladder, number: int, why: str) -> None:
    """Tell PRUNED: the trial stopped at a lower rung for good; its checkpoint goes."""
    trial = _existing_trial(loop, number)
    plan = loop.objective.define(trial)
    reached = ladder.reached.get(number, 0)
    rungs = loop.study.get_trials(deepcopy=False)[number].user_attrs.get(RUNGS_ATTR, {})
    loop.study.tell(number, state=OptunaState.PRUNED)
    run_id = loop.recorder.tracker.find_trial(loop.recorder.parent_id, _key(number))
    if run_id is None:
        run_id = loop.recorder.start(number, _key(number), plan)
    partial = {"val_acc": float(rungs[str(reached)])} if str(reached) in rungs else {}
    loop.recorder.finish(run_id, number, plan, TrialState.PRUNED, tags={"rkd.pruned": why}, partial=partial, epochs_done=reached)
    ladder.forget(number)
    _drop_checkpoint(loop, number)


def _next_job(loop: TrialLoop, ladder: Ladder) -> Job | None:
    """Resume what a stopped process left in flight, else promote, else start a new trial."""
    for number, target in sorted(ladder.targets.items()):  # in flight when the last process stopped
        reached = ladder.reached.get(number, 0)
        if target > reached:
            trial = _existing_trial(loop, number)
            plan = loop.objective.define(trial)
            if not plan.feasible:  # stopped between the sampler's ask and tell
                _tell_infeasible(loop, trial, plan)
                ladder.forget(number)
                continue
            resume = _load_checkpoint(loop, number, reached) if reached else None
            return Job(trial, plan, target, resume, "resumed")
    promotion = ladder.promotion()
    if promotion is not None:
        number, until = promotion
        trial = _existing_trial(loop, number)
        return Job(trial, loop.objective.define(trial), until, _load_checkpoint(loop, number, ladder.reached[number]), "promoted")
    if ladder.started < loop.options.trials:
        return _new_job(loop, ladder)
    return None


def _new_job(loop: TrialLoop, ladder: Ladder) -> Job | None:
    """Ask the sampler for a trial; an over-limit one is told at once and never trained."""
    while ladder.started < loop.options.trials:
        trial = loop.study.ask()
        ladder.started += 1
        plan = loop.objective.define(trial)
        if plan.feasible:
            return Job(trial, plan, loop.options.rungs[0])
        _tell_infeasible(loop, trial, plan)
        if loop.options.out_of_time(loop.recorder.student_epochs):
            return None
    return None


def _tell_infeasible(loop: TrialLoop, trial, plan: TrialPlan) -> None:
    loop.study.tell(trial, Objective.infeasible_values(plan))
    run_id = loop.recorder.start(trial.number, _key(trial.number), plan)
    loop.recorder.finish(run_id, trial.number, plan, TrialState.INFEASIBLE)


def _run_job(loop: TrialLoop, ladder: Ladder, job: Job) -> str | None:
    """Train the job; returns the error when the trial failed (it then frees its slot)."""
    trial, plan, number = job.trial, job.plan, job.trial.number
    _set_attr(loop, trial, TARGET_ATTR, job.until)
    ladder.targets[number] = job.until
    ladder.reached.setdefault(number, 0)
    run_id = loop.recorder.start(number, _key(number), plan)

    def report(epoch_report) -> bool:
        loop.recorder.epoch(run_id, number, plan, epoch_report)
        return False

    try:
        result: TrainResult = loop.train(plan.config, loop.data, loop.targets, report, loop.options.device,
                                         resume=job.resume, until=job.until)
    except KeyboardInterrupt:  # the trial stays RUNNING in the study: the next run resumes it
        loop.recorder.finish(run_id, number, plan, TrialState.FAILED, error="interrupted (Ctrl-C); rerun to resume it",
                             tags={"rkd.failure": "interrupted"}, status="KILLED", epochs_done=ladder.reached.get(number, 0))
        raise
    except Exception as error:  # a diverging or crashing trial must not end the search
        loop.study.tell(trial, state=OptunaState.FAIL)
        epochs_done = ladder.reached.get(number, 0)
        ladder.forget(number)
        ladder.started -= 1  # a failed trial does not count towards --trials: another one is sampled
        _drop_checkpoint(loop, number)
        loop.recorder.finish(run_id, number, plan, TrialState.FAILED, error=traceback.format_exc(),
                             tags={"rkd.failure": "error"}, epochs_done=epochs_done)
        message = f"{type(error).__name__}: {error}"
        loop.recorder.progress.write(f"trial {number} ({plan.config.student.name}) failed: {message}")
        return message
    rungs = dict(loop.study.get_trials(deepcopy=False)[number].user_attrs.get(RUNGS_ATTR, {}))
    rungs[str(result.epochs_done)] = result.val_acc
    _set_attr(loop, trial, RUNGS_ATTR, rungs)
    ladder.record(number, result.epochs_done, result.val_acc, float(plan.ops.macs))
    if result.paused:
        path = checkpoint_path(loop, number)
        if path is not None:
            result.state.save(path)
        loop.recorder.pause(run_id, number, plan, result)
    else:
        loop.study.tell(trial, Objective.values(result))
        ladder.forget(number)
        _drop_checkpoint(loop, number)
        loop.recorder.finish(run_id, number, plan, TrialState.COMPLETE, result)
    return None


def run_trials(loop: TrialLoop) -> bool:
    """Run the study until ``--trials`` trials finished; False when stopped by the deadline (or the
    compute budget) first."""
    ladder = Ladder.from_study(loop)
    failures = 0
    while True:
        if loop.options.out_of_time(loop.recorder.student_epochs):
            return False
        for number in ladder.hopeless():
            _prune(loop, ladder, number, "dominated at its rung")
        job = _next_job(loop, ladder)
        if job is None:
            if loop.options.out_of_time(loop.recorder.student_epochs):
                return False
            break
        error = _run_job(loop, ladder, job)
        failures = failures + 1 if error else 0
        if failures >= loop.options.max_consecutive_failures:
            raise SearchError(f"{failures} trials in a row failed, the last with {error}; "
                              "see the rkd.error tags in MLflow")
    for number in sorted(ladder.paused()):  # nothing can be promoted any more
        _prune(loop, ladder, number, "not promoted")
    return True
