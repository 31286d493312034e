"""The local back-end's loop (Optuna ask-and-tell) in this process, with a stub training function."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState as OptunaState

from rkd_search.search import SearchError, TrialState
from rkd_search.search.backends.local import run_trials
from rkd_search.search.objective import Limits

from .loops import StubTrain, check_front_tags, children, make_loop


def test_the_loop_completes_trials_and_keeps_the_front_current(tracker, tmp_path, synthetic):
    train = StubTrain()
    loop = make_loop(tracker, tmp_path, train, trials=4, synthetic=synthetic)
    assert run_trials(loop) is True
    records = children(tracker, loop)
    assert len(records) == 4 and all(r.state is TrialState.COMPLETE for r in records)
    # the enqueued hand-picked students come first: the shallow MobileNetV2 within a fifth of the budget (16 px images)
    assert records[0].params["student.name"] == "mbv2-2-2-1_1.3125_e2k5" and records[0].metrics["macs"] <= 4e6
    assert len(train.calls) == 4 and all(call[1:] == (0, 9) for call in train.calls)
    check_front_tags(tracker, loop)
    assert (tmp_path / "pareto.csv").exists() and (tmp_path / "pareto.png").exists()
    # the fifth hand-picked student waits for a longer (or resumed) search
    assert [t.state for t in loop.study.trials] == [OptunaState.COMPLETE] * 4 + [OptunaState.WAITING]


LIMITS = {
    "params": (Limits(20e6, max_params=30_000), "params", "constraints:params_over_limit", 30_000),
    "activation memory": (Limits(20e6, max_activation_bytes=100_000), "activation_bytes",
                          "constraints:activation_memory_over_limit", 100_000),
    "latency": (Limits(20e6, max_latency_ms=1.0), "latency_ms", "constraints:latency_over_limit", 1.0),
    "flash": (Limits(20e6, max_flash_bytes=60_000), "flash_bytes", "constraints:flash_over_limit", 60_000),
    "sram": (Limits(20e6, max_sram_bytes=20_000), "sram_bytes", "constraints:sram_over_limit", 20_000),
}


@pytest.mark.parametrize("limit", LIMITS, ids=list(LIMITS))
def test_over_limit_students_are_constrained_and_never_trained(tracker, tmp_path, synthetic, limit):
    limits, metric, constraint, value = LIMITS[limit]
    train = StubTrain()
    # a stand-in latency (ms) that grows with MACs: a real one is measured with ONNX Runtime (test_export)
    loop = make_loop(tracker, tmp_path, train, trials=5, limits=limits, synthetic=synthetic,
                     latency=lambda spec: 1.6 * spec.width)  # the baseline wrn28_0.5 is at 0.8 ms, wide students over
    run_trials(loop)
    records = children(tracker, loop)
    over = [r for r in records if r.state is TrialState.INFEASIBLE]
    assert over and all(r.metrics[metric] > value for r in over)
    assert all(r.metrics[metric] <= value for r in records if r.state is TrialState.COMPLETE)
    trained = {call[0] for call in train.calls}
    assert not trained & {r.params["student.name"] for r in over}
    for record in records:  # every trial logs every cost, limit or not
        assert {"params", "activation_bytes", "latency_ms", "macs", "flash_bytes", "sram_bytes"} <= set(record.metrics)
    for trial in loop.study.trials:  # and carries every constraint in force
        assert {"constraints:macs_over_budget", constraint} <= set(trial.system_attrs)


def test_failed_trials_are_replaced_and_three_in_a_row_stop_the_search(tracker, tmp_path, synthetic):
    loop = make_loop(tracker, tmp_path / "one", StubTrain(fail={0.5}), trials=3, synthetic=synthetic)
    run_trials(loop)
    records = children(tracker, loop)
    failed = [r for r in records if r.state is TrialState.FAILED]
    assert len(failed) == 1 and failed[0].params["student.name"] == "wrn28_0.5"
    assert sum(r.state.finished for r in records) == 3  # another trial took the failed one's place
    assert loop.study.trials[2].state == OptunaState.FAIL  # the third enqueued

    loop = make_loop(tracker, tmp_path / "all", StubTrain(fail_all=True), trials=3, synthetic=synthetic)
    with pytest.raises(SearchError, match="3 trials in a row failed.*nan"):
        run_trials(loop)


def test_an_interrupted_trial_is_resumed_with_its_own_parameters(tracker, tmp_path, synthetic):
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
    train = StubTrain(interrupt_on_resume=True)  # Ctrl-C while a paused trial is promoted from its checkpoint
    loop = make_loop(tracker, tmp_path, train, trials=9, rungs=(1, 3, 9), synthetic=synthetic)
    with pytest.raises(KeyboardInterrupt):
        run_trials(loop)
    saved = sorted((tmp_path / "checkpoints").iterdir())
    assert len(saved) >= 2, "paused trials keep a checkpoint"
    # the trial being promoted when Ctrl-C came: its checkpoint is damaged, so it trains again from scratch
    in_flight = [t for t in loop.study.trials if t.state == OptunaState.RUNNING
                 and t.user_attrs["rkd.target"] > max(int(k) for k in t.user_attrs["rkd.rungs"])]
    assert len(in_flight) == 1
    damaged = in_flight[0]
    (tmp_path / "checkpoints" / f"trial-{damaged.number:05d}.pt").write_bytes(b"torn")
    calls_before = len(train.calls)

    again = make_loop(tracker, tmp_path, train, trials=9, rungs=(1, 3, 9), synthetic=synthetic)
    assert run_trials(again) is True
    name = next(r.params["student.name"] for r in children(tracker, again) if r.number == damaged.number)
    assert train.calls[calls_before] == (name, 0, damaged.user_attrs["rkd.target"]), "retrained from scratch to its rung"
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


def test_a_rung_promotes_one_in_eta_once_it_holds_eta_results(tracker, tmp_path, synthetic):
    """floor(n / eta): with 9 trials and rungs 1, 3, 9, a third reach the second rung, and the
    finishing rule (ceil) sends the best of the second rung to the last when no trial can arrive."""
    train = StubTrain()
    loop = make_loop(tracker, tmp_path, train, trials=9, rungs=(1, 3, 9), synthetic=synthetic)
    assert run_trials(loop) is True
    second = [t for t in loop.study.trials if "3" in t.user_attrs.get("rkd.rungs", {})]
    assert len(second) == 3, f"{len(second)} of 9 trials reached the second rung"
    assert sum(until == 9 for _, _, until in train.calls) == 1


def test_tpe_learns_from_paused_and_pruned_trials(tracker, tmp_path, synthetic):
    """TPE (not just random sampling) in the multi-fidelity loop: pruned trials and paused (RUNNING)
    trials in the study, and TPE past its startup trials, sampling from what it saw."""
    train = StubTrain()
    loop = make_loop(tracker, tmp_path, train, trials=12, rungs=(1, 3, 9), synthetic=synthetic, sampler="tpe")
    assert loop.study.sampler._n_startup_trials == 7  # 5 enqueued + 2 random (a tenth of 12 is less)
    assert run_trials(loop) is True
    states = [t.state for t in loop.study.trials]
    assert OptunaState.PRUNED in states and OptunaState.COMPLETE in states
    records = children(tracker, loop)
    assert sum(r.state.finished for r in records) == 12
    check_front_tags(tracker, loop)


def test_a_compute_budget_counts_the_epochs_running_trials_will_train(tracker, tmp_path, synthetic):
    """--max-student-epochs with several jobs: a trial starts only if the epochs already trained,
    plus those the running trials will still train, leave room for it. Three slots and a budget of
    two trials' epochs train two trials (counting trained epochs alone started all three slots at
    once, then more as each finished: --jobs 8 trained 120 student-epochs of a budget of 96)."""
    from dataclasses import replace

    from rkd_search.search.backends.local import Runner
    from rkd_search.search.backends.local.jobs import InProcess
    from rkd_search.search.scheduling import Scheduler

    train = StubTrain()
    loop = make_loop(tracker, tmp_path, train, trials=10, synthetic=synthetic)
    loop.options = replace(loop.options, max_student_epochs=20)  # two trials of 9 epochs fit, a third does not
    three_slots = InProcess(loop.train, loop.data, loop.targets, capacity=3)  # submitted jobs wait their turn: in flight
    assert Runner(loop, Scheduler.for_loop(loop.lifecycle, loop.options), three_slots).run() is False  # stopped by the budget
    assert len(train.calls) == 2 and loop.recorder.student_epochs == 18
    started = [t.state for t in loop.study.trials if t.state is not OptunaState.WAITING]  # a third hand-picked one waits
    assert started == [OptunaState.COMPLETE] * 2
