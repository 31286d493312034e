"""--prescreen N: the best-scored of N feasible candidates trains; the others never do."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState as OptunaState

from rkd_search.search.backends.local import run_trials
from rkd_search.search.objective import Limits
from rkd_search.search.prescreen import Prescreen
from rkd_search.spaces import TrialPlan

from .backends.loops import StubTrain, children, make_loop
from .helpers import BUDGET_FLAG, mlflow_runs, run_here


def plan_with(scores: dict) -> TrialPlan:
    plan = TrialPlan.__new__(TrialPlan)
    plan.scores = scores
    return plan


def test_the_prescreen_ranks_by_macs_what_measured_best():
    plans = [(4, plan_with({"graph": -1.0, "params": 9.0, "macs": 2e6})), (5, plan_with({"graph": -2.0, "params": 8.0, "macs": 3e6}))]
    assert Prescreen(2).choose(plans) == 5


def test_the_best_mean_rank_wins_and_ties_go_to_the_first_candidate():
    prescreen = Prescreen(3)
    plans = [(4, plan_with({"graph": -2.0, "params": 9.0})), (5, plan_with({"graph": -1.0, "params": 8.0})),
             (6, plan_with({"graph": -3.0, "params": 1.0}))]
    assert prescreen.choose(plans) == 4  # ranks: 4 -> (1 + 0) / 2, 5 -> (0 + 1) / 2: a tie, the first asked wins
    assert Prescreen(3, proxies=("graph",)).choose(plans) == 5
    assert prescreen.choose(plans[2:]) == 6


class RecordingPrescreen(Prescreen):
    def __init__(self, candidates):
        super().__init__(candidates)
        self.choices = []

    def choose(self, plans):
        chosen = super().choose(plans)
        self.choices.append(([(number, plan) for number, plan in plans], chosen))
        return chosen


def test_the_prescreen_trains_the_best_scored_feasible_candidate_and_never_one_over_a_limit(tracker, tmp_path, synthetic):
    def scorer(plan):  # wider is better, by every proxy
        width = plan.config.student.width
        return {"graph": width, "params": width, "macs": width}

    prescreen = RecordingPrescreen(4)
    # 5 hand-picked students (never prescreened), then 3 prescreened trials
    loop = make_loop(tracker, tmp_path, StubTrain(), trials=8, synthetic=synthetic, scorer=scorer, prescreen=prescreen,
                     limits=Limits(20e6, max_params=100_000))
    assert run_trials(loop) is True
    assert prescreen.choices and all(len(plans) >= 2 for plans, _ in prescreen.choices)
    for plans, chosen in prescreen.choices:
        assert all(plan.feasible for _, plan in plans), "a candidate over a limit was in the running"
        assert dict(plans)[chosen].config.student.width == max(plan.config.student.width for _, plan in plans)
    trials = loop.study.trials
    screened = [t for t in trials if t.user_attrs.get("rkd.screened_out")]
    assert screened and all(t.state == OptunaState.FAIL for t in screened)
    records = {r.number: r for r in children(tracker, loop)}
    assert not set(records) & {t.number for t in screened}, "a screened-out candidate got a run"
    plans = loop.lifecycle.plans
    assert all(plans[t.number].feasible for t in screened), "a candidate over a limit was screened out, not told infeasible"
    over = [number for number, plan in plans.items() if not plan.feasible]
    assert over, "no candidate was over the parameter limit: the limit tests nothing"
    assert all(records[n].state.value == "infeasible" and trials[n].state == OptunaState.COMPLETE for n in over), \
        "a candidate over a limit is told infeasible, with its run, as without the prescreen"
    # the 8 asked trials finished; over-limit candidates the prescreen skipped come on top
    assert sum(r.state.finished for r in records.values()) >= 8
    assert sum(r.state.finished and r.state.value != "infeasible" for r in records.values()) >= len(prescreen.choices)
    assert {chosen for _, chosen in prescreen.choices} <= set(records)
    tags = {number: tracker.client.get_run(r.run_id).data.tags for number, r in records.items()}
    assert all(int(tags[chosen]["rkd.prescreen"]) == len(plans) for plans, chosen in prescreen.choices)
    assert all("score.graph" in r.metrics for r in records.values() if r.state.value == "complete")


@pytest.mark.slow
def test_rkd_search_with_prescreen_trains_one_of_three_scored_candidates_per_trial(tmp_path):
    """The command end to end (the loop test above builds its prescreen itself; the command once
    passed it the wrong argument and every --prescreen search failed at its first candidate)."""
    out = tmp_path / "out"
    result = run_here("--budget", BUDGET_FLAG, "--trials", "2", "--dataset", "digits", "--epochs", "1", "--teacher-epochs", "1",
                      "--no-enqueue", "--prescreen", "3", "--output", str(out), "--tracking-uri", f"sqlite:///{out}/mlflow.db",
                      "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="rkd-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    screened = [t for t in study.trials if t.user_attrs.get("rkd.screened_out")]
    assert screened and all(t.state == OptunaState.FAIL for t in screened)
    _, _, _, runs = mlflow_runs(out)
    chosen = [run for run in runs if run.data.tags.get("rkd.prescreen") == "3"]
    assert len([run for run in chosen if run.data.tags.get("rkd.state") == "complete"]) >= 2
    assert len(screened) >= 2 * len(chosen), "two of every three scored candidates are screened out"
    assert not {int(run.data.tags["rkd.trial"]) for run in runs} & {t.number for t in screened}
