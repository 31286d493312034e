"""What a trial is planned against and what it plans: the context (the data's shape, the budget and
the limits), and a trial's plan (its training config, costs, sampled values, constraints and
zero-cost scores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from rkd_search.trainer import ModelSpec, OpsCount, TrainConfig, count_spec_ops
from rkd_search.trainer.ops import Resolution, int8_flash_bytes, int8_sram_bytes, peak_activation_bytes


class TrialLike(Protocol):
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class TrialContext:
    """What a space needs besides the sampler's choices: the data's shape, the budget and the other
    limits a student must fit (None: no limit), the schedule."""

    budget_macs: float
    in_channels: int
    num_classes: int
    resolution: Resolution
    """The input's (height, width), or one number for square images: costs are counted at it."""
    epochs: int
    batch_size: int = 128
    seed: int = 0
    precision: str = "auto"
    compile: str = "auto"
    max_params: float | None = None
    max_activation_bytes: float | None = None
    max_flash_bytes: float | None = None
    max_sram_bytes: float | None = None

    def fits(self, spec: ModelSpec) -> bool:
        """Within the MAC budget and the parameter, activation-memory, flash and SRAM limits (all grow
        with width)."""
        ops = count_spec_ops(spec, self.resolution)
        if ops.macs > self.budget_macs or (self.max_params is not None and ops.params > self.max_params):
            return False
        if self.max_flash_bytes is not None and int8_flash_bytes(spec) > self.max_flash_bytes:
            return False
        if self.max_sram_bytes is not None and int8_sram_bytes(spec, self.resolution) > self.max_sram_bytes:
            return False
        return self.max_activation_bytes is None or peak_activation_bytes(spec, self.resolution) <= self.max_activation_bytes


@dataclass
class TrialPlan:
    """A trial's config, its operations count and peak activation memory, and its sampled values
    under dotted names."""

    config: TrainConfig
    ops: OpsCount
    budget_macs: float
    params: dict[str, Any] = field(default_factory=dict)
    activation_bytes: int = 0
    constraints: dict[str, float] = field(default_factory=dict)
    """Named violations (<= 0: within the limit), as the search sets them on the sampler's trial."""
    measures: dict[str, float] = field(default_factory=dict)
    """Costs measured beyond the counts: the int8 deployment's ``flash_bytes`` and ``sram_bytes``,
    and ``latency_ms`` when measured."""
    scores: dict[str, float] = field(default_factory=dict)
    """Zero-cost scores of the untrained student (``trainer.proxies``), when the search computes them."""

    @property
    def feasible(self) -> bool:
        """Within every limit: never trained otherwise."""
        if self.constraints:
            return all(value <= 0 for value in self.constraints.values())
        return self.within_budget

    @property
    def within_budget(self) -> bool:
        return self.ops.macs <= self.budget_macs

    @property
    def budget_violation(self) -> float:
        """Relative excess over the budget: <= 0 means the student fits (Optuna's constraint)."""
        return (self.ops.macs - self.budget_macs) / self.budget_macs
