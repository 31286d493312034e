"""The trial lifecycle: each transition leaves the study, the MLflow run and the rung records in the
states the module's table promises, whichever back-end calls it."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState as OptunaState

from rkd_search.search import TrialState
from rkd_search.search.lifecycle import OPTUNA_STATES, finished_trials, reopen, trial_key
from rkd_search.search.objective import Limits
from rkd_search.trainer import EpochReport

from .backends.loops import StubTrain, children, make_loop


@pytest.fixture()
def loop(tracker, tmp_path, synthetic):
    return make_loop(tracker, tmp_path, StubTrain(), trials=6, rungs=(1, 3, 9), synthetic=synthetic,
                     limits=Limits(20e6, max_params=200_000))


def run_of(tracker, loop, number):
    return next(r for r in children(tracker, loop) if r.number == number)


def test_every_state_maps_onto_optuna_and_mlflow():
    assert OPTUNA_STATES[TrialState.PAUSED] == OptunaState.RUNNING
    assert OPTUNA_STATES[TrialState.INFEASIBLE] == OptunaState.COMPLETE
    assert {state.run_status for state in TrialState} == {"RUNNING", "SCHEDULED", "FINISHED", "FAILED"}
    assert trial_key(7) == "optuna:7"


def test_start_epoch_pause_promote_and_finish(tracker, loop):
    lifecycle = loop.lifecycle
    number, plan = lifecycle.ask()  # the enqueued WRN-28-0.5 (within 200 k parameters)
    assert plan.feasible and plan.scores == {}  # no scorer in this loop
    lifecycle.start(number, plan, 1)
    assert run_of(tracker, loop, number).state is TrialState.RUNNING
    report = EpochReport(1, 9, 0.5, 1.0, {"ce": 1.0}, 0.1, 0.01)
    lifecycle.epoch(number, report)
    paused = StubTrain()(plan.config, None, None, until=1)
    lifecycle.pause(number, paused)
    assert loop.study.trials[number].state == OptunaState.RUNNING
    assert loop.study.trials[number].user_attrs["rkd.rungs"] == {"1": paused.val_acc}
    assert run_of(tracker, loop, number).state is TrialState.PAUSED
    lifecycle.start(number, plan, 9)  # promoted: the same run reopens
    assert loop.study.trials[number].user_attrs["rkd.target"] == 9
    lifecycle.finish(number, StubTrain()(plan.config, None, None))
    assert loop.study.trials[number].state == OptunaState.COMPLETE and finished_trials(loop.study) == 1
    record = run_of(tracker, loop, number)
    assert record.state is TrialState.COMPLETE and record.epochs == 9 and record.pareto
    assert len(children(tracker, loop)) == 1


def test_prune_fail_interrupt_and_infeasible(tracker, loop):
    lifecycle = loop.lifecycle
    first, plan = lifecycle.ask()
    lifecycle.start(first, plan, 1)
    lifecycle.pause(first, StubTrain()(plan.config, None, None, until=1))
    lifecycle.prune(first, "dominated at its rung")
    assert loop.study.trials[first].state == OptunaState.PRUNED
    pruned = run_of(tracker, loop, first)
    assert pruned.state is TrialState.PRUNED and pruned.epochs == 1 and "val_acc" in pruned.metrics and not pruned.pareto

    second, plan = lifecycle.ask()  # the enqueued ResNet-20 at the widest width: over 200 k parameters
    assert not plan.feasible
    lifecycle.infeasible(second, plan)
    assert loop.study.trials[second].state == OptunaState.COMPLETE and run_of(tracker, loop, second).state is TrialState.INFEASIBLE

    third, plan = lifecycle.ask()
    lifecycle.start(third, plan, 1)
    lifecycle.fail(third, "Traceback ...\nFloatingPointError: nan", "error")
    assert loop.study.trials[third].state == OptunaState.FAIL and run_of(tracker, loop, third).state is TrialState.FAILED

    fourth, plan = lifecycle.ask()
    lifecycle.start(fourth, plan, 1)
    lifecycle.interrupt_all("interrupted (Ctrl-C)")
    assert loop.study.trials[fourth].state == OptunaState.RUNNING  # the next run resumes it
    runs = tracker.search(f"tags.mlflow.parentRunId = '{loop.recorder.parent_id}'")
    killed = next(r for r in runs if r.data.tags["rkd.trial"] == str(fourth))
    assert killed.info.status == "KILLED" and killed.data.tags["rkd.failure"] == "interrupted"
    assert "rerun to resume it" in killed.data.tags["rkd.error"]
    plan_again = lifecycle.define(reopen(loop.study, fourth))  # reopened: the same parameters
    assert plan_again.params == plan.params and finished_trials(loop.study) == 2


@pytest.mark.parametrize("end", ["finish", "prune", "fail", "infeasible"])
def test_a_process_killed_between_mlflow_and_optuna_leaves_the_trial_for_the_rerun(tracker, loop, monkeypatch, end):
    """The run is written first, the study told last: a death in between (here: ``tell`` raising)
    leaves the trial RUNNING in the study, which a rerun resumes and records again, never a trial
    finished in the study whose run stays open."""
    lifecycle = loop.lifecycle
    number, plan = lifecycle.ask()
    if end != "infeasible":
        lifecycle.start(number, plan, 1)
        lifecycle.pause(number, StubTrain()(plan.config, None, None, until=1))
        lifecycle.start(number, plan, 9)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the two writes")

    monkeypatch.setattr(loop.study, "tell", killed)
    with pytest.raises(KeyboardInterrupt):
        if end == "finish":
            lifecycle.finish(number, StubTrain()(plan.config, None, None))
        elif end == "prune":
            lifecycle.prune(number, "dominated at its rung")
        elif end == "fail":
            lifecycle.fail(number, "FloatingPointError: nan", "error")
        else:
            lifecycle.infeasible(number, plan)
    assert loop.study.trials[number].state == OptunaState.RUNNING
    expected = {"finish": TrialState.COMPLETE, "prune": TrialState.PRUNED, "fail": TrialState.FAILED, "infeasible": TrialState.INFEASIBLE}
    assert run_of(tracker, loop, number).state is expected[end]
