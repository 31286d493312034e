"""The Ray back-end's loop in this process: its real searcher, scheduler and callback, driven in the
order Tune drives them, with a stub training function and without starting Ray."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState as OptunaState

from rkd_search.search import TrialState
from rkd_search.search.objective import Limits

from .loops import StubTrain, check_front_tags, children, make_loop


class _Stop(Exception):
    pass


def drive_like_tune(pieces, samples: int, tmp_path: Path, interrupt_after: int | None = None) -> None:
    """Run the pieces in the order Tune calls them: suggest, start, results (the scheduler may stop
    the trial), checkpoint, complete or error; one trial at a time."""
    from ray import tune
    from ray.tune.schedulers import TrialScheduler

    from rkd_search.search.backends.ray.tune import train_trial

    callback = pieces.events.callback
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
def test_ray_loop_records_like_the_embedded_loop_and_resumes(tracker, tmp_path, synthetic, monkeypatch, rungs):
    from ray import tune

    from rkd_search.search.backends.ray.experiment import tune_pieces
    from rkd_search.search.lifecycle import finished_trials

    monkeypatch.setattr(tune, "report", tune.report)  # drive_like_tune replaces it
    train = StubTrain(fail={0.25})
    trials = 6 if len(rungs) == 1 else 10
    loop = make_loop(tracker, tmp_path, train, trials=trials, rungs=rungs, limits=Limits(20e6, max_params=200_000), synthetic=synthetic)
    pieces = tune_pieces(loop)
    with pytest.raises(KeyboardInterrupt):
        drive_like_tune(pieces, pieces.remaining, tmp_path, interrupt_after=3)
    loop.lifecycle.interrupt_all("interrupted (Ctrl-C)")
    # a started trial that never reported stays RUNNING in the study, as when a driver is killed
    orphan, _ = loop.lifecycle.ask()

    again = make_loop(tracker, tmp_path, train, trials=trials, rungs=rungs, limits=Limits(20e6, max_params=200_000), synthetic=synthetic)
    pieces = tune_pieces(again)
    drive_like_tune(pieces, pieces.remaining + 4, tmp_path)
    assert finished_trials(again.study) >= trials
    # the trial the stopped driver left RUNNING resumed under its own number (not asked again)
    assert again.study.trials[orphan].state in (OptunaState.COMPLETE, OptunaState.PRUNED)
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
