"""A trial's lifecycle: the one place where a trial changes state, for both back-ends.

Each call (ask, start, epoch, pause, prune, finish, fail, interrupt; and ``mark_stale_runs`` for the
runs a stopped process left RUNNING) updates together
the Optuna study (tell, the trial's attributes), the trial's MLflow run (through the recorder)
and the rung records of multi-fidelity, so the embedded loop and the Ray loop differ only in how
their framework's events reach these calls (as Optuna's own ``Study.tell`` and ``optimize`` both
end a trial through one ``_tell``).

A trial's end is written to MLflow first and told to Optuna last: the study's journal is what a
rerun trusts, so a process killed between the two leaves the trial RUNNING there, and the rerun
trains (or records) it again and rewrites its run. The other order left a trial PRUNED in the
study whose run stayed SCHEDULED forever (found by a kill -9 landing between the two writes).

How our states map onto Optuna's and MLflow's:

| ``rkd.state`` | Optuna trial | MLflow run | counts towards ``--trials`` |
|---|---|---|---|
| running | RUNNING | RUNNING | no |
| paused (at a rung, checkpoint kept) | RUNNING, ``rkd.rungs`` and ``rkd.target`` set | SCHEDULED | no |
| complete | COMPLETE, values (val acc, MACs) | FINISHED | yes |
| infeasible (over a limit, never trained) | COMPLETE, (0, MACs), a constraint > 0 | FINISHED | yes |
| pruned (stopped at a rung) | PRUNED | FINISHED | yes |
| failed (raised, diverged, its process died) | FAIL: another trial takes its place | FAILED | no |
| failed, interrupted (Ctrl-C, SIGTERM, the driver stopped) | RUNNING: the next run resumes it | KILLED | no |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState as OptunaState

from rkd_search.spaces import TrialPlan
from rkd_search.trainer import EpochReport, TrainResult

from . import names
from .fidelity import RungTable
from .records import TrialState

if TYPE_CHECKING:
    from .objective import Objective
    from .prescreen import Prescreen
    from .recorder import Recorder

log = logging.getLogger(__name__)

OPTUNA_STATES = {
    TrialState.RUNNING: OptunaState.RUNNING,
    TrialState.PAUSED: OptunaState.RUNNING,
    TrialState.COMPLETE: OptunaState.COMPLETE,
    TrialState.INFEASIBLE: OptunaState.COMPLETE,
    TrialState.PRUNED: OptunaState.PRUNED,
    TrialState.FAILED: OptunaState.FAIL,
}
"""Our state -> the Optuna state of its trial (an interrupted failed trial stays RUNNING)."""

FINISHED = (OptunaState.COMPLETE, OptunaState.PRUNED)
"""Optuna states of the trials that count towards ``--trials``."""


def trial_key(number: int) -> str:
    """The key that finds a trial's MLflow run again, whichever process or back-end runs it."""
    return f"optuna:{number}"


def finished_trials(study: optuna.Study) -> int:
    """Trials that will not run again: trained, over a limit, or stopped at a rung."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def mark_stale_runs(recorder: "Recorder") -> None:
    """MLflow runs a stopped process left RUNNING: KILLED and failed (``stale``); a trial that resumes
    reopens its run (its Optuna trial stayed RUNNING)."""
    for record in [r for r in recorder.records if r.state is TrialState.RUNNING]:
        recorder.tracker.finish_trial(record.run_id, TrialState.FAILED, error="the process running this trial stopped",
                                      tags={names.FAILURE: "stale"}, status="KILLED", epochs=record.epochs)
        record.state = TrialState.FAILED


# -- Optuna's private attributes: here only ------------------------------------------------------------

def reopen(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """An existing trial as a ``Trial`` that the define-by-run function can run again.

    Optuna's public API hands out only new trials (``ask``); a trial left RUNNING by a stopped
    process, or paused at a rung, is taken up again through its internal id
    (``FrozenTrial._trial_id``). With ``study_storage``, the only place the project touches
    Optuna's private attributes.
    """
    frozen = study.get_trials(deepcopy=False)[number]
    return optuna.trial.Trial(study, frozen._trial_id)


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind ``study`` (``Study._storage``: Optuna has no public accessor), so that
    Ray's ``OptunaSearch`` opens the very same study."""
    return study._storage


@dataclass
class OpenTrial:
    """A trial being trained or paused: its plan and its MLflow run."""

    number: int
    plan: TrialPlan
    run_id: str


@dataclass
class Lifecycle:
    """Starts, advances and ends trials; see the module's table for what each state means."""

    study: optuna.Study
    objective: "Objective"
    recorder: "Recorder"
    rungs: list[int]
    """Epochs at which trials are compared; ``[epochs]`` without multi-fidelity."""
    prescreen: "Prescreen | None" = None
    open: dict[int, OpenTrial] = field(default_factory=dict)
    screened: dict[int, int] = field(default_factory=dict)
    """Trial number -> how many candidates the prescreen scored to choose it."""
    plans: dict[int, TrialPlan] = field(default_factory=dict)
    """The plans of the trials this process defined (a trial's plan never changes)."""

    # -- the study's side ---------------------------------------------------------------------------
    def trial(self, number: int) -> optuna.trial.Trial:
        return reopen(self.study, number)

    def define(self, trial: optuna.trial.Trial) -> TrialPlan:
        """Run the define-by-run function on ``trial`` (new or reopened): its plan, constraints set."""
        plan = self.objective.define(trial)
        trial.set_user_attr(names.TRIAL_MACS, float(plan.ops.macs))
        self.plans[trial.number] = plan
        return plan

    def ask(self) -> tuple[int, TrialPlan]:
        """A new trial from the sampler (or the next enqueued one), defined, and scored when feasible.

        With a prescreen, up to N feasible candidates are asked and scored, the best-scored one is
        returned and the others are told FAIL, marked screened out (see ``prescreen``); candidates
        over a limit met on the way are told infeasible, with their run, as without the prescreen
        (like screened-out ones, they do not count towards ``--trials``). Enqueued (hand-picked)
        trials are never screened."""
        enqueued = bool(self.study.get_trials(deepcopy=False, states=(OptunaState.WAITING,)))
        trial = self.study.ask()
        number, plan = trial.number, self.define(trial)
        if self.prescreen is None or enqueued or not plan.feasible:
            self.objective.score(plan)
            return number, plan
        candidates = [(number, plan)]
        for _ in range(4 * self.prescreen.candidates):  # over-limit candidates are skipped, up to a point
            if len(candidates) >= self.prescreen.candidates:
                break
            trial = self.study.ask()
            other = self.define(trial)
            if other.feasible:
                candidates.append((trial.number, other))
            else:  # told as any over-limit trial is: the sampler learns the limits from it
                self.infeasible(trial.number, other)
        for _, candidate in candidates:
            self.objective.score(candidate)
        chosen = self.prescreen.choose(candidates)
        for other, _ in candidates:
            if other != chosen:
                self.screen_out(other)
        self.screened[chosen] = len(candidates)
        return chosen, dict(candidates)[chosen]

    def screen_out(self, number: int) -> None:
        """A prescreen candidate that will not train: FAIL, marked, with no MLflow run."""
        self.set_attr(number, names.TRIAL_SCREENED_OUT, True)
        self.study.tell(number, state=OptunaState.FAIL)

    def plan_of(self, number: int) -> TrialPlan:
        """The plan of a trial asked earlier, scored (by this process, or a stopped one: then it is
        defined again, which gives back the same parameters)."""
        plan = self.plans.get(number) or self.define(self.trial(number))
        self.objective.score(plan)
        return plan

    def set_attr(self, number: int, key: str, value: Any) -> None:
        self.trial(number).set_user_attr(key, value)

    def attrs(self, number: int) -> dict[str, Any]:
        return self.study.get_trials(deepcopy=False)[number].user_attrs

    def rung_table(self, trials_target: int) -> RungTable:
        """Every trial's rung results, the rungs alive trials reached and are trained to, rebuilt
        from the study (so a rerun resumes multi-fidelity where it stopped)."""
        table = RungTable(self.rungs, trials_target)
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state in (OptunaState.FAIL, OptunaState.WAITING):
                continue
            macs = trial.user_attrs.get(names.TRIAL_MACS)
            results = {int(k): float(v) for k, v in trial.user_attrs.get(names.TRIAL_RUNGS, {}).items()}
            target = int(trial.user_attrs.get(names.TRIAL_TARGET, self.rungs[0]))
            table.load(trial.number, results, macs, alive=trial.state == OptunaState.RUNNING, target=target)
        return table

    # -- transitions ----------------------------------------------------------------------------------
    def infeasible(self, number: int, plan: TrialPlan) -> None:
        """Over a limit: told to the sampler with its constraints, never trained."""
        run_id = self.recorder.start(number, trial_key(number), plan)
        self.recorder.finish(run_id, number, plan, TrialState.INFEASIBLE)
        self.study.tell(number, self.objective.infeasible_values(plan))

    def start(self, number: int, plan: TrialPlan, until: int, tags: dict[str, Any] | None = None) -> str:
        """Training starts (or continues) towards epoch ``until``: the run opens (or reopens)."""
        self.set_attr(number, names.TRIAL_TARGET, until)
        if number in self.screened:
            tags = {**(tags or {}), names.PRESCREEN: self.screened.pop(number)}
        run_id = self.recorder.start(number, trial_key(number), plan, tags)
        self.open[number] = OpenTrial(number, plan, run_id)
        return run_id

    def epoch(self, number: int, report: EpochReport, record_rung: bool = False) -> None:
        """An epoch ended. ``record_rung``: a back-end that decides at rungs while the trial runs
        (Ray) records the rung's accuracy here; the embedded one records it at ``pause``."""
        trial = self.open[number]
        self.recorder.epoch(trial.run_id, number, trial.plan, report)
        if record_rung and report.epoch in self.rungs[:-1]:
            self.record_rung(number, report.epoch, report.val_acc)

    def record_rung(self, number: int, epochs: int, val_acc: float) -> None:
        results = dict(self.attrs(number).get(names.TRIAL_RUNGS, {}))
        results[str(epochs)] = val_acc
        self.set_attr(number, names.TRIAL_RUNGS, results)

    def pause(self, number: int, result: TrainResult) -> None:
        """Stopped at a rung, its checkpoint kept: the trial stays RUNNING in the study."""
        trial = self.open.pop(number)
        self.record_rung(number, result.epochs_done, result.val_acc)
        self.recorder.pause(trial.run_id, number, trial.plan, result)

    def finish(self, number: int, result: TrainResult, tags: dict[str, Any] | None = None) -> None:
        """Trained for every epoch: told COMPLETE with (validation accuracy, MACs)."""
        trial = self.open.pop(number)
        self.recorder.finish(trial.run_id, number, trial.plan, TrialState.COMPLETE, result, tags=tags)
        self.study.tell(number, self.objective.values(result))

    def prune(self, number: int, why: str, tags: dict[str, Any] | None = None) -> None:
        """Stopped at a rung for good: told PRUNED, off the front; its last rung accuracy kept."""
        trial = self.open.pop(number, None)
        plan = trial.plan if trial else self.plan_of(number)
        results = {int(k): v for k, v in self.attrs(number).get(names.TRIAL_RUNGS, {}).items()}
        reached = max(results, default=0)
        run_id = trial.run_id if trial else self.recorder.tracker.find_trial(self.recorder.parent_id, trial_key(number))
        if run_id is None:
            run_id = self.recorder.start(number, trial_key(number), plan)
        partial = {"val_acc": float(results[reached])} if reached else {}
        self.recorder.finish(run_id, number, plan, TrialState.PRUNED, tags={names.PRUNED: why, **(tags or {})},
                             partial=partial, epochs_done=reached)
        self.study.tell(number, state=OptunaState.PRUNED)

    def fail(self, number: int, error: str, failure: str, epochs_done: int = 0, tags: dict[str, Any] | None = None) -> None:
        """Raised, diverged or its process died: told FAIL (another trial takes its place)."""
        trial = self.open.pop(number)
        self.recorder.finish(trial.run_id, number, trial.plan, TrialState.FAILED, error=error,
                             tags={names.FAILURE: failure, **(tags or {})}, epochs_done=epochs_done)
        self.study.tell(number, state=OptunaState.FAIL)

    def interrupt(self, number: int, reason: str, failure: str = "interrupted") -> None:
        """The search stopped under it (Ctrl-C, SIGTERM, Tune ended): the run is KILLED, the trial
        stays RUNNING in the study so that the next run resumes it with its own parameters."""
        trial = self.open.pop(number, None)
        if trial is None:
            return
        reached = max((int(k) for k in self.attrs(number).get(names.TRIAL_RUNGS, {})), default=0)
        self.recorder.finish(trial.run_id, number, trial.plan, TrialState.FAILED, error=f"{reason}; rerun to resume it",
                             tags={names.FAILURE: failure}, status="KILLED", epochs_done=reached)

    def interrupt_all(self, reason: str, failure: str = "interrupted") -> None:
        for number in list(self.open):
            self.interrupt(number, reason, failure)
