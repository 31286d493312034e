"""``--sampler tpe-recipes``: after the startup trials, every other trial keeps the architecture of the
most accurate student so far and TPE draws only its recipe; the trials between are TPE's as usual.

Why: out of sample (``bench/search_out_of_sample.py``, docs/benchmarks.md) the default's lead over
random search came from its hand-picked starting students, and TPE's model-based trials never
produced the best student; on the full CIFAR-10 a recipe alone gained 1.9 points on a hand-picked
ResNet-20. This sampler spends the model-based trials on recipes (graph construction, loss weights,
optimiser) around the best architecture found so far instead of on new architectures. It is an
option, not the default: a default changes only on an out-of-sample measurement.

In a recipe trial (trial numbers startup, startup + 2, ...), every ``student.*`` parameter (family,
depths, expansion, kernel, width share) is copied from the finished trial with the highest validation
accuracy (the first objective), chosen once when the trial starts; the other parameters go to the
base sampler (TPE), which models them over every finished trial. The trials between draw everything
from TPE, so a long search keeps exploring architectures (recipe trials alone would never leave the
startup trials' architectures). Before ``startup`` trials have finished, and while no trial has
learned anything (accuracy 0: failed or over a limit), the base sampler draws everything.
"""

from __future__ import annotations

from typing import Any, Sequence

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

ARCHITECTURE = "student."
"""The prefix of the architecture's parameters in the search space (``spaces/_space.py``)."""


def architecture_of(params: dict[str, Any]) -> dict[str, Any]:
    """The architecture's parameters among a trial's parameters."""
    return {name: value for name, value in params.items() if name.startswith(ARCHITECTURE)}


def best_architecture(study: Study) -> dict[str, Any] | None:
    """The ``student.*`` parameters of the finished trial with the highest first objective above 0
    (the earliest such trial on a tie), or None when no trial has one."""
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and t.values[0] > 0]
    if not finished:
        return None
    best = max(finished, key=lambda t: (t.values[0], -t.number))
    return architecture_of(best.params)


class RecipesAroundBest(BaseSampler):
    def __init__(self, base: BaseSampler, startup: int) -> None:
        self.base = base
        self.startup = startup
        self.fixed: dict[int, dict[str, Any]] = {}
        """Per trial number: the architecture it keeps (empty: the base sampler draws everything)."""

    def _fixed_for(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        if trial.number not in self.fixed:
            finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            recipe_trial = finished >= self.startup and (trial.number - self.startup) % 2 == 0
            self.fixed[trial.number] = (best_architecture(study) or {}) if recipe_trial else {}
        return self.fixed[trial.number]

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(study, trial)
        if self._fixed_for(study, trial):
            space = {name: d for name, d in space.items() if not name.startswith(ARCHITECTURE)}
        return space

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        fixed = self._fixed_for(study, trial)
        if param_name in fixed and param_distribution._contains(param_distribution.to_internal_repr(fixed[param_name])):
            return fixed[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.fixed.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)
