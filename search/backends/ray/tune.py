"""The Tune parts of the Ray back-end: the trainable, the searcher, the rung scheduler and the
callback that turns Tune's events into the trial lifecycle's calls on the driver.

- The trainable calls the loop's ``train`` function in a Ray worker; it reports ``val_acc`` after
  every epoch and the final result with the weights as a checkpoint. The dataset tensors and the
  teacher targets reach the workers once, through the object store (``tune.with_parameters``).
- The searcher is Optuna's (``OptunaSearch`` over the search's study), with two changes: a new
  trial comes from the lifecycle (so the prescreen, the enqueued students and the trials a killed
  driver left RUNNING are handled as in the embedded back-end: a left-over trial is resumed with
  its own number and run, not asked again), and the lifecycle, not the searcher, tells Optuna how
  a trial ended.
- Multi-fidelity: ``ParetoRungScheduler`` decides at each rung, with the promotion rule of
  ``fidelity`` on the lifecycle's rung table, whether a trial continues (the stopping variant of
  asynchronous successive halving).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rkd_search.trainer import EpochReport, TrainConfig, TrainResult

from ... import names
from ...fidelity import RungTable, promotable
from ...lifecycle import Lifecycle
from ...objective import train_student

FINAL = "rkd_final"
"""The key of a trial's last report (its full-fidelity result)."""
RESULT_FILE = "result.pt"
"""The trial's result and weights in its checkpoint (``TrainResult.to_bytes``)."""


# -- the trainable: runs in a Ray worker ------------------------------------------------------------

def train_trial(config: dict[str, Any], data=None, targets=None, train: Callable = train_student) -> None:
    """One trial in a Ray worker: report per-epoch validation accuracy, then the final result and weights."""
    import ray
    import torch
    from ray import tune

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    plan = config["rkd"]
    if not plan["feasible"]:  # over a limit: never trained, the sampler still learns its MACs
        tune.report({"val_acc": 0.0, "macs": float(plan["macs"]), FINAL: True, "rkd_node": node})
        return
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") if ray.is_initialized() else None
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    train_config = TrainConfig.from_dict(plan["config"])

    def report(epoch_report: EpochReport) -> None:
        if epoch_report.epoch < epoch_report.epochs:  # the last epoch goes out with the final result
            tune.report({"val_acc": epoch_report.val_acc, "macs": float(plan["macs"]), FINAL: False, "rkd_node": node,
                         "rkd_epoch": json.dumps(epoch_report.__dict__)})

    result = train(train_config, data, targets, report)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / RESULT_FILE).write_bytes(result.to_bytes())
        tune.report(
            {"val_acc": result.val_acc, "macs": float(result.macs), FINAL: True, "rkd_node": node,
             "rkd_epoch": json.dumps(result.history[-1].__dict__)},
            checkpoint=tune.Checkpoint.from_directory(folder),
        )


# -- the searcher ------------------------------------------------------------------------------------

def lifecycle_search(lifecycle: Lifecycle, deadline: float | None = None, **kwargs):
    """OptunaSearch whose trials come from the lifecycle (new, enqueued, or left RUNNING by a stopped
    driver, which resume under their own number), that starts none after ``deadline``
    (``time.monotonic()``) and leaves telling Optuna to the lifecycle."""
    from optuna.trial import TrialState as OptunaState
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    left_over = [t.number for t in lifecycle.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,))
                 if not t.user_attrs.get(names.TRIAL_SCREENED_OUT)]

    class LifecycleOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str):
            if deadline is not None and time.monotonic() > deadline:
                return Searcher.FINISHED
            if trial_id not in self._ot_trials:
                number = left_over.pop(0) if left_over else lifecycle.ask()[0]
                self._ot_trials[trial_id] = lifecycle.trial(number)
            return super().suggest(trial_id)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self._completed_trials.add(trial_id)  # the lifecycle told Optuna, from the callback

        # The study is persisted trial by trial in the journal file, and a rerun resumes from it,
        # not from Tune's experiment checkpoint: there is no searcher state to pickle (the
        # define-by-run function is a closure over the driver's plans).
        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            pass

        def save(self, checkpoint_path: str) -> None:
            pass

        def __getstate__(self) -> dict:
            # Tune pickles its searcher with the experiment's state, for Tuner.restore, which
            # rkd-search never uses (the journal is the state): the study, the lifecycle and the
            # data it reaches stay out of it
            return {"_metric": self._metric, "_mode": self._mode}

    return LifecycleOptunaSearch(**kwargs)


# -- the scheduler -------------------------------------------------------------------------------------

def pareto_rung_scheduler(table: RungTable, eta: int, budget_macs: float, floor: float = 0.0):
    """A Tune scheduler that stops a trial at a rung unless the promotion rule keeps it (see ``fidelity``).

    Trials are judged as they arrive (Ray's stopping variant cannot wait for a rung to fill), so a
    rung with fewer than eta results lets its best trial continue: ``finishing`` promotion."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class ParetoRungScheduler(FIFOScheduler):
        def decide(self, number: int, epochs: int, val_acc: float, macs: float) -> bool:
            """Record the trial at rung ``epochs``; True when it may continue."""
            table.record(number, epochs, val_acc, macs)
            return number in promotable(table.entries[epochs], eta, budget_macs, floor=floor, finishing=True)

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            epochs = int(result.get("training_iteration", 0))
            if epochs in table.rungs[:-1] and not result.get(FINAL):
                if not self.decide(trial.config["rkd"]["number"], epochs, float(result["val_acc"]), float(result["macs"])):
                    return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return ParetoRungScheduler()


# -- the callback: Tune's events -> the lifecycle ------------------------------------------------------

class TuneEvents:
    """The Tune callback, on the driver, that turns each Tune event into a lifecycle call."""

    def __init__(self, lifecycle: Lifecycle, rungs: list[int]) -> None:
        from ray.tune import Callback  # not at module level: `connect` must set Ray's environment first

        self.lifecycle = lifecycle
        self.rungs = rungs
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.last: dict[str, dict[str, Any]] = {}
        self.checkpoints: dict[str, Any] = {}
        events = self

        class Forward(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                events.start(trial)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                events.result(trial, result)

            def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
                events.checkpoints[trial.trial_id] = checkpoint

            def on_trial_complete(self, iteration, trials, trial, **info):
                events.complete(trial)

            def on_trial_error(self, iteration, trials, trial, **info):
                events.error(trial)

            def __getstate__(self) -> dict:  # left out of Tune's experiment state, as the searcher is
                return {}

        self.callback = Forward()

    def start(self, trial) -> None:
        number = trial.config["rkd"]["number"]
        plan = self.lifecycle.plan_of(number)
        self.numbers[trial.trial_id] = number
        if plan.feasible:
            self.lifecycle.start(number, plan, self.rungs[-1])

    def result(self, trial, result: dict[str, Any]) -> None:
        first = trial.trial_id not in self.last
        self.last[trial.trial_id] = result
        number = self.numbers[trial.trial_id]
        if number not in self.lifecycle.open:
            return
        if first and result.get("rkd_node"):  # where it runs, visible while it runs
            self.lifecycle.recorder.tracker.set_tags(self.lifecycle.open[number].run_id, {names.NODE: result["rkd_node"]})
        if result.get("rkd_epoch"):
            self.lifecycle.epoch(number, EpochReport(**json.loads(result["rkd_epoch"])), record_rung=True)

    def complete(self, trial) -> None:
        number = self.numbers.pop(trial.trial_id)
        last = self.last.pop(trial.trial_id, {})
        tags = {names.NODE: last["rkd_node"]} if last.get("rkd_node") else {}
        if number not in self.lifecycle.open:  # over a limit: never started
            self.lifecycle.infeasible(number, self.lifecycle.plan_of(number))
        elif last.get(FINAL) and trial.trial_id in self.checkpoints:
            with self.checkpoints.pop(trial.trial_id).as_directory() as folder:
                result = TrainResult.from_bytes((Path(folder) / RESULT_FILE).read_bytes())
            self.lifecycle.finish(number, result, tags=tags)
        else:  # stopped by the scheduler at a rung: kept with how far it got, off the front
            self.lifecycle.prune(number, "not promoted", tags=tags)

    def error(self, trial) -> None:
        if trial.trial_id not in self.numbers:
            return
        number = self.numbers.pop(trial.trial_id)
        last = self.last.pop(trial.trial_id, {})
        message = str(getattr(trial, "error_file", "") or "")
        try:
            if message and Path(message).is_file():
                message = Path(message).read_text()[-5000:]
        except OSError:
            pass
        if number in self.lifecycle.open:
            self.lifecycle.fail(number, message or "the trial raised", "error", int(last.get("training_iteration", 0)))
            self.lifecycle.recorder.progress.write(f"trial {number} failed on Ray; see the {names.ERROR} tag of its MLflow run")
        else:  # over a limit, never trained: its report did not arrive, its constraints say why
            self.lifecycle.infeasible(number, self.lifecycle.plan_of(number))
