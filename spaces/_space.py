"""Turning a search-space file and an Optuna trial into one student's training config.

``SearchSpace.suggest`` is the define-by-run function shared by every back-end: it calls only
``trial.suggest_*``, so an Optuna trial and Ray Tune's wrapped trial both work.

Budget-aware widths: a width drawn uniformly from the whole range would put most large students
over budget at the larger depths. Instead, once family, depth (per stage for mobile families),
expansion, kernel and stage multipliers are drawn, the widest student on the width grid that fits
the budget is found (operations counted by thop, memoised; the parameter and activation-memory
limits too, when set: all grow with width), and the trial draws ``student.width_fill`` in [0, 1]
to pick a width on the grid up to it. The sampler's space stays fixed (every sampler supports it)
and nearly every candidate fits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


from rkd_search.trainer import LossConfig, ModelSpec, OpsCount, TrainConfig, count_spec_ops
from rkd_search.trainer.defaults import KD_TEMPERATURE
from rkd_search.trainer.models import FAMILIES
from rkd_search.trainer.ops import int8_flash_bytes, int8_sram_bytes, peak_activation_bytes

from ._plan import TrialContext, TrialLike, TrialPlan
from ._file import SpaceFile
from ._schema import Param, Range


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

    def feasible_widths(self, arch: "Architecture", context: TrialContext) -> list[float]:
        """The grid widths whose student fits the budget and limits (all grow with width)."""
        return _feasible_widths(self, arch, context)

    def smallest_students(self, context: TrialContext) -> list[ModelSpec]:
        """The smallest student of each family: shallowest, narrowest, least expanded, smallest
        kernel. Every cost a limit bounds (MACs, parameters, memory, flash, SRAM, latency) is
        lowest at one of them, so a limit none of them meets can never be met."""
        student = self.spec.student
        stages = (min(student.stage_widths),) * 3 if student.stage_widths else None
        specs = []
        for family in student.families:
            depth = min(student.depths(family))
            mobile = FAMILIES[family].mobile
            arch = Architecture(family, depth * 3 if mobile else depth, (depth,) * 3 if mobile else None, stages,
                                min(student.expansions) if mobile else None, min(student.kernels) if mobile else None)
            specs.append(arch.spec(student.width.low, context))
        return specs

    def smallest_student(self, context: TrialContext) -> tuple[ModelSpec, OpsCount]:
        """The cheapest student this space can build in MACs: a budget below it can never be met."""
        spec = min(self.smallest_students(context), key=lambda s: count_spec_ops(s, context.resolution).macs)
        return spec, count_spec_ops(spec, context.resolution)

    def _suggest_architecture(self, trial: TrialLike) -> "Architecture":
        student = self.spec.student
        family = _suggest(trial, "student.family", student.families)
        stage_widths = None
        if student.stage_widths:
            stage_widths = tuple(_suggest(trial, f"student.stage_width.{i}", student.stage_widths) for i in (1, 2, 3))
        if not FAMILIES[family].mobile:
            depth = _suggest(trial, f"student.{family}.depth", student.depths(family))
            return Architecture(family, depth, None, stage_widths, None, None)
        stage_depths = tuple(_suggest(trial, f"student.{family}.depth.{i}", student.depths(family)) for i in (1, 2, 3))
        expansion = float(_suggest(trial, f"student.{family}.expansion", student.expansions))
        kernel = int(_suggest(trial, f"student.{family}.kernel", student.kernels))
        return Architecture(family, sum(stage_depths), stage_depths, stage_widths, expansion, kernel)

    # -- the define-by-run function -----------------------------------------------------------
    def suggest(self, trial: TrialLike, context: TrialContext) -> TrialPlan:
        student, graph, loss, optim = self.spec.student, self.spec.graph, self.spec.loss, self.spec.optim
        params: dict[str, Any] = {}

        arch = self._suggest_architecture(trial)
        if student.budget_aware:
            feasible = self.feasible_widths(arch, context)
            fill = trial.suggest_float("student.width_fill", 0.0, 1.0)
            if feasible:
                width = feasible[min(len(feasible) - 1, int(fill * len(feasible)))]
            else:  # even the narrowest student of this architecture is over budget: infeasible, never trained
                width = self.width_grid()[0]
        else:
            width = _suggest(trial, "student.width", student.width)
        spec = arch.spec(width, context)
        params.update({"student.family": arch.family, "student.depth": arch.depth, "student.width": width,
                       "student.name": spec.name})
        if arch.stage_widths is not None:
            params["student.stage_widths"] = ",".join(f"{s:g}" for s in arch.stage_widths)
        if arch.stage_depths is not None:
            params.update({"student.stage_depths": ",".join(map(str, arch.stage_depths)),
                           "student.expansion": arch.expansion, "student.kernel": arch.kernel})

        ce_weight = _suggest(trial, "loss.ce_weight", loss.ce_weight)
        similarities = [graph.similarity] if isinstance(graph.similarity, str) else graph.similarity
        similarity = None
        if graph.gaussian_weight is not None:
            # the graph is always on (the schema checks loss.graph_weight > 0): its similarity first, then its weight
            similarity = _suggest(trial, "graph.similarity", similarities)
        if similarity == "gaussian":
            graph_weight = _suggest(trial, "graph.gaussian_weight", graph.gaussian_weight)
        else:
            graph_weight = _suggest(trial, "loss.graph_weight", loss.graph_weight)
        kd_weight = _suggest(trial, "loss.kd_weight", loss.kd_weight)
        temperature = _suggest(trial, "loss.temperature", loss.temperature) if kd_weight > 0 else KD_TEMPERATURE
        rkd_distance = _suggest(trial, "loss.rkd_distance_weight", loss.rkd_distance_weight)
        rkd_angle = _suggest(trial, "loss.rkd_angle_weight", loss.rkd_angle_weight)
        added = {key: _suggest(trial, f"loss.{key}", param) for key, param in loss.added().items()}  # registered terms
        params.update({"loss.ce_weight": ce_weight, "loss.graph_weight": graph_weight, "loss.kd_weight": kd_weight})
        params.update({f"loss.{key}": value for key, value in added.items()})
        if kd_weight > 0:
            params["loss.temperature"] = temperature
        if rkd_distance or rkd_angle:
            params.update({"loss.rkd_distance_weight": rkd_distance, "loss.rkd_angle_weight": rkd_angle})

        k, bandwidth, power, layers = None, 1.0, 1, (1, 2, 3)
        if graph_weight > 0:
            if similarity is None:
                similarity = _suggest(trial, "graph.similarity", similarities)
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
            similarity=similarity or "cosine", k=k, bandwidth=bandwidth, power=power, layers=layers,
            reduction=graph.reduction, rkd_distance_weight=rkd_distance, rkd_angle_weight=rkd_angle, weights=added,
        )
        config = TrainConfig(
            student=spec, loss=loss_config, epochs=context.epochs, batch_size=context.batch_size, lr=lr,
            momentum=momentum, weight_decay=weight_decay, schedule=schedule, seed=context.seed,
            precision=context.precision, compile=context.compile,
        )
        measures = {"flash_bytes": float(int8_flash_bytes(spec)), "sram_bytes": float(int8_sram_bytes(spec, context.resolution))}
        return TrialPlan(config, count_spec_ops(spec, context.resolution), context.budget_macs, params,
                         peak_activation_bytes(spec, context.resolution), measures=measures)

    def enqueued_params(self, context: TrialContext) -> list[dict[str, Any]]:
        """Optuna parameters that make ``suggest`` build each hand-designed student of the file with
        its recipe; a student that does not fit the budget and limits is left out."""
        student = self.spec.student
        points = []
        for seed in self.spec.enqueue:
            family = seed.family
            point: dict[str, Any] = {"student.family": family}
            stages = tuple(seed.stage_widths) if seed.stage_widths else None
            if stages:
                if not student.stage_widths or any(s not in student.stage_widths for s in stages):
                    continue
                point.update({f"student.stage_width.{i}": s for i, s in zip((1, 2, 3), stages)})
            if FAMILIES[family].mobile:
                depths = tuple(seed.stage_depths or (seed.depth // 3,) * 3)
                expansion = float(seed.expansion if seed.expansion is not None else student.expansions[0])
                kernel = int(seed.kernel if seed.kernel is not None else student.kernels[0])
                point.update({f"student.{family}.depth.{i}": d for i, d in zip((1, 2, 3), depths)})
                if len(student.expansions) > 1:
                    point[f"student.{family}.expansion"] = expansion
                if len(student.kernels) > 1:
                    point[f"student.{family}.kernel"] = kernel
                arch = Architecture(family, sum(depths), depths, stages, expansion, kernel)
            else:
                point[f"student.{family}.depth"] = seed.depth
                arch = Architecture(family, seed.depth, None, stages, None, None)
            if student.budget_aware:
                feasible = self.feasible_widths(arch, context)
                if seed.width == "max":
                    within = self.feasible_widths(arch, _within_share(context, seed.budget_share))  # a prefix of feasible
                    matches = [len(within) - 1] if within else []
                else:
                    matches = [i for i, w in enumerate(feasible) if abs(w - seed.width) < 1e-6]
                if not matches:
                    continue  # over budget or off the grid: nothing to seed
                point["student.width_fill"] = (matches[0] + 0.5) / len(feasible)
            elif seed.width == "max":
                share = _within_share(context, seed.budget_share)
                fitting = [w for w in self.width_grid() if share.fits(arch.spec(w, context))]
                if not fitting:
                    continue
                point["student.width"] = fitting[-1]
            else:
                point["student.width"] = seed.width
            point.update(_recipe_params(seed.recipe, context))
            points.append(point)
        return points


def _within_share(context: TrialContext, share: float) -> TrialContext:
    """The context with its MAC budget cut to ``share`` of it (the other limits as they are)."""
    return context if share >= 1.0 else dataclasses.replace(context, budget_macs=share * context.budget_macs)


def _recipe_params(recipe: dict[str, Any], context: TrialContext) -> dict[str, Any]:
    """A seed's recipe as the parameter values ``suggest`` draws (``graph.k: dense`` is the batch
    size, ``graph.layers`` a comma-separated choice)."""
    params = {}
    for key, value in recipe.items():
        if key == "graph.k" and value in ("dense", None):
            value = context.batch_size
        elif key == "graph.layers":
            value = ",".join(str(int(v)) for v in value)
        params[key] = value
    return params


@dataclass(frozen=True)
class Architecture:
    """A student's shape but its width: what the budget-aware width is searched for."""

    family: str
    depth: int
    stage_depths: tuple[int, int, int] | None
    stage_widths: tuple[float, float, float] | None
    expansion: float | None
    kernel: int | None

    def spec(self, width: float, context: TrialContext) -> ModelSpec:
        return ModelSpec(self.family, self.depth, width, self.stage_widths, context.in_channels, context.num_classes,
                         self.stage_depths, self.expansion, self.kernel)


@lru_cache(maxsize=4096)
def _feasible_widths(space: SearchSpace, arch: Architecture, context: TrialContext) -> list[float]:
    grid = space.width_grid()

    def fits(width: float) -> bool:
        return context.fits(arch.spec(width, context))

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
