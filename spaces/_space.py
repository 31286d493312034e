"""Turning a search-space file and an Optuna trial into one student's training config.

``SearchSpace.suggest`` is the define-by-run function shared by every back-end: it calls only
``trial.suggest_*``, so an Optuna trial and Ray Tune's wrapped trial both work.

Budget-aware widths: a width drawn uniformly from the whole range would put most large students
over budget at the larger depths. Instead, once family, depth and stage multipliers are drawn,
the widest student on the width grid that fits the budget is found (operations counted by thop,
memoised), and the trial draws ``student.width_fill`` in [0, 1] to pick a width on the grid up to
it. The sampler's space stays fixed (every sampler supports it) and nearly every candidate fits.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from trainer import LossConfig, ModelSpec, OpsCount, TrainConfig, count_spec_ops

from ._schema import Param, Range, SpaceFile


class SpaceError(ValueError):
    """A search-space file is missing or invalid; the message names the bad key."""


class TrialLike(Protocol):
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class TrialContext:
    """What a space needs besides the sampler's choices: the data's shape, the budget, the schedule."""

    budget_macs: float
    in_channels: int
    num_classes: int
    resolution: int
    epochs: int
    batch_size: int = 128
    seed: int = 0
    precision: str = "auto"


@dataclass
class TrialPlan:
    """A trial's config, its operations count, and its sampled values under dotted names."""

    config: TrainConfig
    ops: OpsCount
    budget_macs: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.ops.macs <= self.budget_macs

    @property
    def budget_violation(self) -> float:
        """Relative excess over the budget: <= 0 means the student fits (Optuna's constraint)."""
        return (self.ops.macs - self.budget_macs) / self.budget_macs


def builtin_spaces() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("spaces").iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str | os.PathLike) -> "SearchSpace":
    """Load a built-in space by name (``default``, ``wrn``, ...) or a YAML file by path."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpaceError(f"space file {path} does not exist: pass a YAML file or one of {', '.join(builtin_spaces())}")
        source, text = str(path), path.read_text()
    elif text_name in builtin_spaces():
        source, text = f"{text_name} (built in)", (resources.files("spaces") / f"{text_name}.yaml").read_text()
    else:
        raise SpaceError(f"unknown space {text_name!r}: pass a YAML file or one of {', '.join(builtin_spaces())}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpaceError(f"space {source}:{where} is not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"space {source} must be a YAML mapping with name, student, graph, loss, optim")
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise SpaceError(f"space {source}: {_describe(error)}") from None
    return SearchSpace(spec, text, source)


def _describe(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"] if not str(part).startswith(("Range", "list[", "float", "int", "str", "bool", "function-")))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key missing"
        messages.append(f"{location}: {message}" if location else message)
    unique = list(dict.fromkeys(messages))
    return "; ".join(unique[:3]) + (f" (and {len(unique) - 3} more)" if len(unique) > 3 else "")


def _suggest(trial: TrialLike, name: str, param: Param | None) -> Any:
    if isinstance(param, Range):
        if param.integer:
            return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
        return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)
    if isinstance(param, list):
        return param[0] if len(param) == 1 else trial.suggest_categorical(name, param)
    return param


class SearchSpace:
    def __init__(self, spec: SpaceFile, text: str, source: str) -> None:
        self.spec = spec
        self.text = text
        self.source = source

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    # -- students -------------------------------------------------------------------------------
    def width_grid(self) -> list[float]:
        width = self.spec.student.width
        step = width.step or 0.0625
        count = int(math.floor((width.high - width.low) / step + 1e-9)) + 1
        return [round(width.low + i * step, 6) for i in range(count)]

    def student_spec(self, family: str, depth: int, width: float, stage_widths, context: TrialContext) -> ModelSpec:
        stages = tuple(stage_widths) if stage_widths is not None else None
        return ModelSpec(family, depth, width, stages, context.in_channels, context.num_classes)

    def feasible_widths(self, family: str, depth: int, stage_widths, context: TrialContext) -> list[float]:
        """The grid widths whose student fits the budget (operations grow with width)."""
        return _feasible_widths(self, family, depth, tuple(stage_widths) if stage_widths else None, context)

    def smallest_student(self, context: TrialContext) -> tuple[ModelSpec, OpsCount]:
        """The cheapest student this space can build: a budget below it can never be met."""
        low = self.spec.student.width.low
        stages = None
        if self.spec.student.stage_widths:
            stages = (min(self.spec.student.stage_widths),) * 3
        candidates = []
        for family in self.spec.student.families:
            spec = self.student_spec(family, min(self.spec.student.depths(family)), low, stages, context)
            candidates.append((count_spec_ops(spec, context.resolution).macs, spec))
        macs, spec = min(candidates, key=lambda c: c[0])
        return spec, count_spec_ops(spec, context.resolution)

    # -- the define-by-run function -----------------------------------------------------------
    def suggest(self, trial: TrialLike, context: TrialContext) -> TrialPlan:
        student, graph, loss, optim = self.spec.student, self.spec.graph, self.spec.loss, self.spec.optim
        params: dict[str, Any] = {}

        family = _suggest(trial, "student.family", student.families)
        depth = _suggest(trial, f"student.{family}.depth", student.depths(family))
        stage_widths = None
        if student.stage_widths:
            stage_widths = tuple(_suggest(trial, f"student.stage_width.{i}", student.stage_widths) for i in (1, 2, 3))
        if student.budget_aware:
            feasible = self.feasible_widths(family, depth, stage_widths, context)
            fill = trial.suggest_float("student.width_fill", 0.0, 1.0)
            if feasible:
                width = feasible[min(len(feasible) - 1, int(fill * len(feasible)))]
            else:  # even the narrowest student at this depth is over budget: infeasible, never trained
                width = self.width_grid()[0]
        else:
            width = _suggest(trial, "student.width", student.width)
        spec = self.student_spec(family, depth, width, stage_widths, context)
        params.update({"student.family": family, "student.depth": depth, "student.width": width,
                       "student.name": spec.name})
        if stage_widths is not None:
            params["student.stage_widths"] = ",".join(f"{s:g}" for s in stage_widths)

        ce_weight = _suggest(trial, "loss.ce_weight", loss.ce_weight)
        graph_weight = _suggest(trial, "loss.graph_weight", loss.graph_weight)
        kd_weight = _suggest(trial, "loss.kd_weight", loss.kd_weight)
        temperature = _suggest(trial, "loss.temperature", loss.temperature) if kd_weight > 0 else 4.0
        rkd_distance = _suggest(trial, "loss.rkd_distance_weight", loss.rkd_distance_weight)
        rkd_angle = _suggest(trial, "loss.rkd_angle_weight", loss.rkd_angle_weight)
        params.update({"loss.ce_weight": ce_weight, "loss.graph_weight": graph_weight, "loss.kd_weight": kd_weight})
        if kd_weight > 0:
            params["loss.temperature"] = temperature
        if rkd_distance or rkd_angle:
            params.update({"loss.rkd_distance_weight": rkd_distance, "loss.rkd_angle_weight": rkd_angle})

        similarity, k, bandwidth, power, layers = "cosine", None, 1.0, 1, (1, 2, 3)
        if graph_weight > 0:
            similarity = _suggest(trial, "graph.similarity", [graph.similarity] if isinstance(graph.similarity, str) else graph.similarity)
            if graph.k is not None:
                k = int(_suggest(trial, "graph.k", graph.k))
                if k >= context.batch_size:
                    k = None  # k >= batch size keeps every edge: the dense graph
            if similarity == "gaussian":
                bandwidth = float(_suggest(trial, "graph.bandwidth", graph.bandwidth))
            power = int(_suggest(trial, "graph.power", graph.power))
            choices = [",".join(map(str, c)) for c in graph.layer_choices]
            layers = tuple(int(s) for s in _suggest(trial, "graph.layers", choices).split(","))
            params.update({"graph.similarity": similarity, "graph.k": "dense" if k is None else k,
                           "graph.layers": ",".join(map(str, layers)), "graph.power": power,
                           "graph.reduction": graph.reduction})
            if similarity == "gaussian":
                params["graph.bandwidth"] = bandwidth

        lr = float(_suggest(trial, "optim.lr", optim.lr))
        weight_decay = float(_suggest(trial, "optim.weight_decay", optim.weight_decay))
        momentum = float(_suggest(trial, "optim.momentum", optim.momentum))
        schedule = _suggest(trial, "optim.schedule", optim.schedule)
        params.update({"optim.lr": lr, "optim.weight_decay": weight_decay, "optim.momentum": momentum,
                       "optim.schedule": schedule, "train.epochs": context.epochs,
                       "train.batch_size": context.batch_size, "train.seed": context.seed})

        loss_config = LossConfig(
            ce_weight=ce_weight, kd_weight=kd_weight, temperature=temperature, graph_weight=graph_weight,
            similarity=similarity, k=k, bandwidth=bandwidth, power=power, layers=layers,
            reduction=graph.reduction, rkd_distance_weight=rkd_distance, rkd_angle_weight=rkd_angle,
        )
        config = TrainConfig(
            student=spec, loss=loss_config, epochs=context.epochs, batch_size=context.batch_size, lr=lr,
            momentum=momentum, weight_decay=weight_decay, schedule=schedule, seed=context.seed,
            precision=context.precision,
        )
        return TrialPlan(config, count_spec_ops(spec, context.resolution), context.budget_macs, params)

    def enqueued_params(self, context: TrialContext) -> list[dict[str, Any]]:
        """Optuna parameters that make ``suggest`` build each hand-designed student of the file."""
        points = []
        for seed in self.spec.enqueue:
            point: dict[str, Any] = {"student.family": seed.family, f"student.{seed.family}.depth": seed.depth}
            stages = tuple(seed.stage_widths) if seed.stage_widths else None
            if stages:
                if not self.spec.student.stage_widths or any(s not in self.spec.student.stage_widths for s in stages):
                    continue
                point.update({f"student.stage_width.{i}": s for i, s in zip((1, 2, 3), stages)})
            if self.spec.student.budget_aware:
                feasible = self.feasible_widths(seed.family, seed.depth, stages, context)
                matches = [i for i, w in enumerate(feasible) if abs(w - seed.width) < 1e-6]
                if not matches:
                    continue  # over budget or off the grid: nothing to seed
                point["student.width_fill"] = (matches[0] + 0.5) / len(feasible)
            else:
                point["student.width"] = seed.width
            points.append(point)
        return points


@lru_cache(maxsize=1024)
def _feasible_widths(space: SearchSpace, family: str, depth: int, stage_widths, context: TrialContext) -> list[float]:
    grid = space.width_grid()

    def fits(width: float) -> bool:
        spec = space.student_spec(family, depth, width, stage_widths, context)
        return count_spec_ops(spec, context.resolution).macs <= context.budget_macs

    if not fits(grid[0]):
        return []
    low, high = 0, len(grid) - 1  # invariant: grid[low] fits
    while low < high:
        middle = (low + high + 1) // 2
        if fits(grid[middle]):
            low = middle
        else:
            high = middle - 1
    return grid[: low + 1]
