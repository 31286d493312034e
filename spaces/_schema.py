"""The search-space file format, validated so that an error names the bad key.

A parameter is written one of three ways:

    lr: 0.1                                   # fixed
    similarity: [cosine, gaussian]            # choices
    graph_weight: {low: 1, high: 100, log: true}   # a range (int when low and high are ints)

The ``graph``, ``loss`` and ``optim`` sections are made from the trainer's own configs
(``LossConfig`` and ``TrainConfig``): their keys and defaults are those fields and defaults, and
every value a section can produce (each choice, both ends of a range) is checked by building the
config with it, so a value the trainer would refuse inside a trial is refused here, by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, create_model, field_validator, model_validator

from rkd_search.trainer import STAGES, LossConfig, ModelSpec, TrainConfig
from rkd_search.trainer.losses import loss_terms
from rkd_search.trainer.models import FAMILIES

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
        if not self.low <= self.high:  # equal: one value (``width: 0.5`` is read as that)
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a range cannot have both log and step")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        return self


Param = Union[Range, list[Scalar], Scalar, None]


def candidates(param: Param) -> list[Any]:
    """Every value a parameter can take that bounds what it produces: the choices, or a range's ends."""
    if isinstance(param, Range):
        return [param.low, param.high]
    return list(param) if isinstance(param, list) else [param]


# -- the sections made from the trainer's configs --------------------------------------------------

# Where a search's default differs from the trainer's: a search distils (the authors' lambda = 25),
# while LossConfig() alone is plain cross-entropy.
SEARCH_DEFAULTS = {"graph_weight": 25.0}
_BASE_LOSS = LossConfig(ce_weight=1.0, graph_weight=1.0)  # one weight positive whichever one is checked
_BASE_TRAIN = TrainConfig(student=ModelSpec("wrn", 10, 1.0))


def _config_section(name: str, config: Any, keys: tuple[str, ...], build: Callable[[str, Any], Any]) -> type[BaseModel]:
    """A pydantic model whose fields are ``keys`` of the dataclass ``config``, with its defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}

    def check(cls, value: Param, info: ValidationInfo) -> Param:
        for candidate in candidates(value):
            if candidate is None and defaults[info.field_name] is None:
                continue
            try:
                build(info.field_name, candidate)
            except ValueError as error:
                raise ValueError(str(error)) from None
            except TypeError:
                hint = " (YAML reads 1e6 as text: write 1.0e+6)" if isinstance(candidate, str) and candidate[:1].isdigit() else ""
                raise ValueError(f"{candidate!r} is not a valid value for {info.field_name}{hint}") from None
        return value

    fields = {key: (Param, SEARCH_DEFAULTS.get(key, defaults[key])) for key in keys}
    return create_model(name, __config__=ConfigDict(extra="forbid"),
                        __validators__={"_values": field_validator(*keys)(classmethod(check))}, **fields)


def _loss_value(key: str, value: Any) -> LossConfig:
    return dataclasses.replace(_BASE_LOSS, **{key: value})


def _train_value(key: str, value: Any) -> TrainConfig:
    return dataclasses.replace(_BASE_TRAIN, **{key: value})


def _term_weight(key: str, value: Any) -> LossConfig:
    return LossConfig(ce_weight=1.0, weights={key: value})


_LOSS_FIELDS = {f.name for f in dataclasses.fields(LossConfig)}
BUILT_IN_WEIGHTS = tuple(term.weight for term in loss_terms() if term.weight in _LOSS_FIELDS)
"""The weights of the built-in terms (``LossConfig`` fields), in the mix's order."""


def added_weights() -> list[str]:
    """The weight keys of the loss terms registered beyond the built-in ones (a module each): a
    space file's ``loss:`` section takes them too."""
    return [term.weight for term in loss_terms() if term.weight not in _LOSS_FIELDS]


_GraphValues = _config_section("GraphValues", LossConfig, ("similarity", "k", "bandwidth", "power", "reduction"), _loss_value)
_LossValues = _config_section("LossValues", LossConfig, ("temperature", *BUILT_IN_WEIGHTS), _loss_value)
OptimSpace = _config_section("OptimSpace", TrainConfig, ("lr", "weight_decay", "momentum", "schedule"), _train_value)
_PARAM = TypeAdapter(Param)


class LossSpace(_LossValues):  # type: ignore[misc, valid-type]
    """The built-in terms' weights and the temperature, and the weight of any term a module registered
    (``trainer.losses.register_loss``), read from the registry when the file is loaded."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _added(self) -> "LossSpace":
        for key, value in (self.model_extra or {}).items():
            if key not in added_weights():
                raise ValueError(f"{key}: unknown key (the loss terms' weights: {', '.join([*BUILT_IN_WEIGHTS, *added_weights()])})")
            param = _PARAM.validate_python(value)
            for candidate in candidates(param):
                _term_weight(key, candidate)  # refused with the trainer's message
            self.model_extra[key] = param
        return self

    def added(self) -> dict[str, Param]:
        """The registered terms' weights this file searches or fixes, by key."""
        return dict(self.model_extra or {})


class GraphSpace(_GraphValues):  # type: ignore[misc, valid-type]
    layers: list[list[int]] | list[int] = list(STAGES)
    gaussian_weight: Param = None
    """The graph loss's weight when the similarity is Gaussian, drawn in place of
    ``loss.graph_weight`` (None: the same weight for both). At initialisation the Gaussian graph's
    gradient on the last stage is about 200 times the cosine graph's (docs/benchmarks.md), so a
    weight right for one is wrong for the other."""

    @field_validator("gaussian_weight")
    @classmethod
    def _gaussian_weight(cls, value: Param) -> Param:
        for candidate in candidates(value):
            if candidate is not None and (isinstance(candidate, (bool, str)) or not candidate > 0):
                raise ValueError(f"must be positive (the Gaussian graph's loss weight), got {candidate!r}")
        return value

    @property
    def layer_choices(self) -> list[tuple[int, ...]]:
        if self.layers and isinstance(self.layers[0], list):
            return [tuple(choice) for choice in self.layers]  # type: ignore[arg-type]
        return [tuple(self.layers)]  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _layers(self) -> "GraphSpace":
        for choice in self.layer_choices:
            if not choice or any(stage not in STAGES for stage in choice):
                raise ValueError(f"layers must be lists of stages among {list(STAGES)}, got {list(choice)}")
        return self


# -- the student section ---------------------------------------------------------------------------

class StudentSpace(BaseModel):
    """Families, their depths (per stage for the families that draw one per stage), width and the
    mobile blocks' expansion ratio and kernel size."""

    model_config = ConfigDict(extra="forbid")

    family: list[str] | str = "wrn"
    depth: dict[str, list[int] | int]
    width: Range = Field(default_factory=lambda: Range(low=0.25, high=2.0, step=0.0625))
    stage_widths: list[float] | None = None
    expansion: list[float] | float = 6.0
    kernel: list[int] | int = 3
    budget_aware: bool = True

    @field_validator("width", mode="before")
    @classmethod
    def _fixed_width(cls, value: Any) -> Any:
        """``width: 0.5`` fixes the width: a grid of that one width."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not value > 0:
                raise ValueError(f"must be positive, got {value}")
            return {"low": float(value), "high": float(value), "step": 0.0625}
        if not isinstance(value, (dict, Range)):
            raise ValueError(f"write one width (0.5) or a range {{low: 0.25, high: 2.0, step: 0.0625}}, got {value!r}")
        return value

    @property
    def families(self) -> list[str]:
        return [self.family] if isinstance(self.family, str) else list(self.family)

    def depths(self, family: str) -> list[int]:
        depth = self.depth[family]
        return [depth] if isinstance(depth, int) else list(depth)

    @property
    def expansions(self) -> list[float]:
        return [float(e) for e in (self.expansion if isinstance(self.expansion, list) else [self.expansion])]

    @property
    def kernels(self) -> list[int]:
        return list(self.kernel) if isinstance(self.kernel, list) else [self.kernel]

    def example_spec(self, family: str, depth: int, **overrides: Any) -> ModelSpec:
        """A spec of ``family`` at ``depth`` (blocks per stage for mobile families), for validation."""
        if FAMILIES[family].depth_per_stage:
            return ModelSpec(family, 3 * depth, 1.0, stage_depths=(depth,) * 3, **overrides)
        return ModelSpec(family, depth, 1.0, **overrides)

    @model_validator(mode="after")
    def _check(self) -> "StudentSpace":
        for family in self.families:
            if family not in FAMILIES:
                raise ValueError(f"unknown family {family!r} (known: {', '.join(sorted(FAMILIES))})")
            if family not in self.depth:
                raise ValueError(f"depth has no entry for family {family!r}")
            if not self.depths(family):
                raise ValueError(f"depth lists no depth for family {family!r}: give at least one")
            for depth in self.depths(family):
                self.example_spec(family, depth)  # raises with the family's depth rule
        extra = set(self.depth) - set(self.families)
        if extra:
            raise ValueError(f"depth lists families that are not searched: {sorted(extra)}")
        if self.width.log or self.width.low <= 0:
            raise ValueError("width needs a linear range with low > 0")
        if self.stage_widths is not None and (not self.stage_widths or min(self.stage_widths) <= 0):
            raise ValueError("stage_widths must list positive multipliers")
        mobile = [f for f in self.families if FAMILIES[f].mobile]
        if not self.expansions or not self.kernels:
            raise ValueError("expansion and kernel need at least one value")
        for family in mobile:
            for expansion in self.expansions:
                for kernel in self.kernels:
                    self.example_spec(family, self.depths(family)[0], expansion=expansion, kernel=kernel)
        return self
