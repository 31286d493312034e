"""--sampler tpe-recipes: after the startup trials, every other trial keeps the most accurate
architecture so far and TPE draws only its recipe."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState as OptunaState
from optuna.trial import create_trial

from rkd_search.search.backends.local import run_trials
from rkd_search.search.recipe_sampler import architecture_of, best_architecture
from rkd_search.search.study import startup_trials

from .loops import StubTrain, make_loop


def test_the_best_architecture_is_the_most_accurate_finished_trials_and_none_before_any_learned():
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert best_architecture(study) is None
    width = FloatDistribution(0.0, 1.0)
    lr = FloatDistribution(0.01, 1.0)
    for accuracy, fill, state in ((0.0, 0.9, OptunaState.COMPLETE), (0.4, 0.2, OptunaState.COMPLETE),
                                  (0.6, 0.5, OptunaState.COMPLETE), (0.6, 0.7, OptunaState.COMPLETE), (0.9, 0.1, OptunaState.FAIL)):
        study.add_trial(create_trial(state=state, values=[accuracy, 1e6] if state == OptunaState.COMPLETE else None,
                                     params={"student.width_fill": fill, "optim.lr": 0.1},
                                     distributions={"student.width_fill": width, "optim.lr": lr}))
    # 0.6 twice: the earlier wins; the failed trial's 0.9 does not count; only student.* parameters are kept
    assert best_architecture(study) == {"student.width_fill": 0.5}


def test_every_other_trial_after_the_startup_keeps_the_best_architecture_so_far_and_draws_its_recipe(tracker, tmp_path, synthetic):
    loop = make_loop(tracker, tmp_path, StubTrain(), trials=11, synthetic=synthetic, sampler="tpe-recipes")
    assert run_trials(loop) is True
    trials = loop.study.trials
    enqueued = sum(1 for t in trials if "fixed_params" in t.system_attrs)
    startup = startup_trials(11, enqueued)
    later = [t for t in trials if t.number >= startup and (t.number - startup) % 2 == 0 and t.state == OptunaState.COMPLETE]
    assert len(later) >= 2, "no recipe trial after the startup ones: the test tests nothing"
    between = [t for t in trials if t.number > startup and (t.number - startup) % 2 == 1 and t.state == OptunaState.COMPLETE]
    assert between, "no TPE trial between the recipe trials"
    drew_recipe = False
    for trial in later:
        before = optuna.create_study(directions=["maximize", "minimize"])
        before.add_trials([t for t in trials if t.number < trial.number])
        best = best_architecture(before)
        assert architecture_of(trial.params) == best, f"trial {trial.number} did not keep the best architecture so far"
        best_trial = next(t for t in trials if t.number < trial.number and t.state == OptunaState.COMPLETE
                          and architecture_of(t.params) == best)
        drew_recipe |= any(trial.params.get(k) != v for k, v in best_trial.params.items() if k not in best)
    assert drew_recipe, "every later trial copied the best trial's recipe too"
    earlier = {tuple(sorted(architecture_of(t.params).items())) for t in trials[:startup]}
    assert len(earlier) > 1, "the startup trials did not explore architectures"
