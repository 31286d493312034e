"""A search-space file as a whole: its sections (``_schema``) and the hand-picked students it
enqueues (``Seed``), each checked against the student space it belongs to."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rkd_search.trainer.models import FAMILIES

from ._schema import BUILT_IN_WEIGHTS, GraphSpace, LossSpace, OptimSpace, StudentSpace, added_weights, candidates


def recipe_keys() -> set[str]:
    """The searched values a hand-picked student's recipe may fix: the graph's, every loss term's weight, the optimiser's."""
    return {"graph.similarity", "graph.k", "graph.bandwidth", "graph.layers", "graph.power", "graph.gaussian_weight",
            "loss.temperature", *(f"loss.{key}" for key in (*BUILT_IN_WEIGHTS, *added_weights())),
            "optim.lr", "optim.weight_decay", "optim.momentum", "optim.schedule"}


class Seed(BaseModel):
    """A hand-designed student trained first, with its own recipe (e.g. the paper's WRN-28-0.5 with
    the authors' settings): the baselines a search must beat, inside the search.

    ``width: max`` takes the widest width on the space's grid that fits the budget and limits;
    with ``budget_share: 0.25`` the widest whose MACs are within a quarter of the budget (starting
    points across the MAC axis, not only at the budget, for the front).
    ``recipe`` fixes searched values by their parameter names (``loss.graph_weight``, ``optim.lr``,
    ``graph.k: dense``, ``graph.layers: [1, 2, 3]``, ...); what it leaves out is sampled.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    family: str
    depth: int | None = None
    width: float | Literal["max"]
    budget_share: float = Field(1.0, gt=0.0, le=1.0)
    stage_widths: list[float] | None = None
    stage_depths: list[int] | None = None  # mobile families
    expansion: float | None = None
    kernel: int | None = None
    recipe: dict[str, Any] = {}

    @model_validator(mode="after")
    def _share_needs_max(self) -> "Seed":
        if self.budget_share < 1.0 and self.width != "max":
            raise ValueError(f"budget_share {self.budget_share} needs width: max (it picks the widest width within that share "
                             "of the budget)")
        return self

    @field_validator("recipe")
    @classmethod
    def _recipe_keys(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        known = recipe_keys()
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(f"recipe: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return recipe


class SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    student: StudentSpace
    graph: GraphSpace = Field(default_factory=GraphSpace)
    loss: LossSpace = Field(default_factory=LossSpace)  # type: ignore[valid-type]
    optim: OptimSpace = Field(default_factory=OptimSpace)  # type: ignore[valid-type]
    enqueue: list[Seed] = []

    @model_validator(mode="after")
    def _check(self) -> "SpaceFile":
        student = self.student
        for index, seed in enumerate(self.enqueue):
            name = f"{seed.family}{seed.depth if seed.depth is not None else seed.stage_depths}"
            if seed.family not in student.families:
                raise ValueError(f"enqueue[{index}]: {name} is outside the student space")
            if FAMILIES[seed.family].mobile:
                depths = seed.stage_depths or ([seed.depth // 3] * 3 if seed.depth and seed.depth % 3 == 0 else None)
                if not depths or len(depths) != 3 or any(d not in student.depths(seed.family) for d in depths) \
                        or (seed.expansion is not None and seed.expansion not in student.expansions) \
                        or (seed.kernel is not None and seed.kernel not in student.kernels):
                    raise ValueError(f"enqueue[{index}]: {name} is outside the student space")
            elif seed.depth not in student.depths(seed.family):
                raise ValueError(f"enqueue[{index}]: {name} is outside the student space")
        if self.graph.gaussian_weight is not None and not all(
                isinstance(c, (int, float)) and c > 0 for c in candidates(self.loss.graph_weight)):
            raise ValueError("graph.gaussian_weight needs a loss.graph_weight above 0 (a weight of 0 turns the graph off, "
                             "and then no similarity is drawn)")
        return self
