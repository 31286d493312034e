"""The search-space file format, validated so that an error names the bad key.

A parameter is written one of three ways:

    lr: 0.1                                   # fixed
    similarity: [cosine, gaussian]            # choices
    graph_weight: {low: 1, high: 100, log: true}   # a range (int when low and high are ints)
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.config import STAGES
from trainer.models import FAMILIES, ModelSpec

Scalar = Union[bool, int, float, str]


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    @model_validator(mode="before")
    @classmethod
    def _detect_integer(cls, data: Any) -> Any:
        if isinstance(data, dict) and "integer" not in data:
            values = [data.get("low"), data.get("high"), data.get("step", 1)]
            data = {**data, "integer": all(isinstance(v, int) and not isinstance(v, bool) for v in values)}
        return data

    @model_validator(mode="after")
    def _check(self) -> "Range":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a range cannot have both log and step")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        return self


Param = Union[Range, list[Scalar], Scalar]


def _values(param: Param) -> list[Any]:
    if isinstance(param, Range):
        return [param.low, param.high]
    return list(param) if isinstance(param, list) else [param]


class StudentSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: list[str] | str = "wrn"
    depth: dict[str, list[int] | int]
    width: Range = Field(default_factory=lambda: Range(low=0.25, high=2.0, step=0.0625))
    stage_widths: list[float] | None = None
    budget_aware: bool = True

    @property
    def families(self) -> list[str]:
        return [self.family] if isinstance(self.family, str) else list(self.family)

    def depths(self, family: str) -> list[int]:
        depth = self.depth[family]
        return [depth] if isinstance(depth, int) else list(depth)

    @model_validator(mode="after")
    def _check(self) -> "StudentSpace":
        for family in self.families:
            if family not in FAMILIES:
                raise ValueError(f"unknown family {family!r} (known: {', '.join(sorted(FAMILIES))})")
            if family not in self.depth:
                raise ValueError(f"depth has no entry for family {family!r}")
            for depth in self.depths(family):
                ModelSpec(family, depth, 1.0)  # raises with the family's depth rule
        extra = set(self.depth) - set(self.families)
        if extra:
            raise ValueError(f"depth lists families that are not searched: {sorted(extra)}")
        if self.width.log or self.width.low <= 0:
            raise ValueError("width needs a linear range with low > 0")
        if self.stage_widths is not None and (not self.stage_widths or min(self.stage_widths) <= 0):
            raise ValueError("stage_widths must list positive multipliers")
        return self


class GraphSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    similarity: list[str] | str = "cosine"
    k: Param | None = None
    bandwidth: Param = 1.0
    layers: list[list[int]] | list[int] = [1, 2, 3]
    power: Param = 1
    reduction: str = "sum"

    @property
    def layer_choices(self) -> list[tuple[int, ...]]:
        if self.layers and isinstance(self.layers[0], list):
            return [tuple(choice) for choice in self.layers]  # type: ignore[arg-type]
        return [tuple(self.layers)]  # type: ignore[arg-type]

    @field_validator("similarity")
    @classmethod
    def _similarity(cls, value):
        for similarity in [value] if isinstance(value, str) else value:
            if similarity not in ("cosine", "gaussian"):
                raise ValueError(f"unknown similarity {similarity!r}: use cosine or gaussian")
        return value

    @field_validator("reduction")
    @classmethod
    def _reduction(cls, value):
        if value not in ("sum", "mean"):
            raise ValueError("reduction must be sum or mean")
        return value

    @model_validator(mode="after")
    def _check(self) -> "GraphSpace":
        for choice in self.layer_choices:
            if not choice or any(stage not in STAGES for stage in choice):
                raise ValueError(f"layers must be lists of stages among {list(STAGES)}, got {list(choice)}")
        if self.k is not None and min(_values(self.k)) < 1:
            raise ValueError("k must be at least 1")
        if min(_values(self.bandwidth)) <= 0:
            raise ValueError("bandwidth must be positive")
        return self


class LossSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ce_weight: Param = 1.0
    graph_weight: Param = 25.0
    kd_weight: Param = 0.0
    temperature: Param = 4.0
    rkd_distance_weight: Param = 0.0
    rkd_angle_weight: Param = 0.0

    @model_validator(mode="after")
    def _check(self) -> "LossSpace":
        for name in ("ce_weight", "graph_weight", "kd_weight", "rkd_distance_weight", "rkd_angle_weight"):
            if min(_values(getattr(self, name))) < 0:
                raise ValueError(f"{name} must be >= 0")
        if min(_values(self.temperature)) <= 0:
            raise ValueError("temperature must be positive")
        return self


class OptimSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: Param = 0.1
    weight_decay: Param = 5e-4
    momentum: Param = 0.9
    schedule: Param = "cosine"


class Seed(BaseModel):
    """A hand-designed student evaluated first (e.g. the paper's WRN-28-0.5)."""

    model_config = ConfigDict(extra="forbid")

    family: str
    depth: int
    width: float
    stage_widths: list[float] | None = None


class SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    student: StudentSpace
    graph: GraphSpace = Field(default_factory=GraphSpace)
    loss: LossSpace = Field(default_factory=LossSpace)
    optim: OptimSpace = Field(default_factory=OptimSpace)
    enqueue: list[Seed] = []

    @model_validator(mode="after")
    def _check(self) -> "SpaceFile":
        for index, seed in enumerate(self.enqueue):
            if seed.family not in self.student.families or seed.depth not in self.student.depths(seed.family):
                raise ValueError(f"enqueue[{index}]: {seed.family}{seed.depth} is outside the student space")
        return self
