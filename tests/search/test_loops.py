"""Each back-end's trial loop in-process, with a stub ``train``: no subprocess, no real training.

The study is a real Optuna journal, MLflow a real SQLite store, the space the built-in default;
only the training is replaced by a function that reports epochs and returns a result derived from
the student's width. The Ray loop runs its real searcher (OptunaSearch), scheduler and MLflow
callback, driven in the order Tune drives them, without starting Ray.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState as OptunaState

from rkd_search.search import SearchError, TrialState, compute_front
from rkd_search.search.objective import Limits, LoopOptions, Objective, TrialLoop
from rkd_search.search.recorder import FrontFiles, Progress, Recorder
from rkd_search.search.study import open_study
from rkd_search.search.tracking import Tracker, TrackingSettings
from rkd_search.spaces import TrialContext, load_space
from rkd_search.trainer import EpochReport, TrainResult, TrainState

CONTEXT = TrialContext(budget_macs=20e6, in_channels=3, num_classes=4, resolution=16, epochs=9, batch_size=32)


class StubTrain:
    """Reports every epoch and returns a result whose accuracy grows with width and epochs.

    ``fail``: trial widths (student.width) that raise; ``interrupt_on``: call index that raises
    KeyboardInterrupt (once). Records each call as (student name, start epoch, until).
    """

    def __init__(self, fail=(), interrupt_on=None, fail_all=False, interrupt_on_resume=False):
        self.calls = []
        self.fail, self.interrupt_on, self.fail_all = set(fail), interrupt_on, fail_all
        self.interrupt_on_resume = interrupt_on_resume

    def __call__(self, config, data, targets, report=None, device=None, resume=None, until=None):
        start = resume.epoch if resume is not None else 0
        until = until or config.epochs
        self.calls.append((config.student.name, start, until))
        if self.interrupt_on is not None and len(self.calls) - 1 == self.interrupt_on:
            self.interrupt_on = None
            raise KeyboardInterrupt
        if self.interrupt_on_resume and resume is not None:
            self.interrupt_on_resume = False
            raise KeyboardInterrupt
        if self.fail_all or config.student.width in self.fail:
            raise FloatingPointError("the loss became nan in epoch 1; lower the learning rate")
        history = list(resume.history) if resume else []
        for epoch in range(start + 1, until + 1):
            penalty = 0.1 * (config.lr < 0.06) + 0.2 * (config.loss.graph_weight > 10)  # some trials worse than others
            accuracy = min(0.99, 0.4 + 0.2 * config.student.width + 0.04 * epoch - penalty)
            history.append(EpochReport(epoch, config.epochs, accuracy, 1.0 / epoch, {"ce": 1.0 / epoch}, 0.1, 0.01))
            if report is not None:
                report(history[-1])
        paused = until < config.epochs
        state = TrainState(until, {}, {}, list(history), 0.1) if paused else None
        return TrainResult(config.student.with_data(3, 4), history[-1].val_acc, None if paused else history[-1].val_acc - 0.01,
                           None, None, 1_000_000, 2_000_000, 10_000, 0.1, until, config.epochs, False, (3, 16, 16), history,
                           {}, state)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    return Tracker(TrackingSettings(f"sqlite:///{folder}/mlflow.db", "loops"))


def make_loop(tracker, output: Path, train, trials=4, rungs=(9,), limits=None, parent_id=None, space="default", synthetic=None,
              latency=None):
    space = load_space(space)
    output.mkdir(parents=True, exist_ok=True)
    study = open_study(output, ("maximize", "minimize"), "random", 0, trials)
    if "rkd.parent_run_id" not in study.user_attrs:
        for params in space.enqueued_params(CONTEXT):
            study.enqueue_trial(params)
        parent_id = tracker.start_search(f"loop-{output.name}", {"budget": "20M"}, {"rkd.output": str(output)}, {})
        study.set_user_attr("rkd.parent_run_id", parent_id)
    parent_id = study.user_attrs["rkd.parent_run_id"]
    recorder = Recorder(tracker, parent_id, Progress(False), FrontFiles(output, 20e6, "test", 0.25, 400))
    recorder.reload()
    objective = Objective(space, CONTEXT, limits or Limits(20e6), latency=latency)
    options = LoopOptions(trials=trials, epochs=9, rungs=list(rungs), eta=3, checkpoints=output / "checkpoints")
    return TrialLoop(study, objective, recorder, synthetic, None, options, train)


def children(tracker, loop):
    return tracker.trial_records(loop.recorder.parent_id)


def check_front_tags(tracker, loop):
    records = children(tracker, loop)
    front = {r.run_id for r in compute_front(records)}
    assert front, "no trial on the front"
    assert {r.run_id for r in records if r.pareto} == front
    assert all(r.state is TrialState.COMPLETE and r.full_fidelity for r in records if r.pareto)


# -- the Optuna back-end ------------------------------------------------------------------------------

def test_optuna_loop_completes_trials_and_keeps_the_front_current(tracker, tmp_path, synthetic):
    from rkd_search.search.optuna_backend import run_trials

    train = StubTrain()
    loop = make_loop(tracker, tmp_path, train, trials=4, synthetic=synthetic)
    assert run_trials(loop) is True
    records = children(tracker, loop)
    assert len(records) == 4 and all(r.state is TrialState.COMPLETE for r in records)
    assert records[0].params["student.name"] == "wrn28_0.5"  # the enqueued baseline comes first
    assert len(train.calls) == 4 and all(call[1:] == (0, 9) for call in train.calls)
    check_front_tags(tracker, loop)
    assert (tmp_path / "pareto.csv").exists() and (tmp_path / "pareto.png").exists()
    assert [t.state for t in loop.study.trials] == [OptunaState.COMPLETE] * 4


LIMITS = {
    "params": (Limits(20e6, max_params=30_000), "params", "constraints:params_over_limit", 30_000),
    "activation memory": (Limits(20e6, max_activation_bytes=100_000), "activation_bytes",
                          "constraints:activation_memory_over_limit", 100_000),
    "latency": (Limits(20e6, max_latency_ms=1.0), "latency_ms", "constraints:latency_over_limit", 1.0),
}


@pytest.mark.parametrize("limit", LIMITS, ids=list(LIMITS))
def test_over_limit_students_are_constrained_and_never_trained(tracker, tmp_path, synthetic, limit):
    from rkd_search.search.optuna_backend import run_trials

    limits, metric, constraint, value = LIMITS[limit]
    train = StubTrain()
    # a stand-in latency (ms) that grows with MACs: a real one is measured with ONNX Runtime (test_export)
    loop = make_loop(tracker, tmp_path, train, trials=5, limits=limits, synthetic=synthetic,
                     latency=lambda spec: 1.6 * spec.width)  # the baseline wrn28_0.5 is under, wide students over
    run_trials(loop)
    records = children(tracker, loop)
    over = [r for r in records if r.state is TrialState.INFEASIBLE]
    assert over and all(r.metrics[metric] > value for r in over)
    assert all(r.metrics[metric] <= value for r in records if r.state is TrialState.COMPLETE)
    trained = {call[0] for call in train.calls}
    assert not trained & {r.params["student.name"] for r in over}
    for record in records:  # every trial logs every cost, limit or not
        assert {"params", "activation_bytes", "latency_ms", "macs"} <= set(record.metrics)
    for trial in loop.study.trials:  # and carries every constraint in force
        assert {"constraints:macs_over_budget", constraint} <= set(trial.system_attrs)


def test_failed_trials_are_replaced_and_three_in_a_row_stop_the_search(tracker, tmp_path, synthetic):
    from rkd_search.search.optuna_backend import run_trials

    loop = make_loop(tracker, tmp_path / "one", StubTrain(fail={0.5}), trials=3, synthetic=synthetic)
    run_trials(loop)
    records = children(tracker, loop)
    failed = [r for r in records if r.state is TrialState.FAILED]
    assert len(failed) == 1 and failed[0].params["student.name"] == "wrn28_0.5"
    assert sum(r.state.finished for r in records) == 3  # another trial took the failed one's place
    assert loop.study.trials[0].state == OptunaState.FAIL

    loop = make_loop(tracker, tmp_path / "all", StubTrain(fail_all=True), trials=3, synthetic=synthetic)
    with pytest.raises(SearchError, match="3 trials in a row failed.*nan"):
        run_trials(loop)


def test_an_interrupted_trial_is_resumed_with_its_own_parameters(tracker, tmp_path, synthetic):
    from rkd_search.search.optuna_backend import run_trials

    train = StubTrain(interrupt_on=1)
    loop = make_loop(tracker, tmp_path, train, trials=3, synthetic=synthetic)
    with pytest.raises(KeyboardInterrupt):
        run_trials(loop)
    interrupted = loop.study.trials[1]
    assert interrupted.state == OptunaState.RUNNING  # kept for the next run, not failed
    run = next(r for r in children(tracker, loop) if r.number == 1)
    assert run.state is TrialState.FAILED

    again = make_loop(tracker, tmp_path, train, trials=3, synthetic=synthetic)  # a new process on the same folder
    assert run_trials(again) is True
    assert again.study.trials[1].params == interrupted.params and again.study.trials[1].state == OptunaState.COMPLETE
    records = children(tracker, again)
    assert sorted(r.number for r in records) == [0, 1, 2]  # no duplicate run, the interrupted one reused
    assert all(r.state is TrialState.COMPLETE for r in records)
    check_front_tags(tracker, again)


def test_multi_fidelity_pauses_promotes_prunes_and_resumes_from_checkpoints(tracker, tmp_path, synthetic):
    from rkd_search.search.optuna_backend import run_trials

    train = StubTrain(interrupt_on_resume=True)  # Ctrl-C while a paused trial is promoted from its checkpoint
    loop = make_loop(tracker, tmp_path, train, trials=9, rungs=(1, 3, 9), synthetic=synthetic)
    with pytest.raises(KeyboardInterrupt):
        run_trials(loop)
    saved = sorted((tmp_path / "checkpoints").iterdir())
    assert saved, "paused trials keep a checkpoint"
    if len(saved) > 1:  # a damaged checkpoint: that trial trains again from scratch (same seed, same weights)
        saved[-1].write_bytes(b"torn")
    again = make_loop(tracker, tmp_path, train, trials=9, rungs=(1, 3, 9), synthetic=synthetic)
    assert run_trials(again) is True
    records = children(tracker, again)
    assert sum(r.state.finished for r in records) == 9 and len({r.number for r in records}) == len(records)
    pruned = [r for r in records if r.state is TrialState.PRUNED]
    complete = [r for r in records if r.state is TrialState.COMPLETE]
    assert pruned and complete and all(r.epochs < 9 and not r.pareto for r in pruned)
    assert all(r.epochs == 9 for r in complete)
    continued = [call for call in train.calls if call[1] > 0]
    assert continued, "promotions continue from the checkpoint, not from scratch"
    assert not list((tmp_path / "checkpoints").iterdir()), "every checkpoint is deleted once its trial ends"
    states = {t.state for t in again.study.trials}
    assert states == {OptunaState.COMPLETE, OptunaState.PRUNED}
    check_front_tags(tracker, again)


# -- the Ray back-end ---------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def drive_like_tune(pieces, samples: int, tmp_path: Path, interrupt_after: int | None = None) -> None:
    """Run the pieces in the order Tune calls them: suggest, start, results (the scheduler may stop
    the trial), checkpoint, complete or error; one trial at a time."""
    from ray import tune
    from ray.tune.schedulers import TrialScheduler

    from rkd_search.search.ray_backend import train_trial

    callback = pieces.recorder.callback
    for index in range(samples):
        trial_id = f"trial_{index}"
        config = pieces.searcher.suggest(trial_id)
        if config is None or config == "FINISHED":
            break
        trial = SimpleNamespace(trial_id=trial_id, config=config, error_file=None)
        callback.on_trial_start(0, [], trial)
        results: list[dict] = []

        def report(metrics, checkpoint=None, trial=trial, results=results):
            metrics = {**metrics, "training_iteration": len(results) + 1}
            results.append(metrics)
            if checkpoint is not None:
                kept = tmp_path / f"checkpoint-{trial.trial_id}"
                shutil.copytree(checkpoint.path, kept)
                callback.on_checkpoint(0, [], trial, checkpoint=tune.Checkpoint.from_directory(str(kept)))
            callback.on_trial_result(0, [], trial, metrics)
            if pieces.scheduler.on_trial_result(None, trial, metrics) == TrialScheduler.STOP:
                raise _Stop

        tune.report = report
        if interrupt_after is not None and index == interrupt_after:
            raise KeyboardInterrupt
        try:
            train_trial(config, **pieces.parameters)
        except _Stop:
            pass
        except Exception:
            pieces.searcher.on_trial_complete(trial_id, error=True)
            callback.on_trial_error(0, [], trial)
            continue
        pieces.searcher.on_trial_complete(trial_id, result=results[-1])
        callback.on_trial_complete(0, [], trial)


@pytest.mark.parametrize("rungs", [(9,), (1, 3, 9)], ids=["full-fidelity", "multi-fidelity"])
def test_ray_loop_records_like_the_optuna_loop_and_resumes(tracker, tmp_path, synthetic, monkeypatch, rungs):
    from ray import tune

    from rkd_search.search.ray_backend import finished_trials, tune_pieces

    monkeypatch.setattr(tune, "report", tune.report)  # drive_like_tune replaces it
    train = StubTrain(fail={0.25})
    trials = 6 if len(rungs) == 1 else 10
    loop = make_loop(tracker, tmp_path, train, trials=trials, rungs=rungs, limits=Limits(20e6, max_params=60_000), synthetic=synthetic)
    pieces = tune_pieces(loop)
    with pytest.raises(KeyboardInterrupt):
        drive_like_tune(pieces, pieces.remaining, tmp_path, interrupt_after=3)
    pieces.recorder.abandon("interrupted (Ctrl-C)", "interrupted")
    # a started trial that never reported stays RUNNING in the study, as when a driver is killed
    orphan = loop.study.ask()
    loop.objective.define(orphan)

    again = make_loop(tracker, tmp_path, train, trials=trials, rungs=rungs, limits=Limits(20e6, max_params=60_000), synthetic=synthetic)
    pieces = tune_pieces(again)
    assert again.study.trials[orphan.number].state == OptunaState.FAIL  # failed and enqueued again
    drive_like_tune(pieces, pieces.remaining + 4, tmp_path)
    assert finished_trials(again) >= trials
    records = children(tracker, again)
    assert len({r.number for r in records}) == len(records)
    states = {r.state for r in records}
    assert TrialState.COMPLETE in states and TrialState.INFEASIBLE in states
    if len(rungs) > 1:
        assert TrialState.PRUNED in states
        assert all(r.epochs < 9 and not r.pareto for r in records if r.state is TrialState.PRUNED)
    check_front_tags(tracker, again)
    study_pruned = {t.number for t in again.study.trials if t.state == OptunaState.PRUNED}
    assert study_pruned == {r.number for r in records if r.state is TrialState.PRUNED}
    assert all(t.number not in study_pruned for t in again.study.best_trials)


def test_pruned_trials_do_not_break_the_multi_objective_samplers():
    """optuna#5260 reported TPE crashing on pruned trials in multi-objective studies: not with Optuna 5."""
    for sampler in (optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True, n_startup_trials=4),
                    optuna.samplers.GPSampler(seed=0, n_startup_trials=4)):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        for index in range(16):
            trial = study.ask()
            x = trial.suggest_float("x", 0, 1)
            trial.suggest_categorical("family", ["a", "b"])
            trial.set_constraint("macs_over_budget", x - 0.9)
            if index % 2:
                study.tell(trial, state=OptunaState.PRUNED)
            else:
                study.tell(trial, [x, 1 - x])
        assert len(study.trials) == 16 and study.best_trials
