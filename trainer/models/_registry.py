"""Model specs and the registry of model families: one ``build_model`` for teachers and students."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: family, depth, width and the data it sees.

    ``width`` is the family's width multiplier (k in WRN-d-k; fractional values allowed).
    ``stage_widths`` optionally scales each of the three stages on top of ``width``.
    """

    family: str
    depth: int
    width: float = 1.0
    stage_widths: tuple[float, float, float] | None = None
    in_channels: int = 3
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.stage_widths is not None:
            object.__setattr__(self, "stage_widths", tuple(float(s) for s in self.stage_widths))
        object.__setattr__(self, "width", float(self.width))
        family = get_family(self.family)
        family.check(self)

    @property
    def name(self) -> str:
        name = f"{self.family}{self.depth}_{self.width:g}"
        if self.stage_widths is not None and any(s != 1.0 for s in self.stage_widths):
            name += "[" + ",".join(f"{s:g}" for s in self.stage_widths) + "]"
        return name

    def with_data(self, in_channels: int, num_classes: int) -> "ModelSpec":
        return replace(self, in_channels=in_channels, num_classes=num_classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stage_widths"] = list(self.stage_widths) if self.stage_widths else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        data = dict(data)
        if data.get("stage_widths") is not None:
            data["stage_widths"] = tuple(data["stage_widths"])
        return cls(**data)

    @classmethod
    def parse(cls, text: str, in_channels: int = 3, num_classes: int = 10) -> "ModelSpec":
        """Parse ``wrn28_1``, ``wrn-28-0.5``, ``resnet20`` or ``resnet20_2``."""
        match = re.fullmatch(r"([a-z]+)[-_]?(\d+)(?:[-_]([0-9.]+))?", text.strip().lower())
        if not match or match.group(1) not in FAMILIES:
            known = ", ".join(f"{name}DEPTH_WIDTH" for name in FAMILIES)
            raise ValueError(f"unknown model {text!r}: expected one of {known} (e.g. wrn28_1, resnet20)")
        width = float(match.group(3)) if match.group(3) else 1.0
        return cls(match.group(1), int(match.group(2)), width, None, in_channels, num_classes)


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[ModelSpec], nn.Module]
    depths: Callable[[int], bool]
    depth_rule: str

    def check(self, spec: ModelSpec) -> None:
        if not self.depths(spec.depth):
            raise ValueError(f"{self.name} depth {spec.depth} is invalid: {self.depth_rule}")
        if spec.width <= 0:
            raise ValueError(f"{self.name} width must be positive, got {spec.width}")
        if spec.stage_widths is not None and (
            len(spec.stage_widths) != 3 or min(spec.stage_widths) <= 0
        ):
            raise ValueError("stage_widths must be three positive multipliers")


FAMILIES: dict[str, Family] = {}


def register_family(name: str, depths: Callable[[int], bool], depth_rule: str):
    """Decorator: register ``build(spec) -> nn.Module`` as the family ``name``."""

    def decorator(build: Callable[[ModelSpec], nn.Module]):
        FAMILIES[name] = Family(name, build, depths, depth_rule)
        return build

    return decorator


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}: choose one of {sorted(FAMILIES)}") from None


def stage_channels(base: tuple[int, int, int], spec: ModelSpec) -> tuple[int, int, int]:
    scales = spec.stage_widths or (1.0, 1.0, 1.0)
    return tuple(max(1, round(b * spec.width * s)) for b, s in zip(base, scales))  # type: ignore[return-value]


def build_model(spec: ModelSpec | str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Build a model from a spec or a name such as ``wrn28_1``.

    Every model returned has ``forward(x) -> logits``, ``forward_with_features(x) -> (logits,
    [stage1, stage2, stage3_pooled])`` and ``feature_info``.
    """
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec, in_channels, num_classes)
    return get_family(spec.family).build(spec)
