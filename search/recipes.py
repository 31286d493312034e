"""The final training's recipes: what ``rkd-search train --recipe`` changes in a trial's recipe.

A trial's recipe wins a short trial; ``bench/final_recipe.py`` measured which changes pay for a
final training (docs/benchmarks.md, "The final training's recipe"). A contributor adds a recipe to
``RECIPES``; ``--recipe`` offers every entry, and the train run logs the params it changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rkd_search.trainer import TrainConfig

USUAL_OPTIM = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine"}
"""The optimiser published small CIFAR models train with (pytorch-cifar-models: SGD, Nesterov, cosine)."""
NO_RELATIONS = {"graph_weight": 0.0, "rkd_distance_weight": 0.0, "rkd_angle_weight": 0.0, "weights": ()}


@dataclass(frozen=True)
class FinalRecipe:
    """What the final training changes in the trial's recipe (``--recipe``): TrainConfig fields
    (``optim``) and LossConfig fields (``loss``) set to these values; everything else (architecture,
    batch size, graph construction, the loss weights not named) stays the trial's."""

    description: str
    optim: dict = dataclasses.field(default_factory=dict)
    loss: dict = dataclasses.field(default_factory=dict)

    def apply(self, config: TrainConfig) -> TrainConfig:
        return dataclasses.replace(config, loss=dataclasses.replace(config.loss, **self.loss), **self.optim)

    def params(self, trial: TrainConfig, final: TrainConfig) -> dict:
        """The MLflow params this recipe changed from ``trial``'s, as ``final`` runs them."""
        changed = {f"optim.{k}": getattr(final, k) for k in self.optim}
        changed.update({f"loss.{k}": getattr(final.loss, k) for k in self.loss if k != "weights"})
        kept = dict(final.loss.weights)
        changed.update({f"loss.{k}": kept.get(k, 0.0) for k, _ in trial.loss.weights})  # registered terms
        return changed


RECIPES = {
    "trial": FinalRecipe("the trial's recipe as the search drew it, the schedule stretched"),
    "trial-losses": FinalRecipe("the trial's losses and graph, the usual optimiser (SGD lr 0.1, momentum 0.9, Nesterov, "
                                "weight decay 5e-4, cosine)", optim=USUAL_OPTIM),
    "kd+graph": FinalRecipe("the usual optimiser, Hinton KD at weight 1 (T = 4) and the trial's graph and other terms",
                            optim=USUAL_OPTIM, loss={"kd_weight": 1.0, "temperature": 4.0}),
    "kd": FinalRecipe("the usual recipe with Hinton KD: cross-entropy + KD at weight 1 (T = 4), the usual optimiser, "
                      "no relational terms", optim=USUAL_OPTIM, loss={"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 4.0,
                                                                      **NO_RELATIONS}),
}
"""The final-training recipes ``--recipe`` chooses from (``bench/final_recipe.py`` measures them);
a contributor adds one here."""
DEFAULT_RECIPE = "kd+graph"
