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
    Mobile families also take ``stage_depths`` (blocks per stage; ``depth`` is their sum), the
    blocks' ``expansion`` ratio and depthwise ``kernel`` size; the others leave them None.
    """

    family: str
    depth: int
    width: float = 1.0
    stage_widths: tuple[float, float, float] | None = None
    in_channels: int = 3
    num_classes: int = 10
    stage_depths: tuple[int, int, int] | None = None
    expansion: float | None = None
    kernel: int | None = None

    def __post_init__(self) -> None:
        if self.stage_widths is not None:
            object.__setattr__(self, "stage_widths", tuple(float(s) for s in self.stage_widths))
        if self.stage_depths is not None:
            object.__setattr__(self, "stage_depths", tuple(int(d) for d in self.stage_depths))
        if self.expansion is not None:
            object.__setattr__(self, "expansion", float(self.expansion))
        object.__setattr__(self, "width", float(self.width))
        family = get_family(self.family)
        for name, value in family.normalize(self).items():
            object.__setattr__(self, name, value)
        family.check(self)

    @property
    def name(self) -> str:
        if get_family(self.family).mobile:
            name = f"{self.family}-{'-'.join(map(str, self.stage_depths))}_{self.width:g}_e{self.expansion:g}k{self.kernel}"
        else:
            name = f"{self.family}{self.depth}_{self.width:g}"
        if self.stage_widths is not None and any(s != 1.0 for s in self.stage_widths):
            name += "[" + ",".join(f"{s:g}" for s in self.stage_widths) + "]"
        return name

    def with_data(self, in_channels: int, num_classes: int) -> "ModelSpec":
        return replace(self, in_channels=in_channels, num_classes=num_classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("stage_widths", "stage_depths"):
            data[key] = list(data[key]) if data[key] else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        data = dict(data)
        for key in ("stage_widths", "stage_depths"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def parse(cls, text: str, in_channels: int = 3, num_classes: int = 10) -> "ModelSpec":
        """Parse ``wrn28_1``, ``wrn-28-0.5``, ``resnet20``, ``resnet20_2`` or ``mbv2-2-3-3_0.5_e6k3``."""
        text = text.strip().lower()
        mobile = re.fullmatch(r"([a-z0-9]+)-(\d+)-(\d+)-(\d+)_([0-9.]+)_e([0-9.]+)k(\d+)", text)
        if mobile and mobile.group(1) in FAMILIES:
            depths = tuple(int(mobile.group(i)) for i in (2, 3, 4))
            return cls(mobile.group(1), sum(depths), float(mobile.group(5)), None, in_channels, num_classes,
                       depths, float(mobile.group(6)), int(mobile.group(7)))
        match = re.fullmatch(r"([a-z]+)[-_]?(\d+)(?:[-_]([0-9.]+))?", text)
        if not match or match.group(1) not in FAMILIES:
            raise ValueError(f"unknown model {text!r}: expected e.g. wrn28_1, resnet20 or mbv2-2-3-3_0.5_e6k3 "
                             f"(families: {', '.join(FAMILIES)})")
        width = float(match.group(3)) if match.group(3) else 1.0
        return cls(match.group(1), int(match.group(2)), width, None, in_channels, num_classes)


@dataclass(frozen=True)
class Family:
    """A model family. ``mobile`` families take stage depths, an expansion ratio and a kernel size;
    their ``depth`` in a search space is drawn per stage (``depth_per_stage``)."""

    name: str
    build: Callable[[ModelSpec], nn.Module]
    depths: Callable[[int], bool]
    depth_rule: str
    mobile: bool = False
    kernels: tuple[int, ...] = ()

    @property
    def depth_per_stage(self) -> bool:
        return self.mobile

    def normalize(self, spec: ModelSpec) -> dict[str, Any]:
        """Defaults a mobile spec leaves out: blocks split evenly over the stages, expansion 6, kernel 3."""
        if not self.mobile:
            return {}
        values: dict[str, Any] = {}
        if spec.stage_depths is None and spec.depth % 3 == 0:
            values["stage_depths"] = (spec.depth // 3,) * 3
        if spec.expansion is None:
            values["expansion"] = 6.0
        if spec.kernel is None:
            values["kernel"] = 3
        return values

    def check(self, spec: ModelSpec) -> None:
        if self.mobile:
            if spec.stage_depths is None or len(spec.stage_depths) != 3 or min(spec.stage_depths) < 1:
                raise ValueError(f"{self.name} needs three stage depths of at least 1 block (or a depth divisible by 3)")
            if sum(spec.stage_depths) != spec.depth:
                raise ValueError(f"{self.name} depth {spec.depth} must be the sum of its stage depths {spec.stage_depths}")
            if spec.kernel not in self.kernels:
                raise ValueError(f"{self.name} kernel must be one of {self.kernels}, got {spec.kernel}")
            if not spec.expansion >= 1:
                raise ValueError(f"{self.name} expansion ratio must be at least 1, got {spec.expansion}")
        else:
            if not self.depths(spec.depth):
                raise ValueError(f"{self.name} depth {spec.depth} is invalid: {self.depth_rule}")
            if (spec.stage_depths, spec.expansion, spec.kernel) != (None, None, None):
                raise ValueError(f"{self.name} has no stage depths, expansion or kernel (those are for mobile families)")
        if spec.width <= 0:
            raise ValueError(f"{self.name} width must be positive, got {spec.width}")
        if spec.stage_widths is not None and (
            len(spec.stage_widths) != 3 or min(spec.stage_widths) <= 0
        ):
            raise ValueError("stage_widths must be three positive multipliers")


FAMILIES: dict[str, Family] = {}


def register_family(name: str, depths: Callable[[int], bool], depth_rule: str, *, mobile: bool = False,
                    kernels: tuple[int, ...] = ()):
    """Decorator: register ``build(spec) -> nn.Module`` as the family ``name``."""

    def decorator(build: Callable[[ModelSpec], nn.Module]):
        FAMILIES[name] = Family(name, build, depths, depth_rule, mobile, kernels)
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
