"""A search's options, declared once: each field of ``SearchOptions`` carries its flag (name, help,
group, how its text is read, the check of its value, the back-end that owns it), from which the
command line is made (``add_flags``) and read back (``from_args``).

A back-end's options are fields like the others, marked with ``backend=``: they appear in that
back-end's group of ``--help``, and a value given for another back-end is refused in one line.
The checks that involve several options (and the files) are ``setup.validate``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rkd_search.trainer import COMPILE_MODES, DATASETS, PRECISIONS, defaults

from .backends import REGISTRY, backend_names
from .budget import UNIT_NOTE, Budget, format_ops, parse_budget, parse_bytes, parse_count, parse_duration, parse_image_size
from .errors import UsageError
from .fidelity import rungs
from .objective import Limits
from .study import SAMPLERS

DEFAULT_MULTI_FIDELITY = False
"""Chosen by measurement (bench/search_efficiency.py, docs/benchmarks.md): see the README."""
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Flag:
    """How an option is written on the command line."""

    help: str
    group: str = "trials"
    type: Callable[[str], Any] | None = None
    """Reads the flag's text into the option's value (``parse_budget``, ``int``, ...)."""
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    """The values allowed, or a function giving them when the command line is made (the registered back-ends)."""
    metavar: str | None = None
    action: str | None = None
    """``store_true``; ``switch`` for --name/--no-name; ``off`` for a --no-NAME flag that turns a default-on option off."""
    required: bool = False
    env: str | None = None
    """An environment variable that gives the default."""
    check: Callable[[Any], str | None] | None = None
    """Returns what is wrong with a value (the flag and the fix are added), or None."""
    backend: str | None = None
    """The back-end that owns the option (its flags are refused with another back-end)."""
    name: str | None = None
    """The flag, when it is not ``--`` and the field's name with dashes."""

    def flag_for(self, field_name: str) -> str:
        return self.name or "--" + field_name.replace("_", "-")


def option(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None, **flag: Any) -> Any:
    """A ``SearchOptions`` field and its flag."""
    metadata = {"flag": Flag(help, **flag)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _at_least(low: float, high: float | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None or (value >= low and (high is None or value <= high)):
            return None
        return f"must be {'at least ' + format(low, 'g') if high is None else f'between {low:g} and {high:g}'}, got {value}"

    return check


def _positive_finite(value: float | None) -> str | None:
    return None if value is None or 0 < value < float("inf") else f"must be a positive number, got {value}"


def _not_blank(value: str | None) -> str | None:
    return "is empty: pass a name, or leave the flag out for the default" if value is not None and not value.strip() else None


def parse_resources(text: str) -> dict[str, float]:
    """``cpu=2,gpu=0.5`` into {"cpu": 2.0, "gpu": 0.5}."""
    resources = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            resources[key.strip().lower()] = float(value)
        except ValueError:
            raise UsageError(f"--trial-resources {text!r}: write KEY=NUMBER pairs, e.g. cpu=2,gpu=0.5") from None
    unknown = set(resources) - {"cpu", "gpu"}
    if unknown:
        raise UsageError(f"--trial-resources: unknown resource {sorted(unknown)[0]!r} (use cpu and gpu)")
    return resources


DATA, LIMITS, FIDELITY, TRACKING = "data and teacher", "limits besides the MAC budget (each logged on every trial)", \
    "multi-fidelity and stopping", "tracking"


@dataclass
class SearchOptions:
    budget: Budget = option(help=f"operations budget per image, e.g. 20MFLOPs, 20M, 1.5GMACs, 500k; counted in {UNIT_NOTE}",
                            group="", type=parse_budget, required=True)
    trials: int = option(200, "trials in the study, including over-budget candidates (default 200); a rerun runs only the "
                              "missing ones", group="", type=int, check=_at_least(1))
    # -- data and teacher
    dataset: str = option("cifar10", "default cifar10", group=DATA, choices=DATASETS)
    data_dir: str | None = option(None, "dataset folder (env RKD_DATA_DIR); for CIFAR default CACHE/data/NAME, downloaded there "
                                        "when the network allows", group=DATA, env="RKD_DATA_DIR")
    val_fraction: float = option(defaults.VAL_FRACTION, "share of train/ held out for validation when the data has no val/ folder "
                                 f"(default {defaults.VAL_FRACTION})", group=DATA, type=float,
                                 check=lambda v: None if 0 < v < 1 else f"{v} must be between 0 and 1 (exclusive), e.g. 0.1")
    image_size: tuple[int, int] | None = option(None, "resize an ImageFolder tree's images to WIDTHxHEIGHT pixels, e.g. 64x32 "
                                                      "(default: their most common size; every cost is counted at it)",
                                                group=DATA, type=parse_image_size, metavar="WxH")
    teacher: str = option(defaults.TEACHER, f"an architecture trained once and cached (default {defaults.TEACHER}); a checkpoint "
                          "written by rkd-search; torchvision:NAME=WEIGHTS.pt or timm:NAME=WEIGHTS.pt (a state_dict); a TorchScript "
                          "file; a pickled module (with --trust-teacher-code)", group=DATA)
    teacher_epochs: int = option(defaults.TEACHER_EPOCHS, "epochs to train the teacher when it is not a file "
                                 f"(default {defaults.TEACHER_EPOCHS})", group=DATA, type=int, check=_at_least(1))
    trust_teacher_code: bool = option(False, "allow a teacher file whose loading runs pickled code", group=DATA, action="store_true")
    teacher_taps: str | None = option(None, "the teacher's layers whose outputs the graph losses read, three comma-separated node "
                                            "names (default: the ends of its last three resolution stages)", group=DATA)
    teacher_size: int | None = option(None, "the input size a teacher you bring expects, in pixels (default: the data's); the "
                                            "student keeps the data's size", group=DATA, type=int, check=_at_least(1))
    teacher_norm: str | None = option(None, "the normalisation a teacher you bring expects: imagenet (default for torchvision and "
                                            "timm), data, or MEAN,MEAN,MEAN/STD,STD,STD", group=DATA)
    cache_dir: Path | None = option(None, "teachers, teacher targets and decoded datasets (env RKD_CACHE_DIR, default "
                                          "~/.cache/rkd-search)", group=DATA, type=Path)
    # -- trials
    epochs: int = option(defaults.EPOCHS, f"training epochs per student (default {defaults.EPOCHS})", type=int, check=_at_least(1))
    batch_size: int | None = option(None, f"default {defaults.BATCH_SIZE} ({defaults.SMALL_BATCH_SIZE} for digits)", type=int,
                                    check=_at_least(2))
    space: str = option("default", "a built-in space (default, wrn) or a YAML file")
    sampler: str = option("tpe", "Optuna sampler (default tpe; tpe-recipes: after the startup trials, every other trial keeps "
                                 "the most accurate architecture so far and TPE draws only its recipe)", choices=SAMPLERS,
                          check=lambda v: None if v in SAMPLERS else f"{v!r} is unknown: choose one of {', '.join(SAMPLERS)}")
    seed: int = option(0, "", type=int, check=lambda v: None if 0 <= v <= SEED_MAX else
                       f"{v} is out of range: pass a whole number from 0 to {SEED_MAX}")
    precision: str = option("auto", "auto (default): bf16 autocast on CUDA, fp32 on the CPU (bf16 cost accuracy there: "
                                    "docs/benchmarks.md)", choices=PRECISIONS)
    compile: str = option("auto", "the training step through torch.compile: on, off, or auto (default): eager until a measurement "
                                  "shows compiling faster (a step that fails to compile trains eagerly)", choices=COMPILE_MODES)
    device: str | None = option(None, "cuda, cpu, ... (default: cuda when available)")
    prescreen: int = option(1, "propose N candidates per trained trial and train the one with the most MACs (no zero-cost score ranked "
                              "students better than MACs: docs/benchmarks.md; default 1: off)",
                            type=int, metavar="N", check=_at_least(1, 1000))
    enqueue: bool = option(True, "train the space's hand-picked students first (default on; --no-enqueue starts from nothing)",
                           action="switch")
    # -- multi-fidelity and stopping
    multi_fidelity: bool = option(DEFAULT_MULTI_FIDELITY, "asynchronous successive halving over epochs with a Pareto promotion "
                                  f"rule (default: {'on' if DEFAULT_MULTI_FIDELITY else 'off'}, chosen by bench/search_efficiency.py)",
                                  group=FIDELITY, action="switch")
    min_epochs: int = option(1, "first rung, in epochs (default 1)", group=FIDELITY, type=int)
    eta: int = option(3, "reduction factor between rungs (default 3)", group=FIDELITY, type=int)
    timeout: float | None = option(None, "stop starting new work after this long (e.g. 2h, 90m) and finish cleanly; rerun to "
                                         "continue", group=FIDELITY, type=parse_duration)
    max_student_epochs: int | None = option(None, "a compute budget: stop starting new work once trials have trained N epochs in "
                                                  "all", group=FIDELITY, type=int, metavar="N", check=_at_least(1))
    # -- limits beyond the MAC budget
    max_params: float | None = option(None, "parameters (flash), e.g. 100k", group=LIMITS,
                                      type=lambda text: parse_count(text, "--max-params"))
    max_activation_bytes: float | None = option(None, "peak activation memory at batch 1 in fp32 bytes, e.g. 256KB or 512KiB",
                                                group=LIMITS, name="--max-activation-memory",
                                                type=lambda text: parse_bytes(text, "--max-activation-memory"))
    max_latency_ms: float | None = option(None, "median batch-1 latency on this CPU with ONNX Runtime (1 thread), in ms",
                                          group=LIMITS, type=float, check=_positive_finite)
    max_flash_bytes: float | None = option(None, "int8 weights and biases in bytes (a microcontroller's flash), e.g. 256KB",
                                           group=LIMITS, name="--max-flash", type=lambda text: parse_bytes(text, "--max-flash"))
    max_sram_bytes: float | None = option(None, "peak int8 activations in bytes at batch 1 (a microcontroller's SRAM), e.g. 128KB",
                                          group=LIMITS, name="--max-sram", type=lambda text: parse_bytes(text, "--max-sram"))
    # -- tracking
    output: Path | None = option(None, "the search's folder (study, front table and plot); default runs/DATASET-BUDGET-seedN",
                                 group=TRACKING, type=Path)
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: mlflow.yaml, else sqlite:///mlflow.db); env "
                                            "MLFLOW_TRACKING_URI", group=TRACKING)
    experiment: str | None = option(None, "MLflow experiment (default: mlflow.yaml, else rkd-search); env MLFLOW_EXPERIMENT_NAME",
                                    group=TRACKING, check=_not_blank)
    mlflow_config: str | None = option(None, "MLflow settings file (default ./mlflow.yaml when present)", group=TRACKING)
    # -- back-ends: each option is its back-end's (search/backends)
    backend: str = option("optuna", "where the trials run (default optuna; search/backends)", group="back-end",
                          choices=backend_names)
    jobs: int = option(1, "trials training at once, each in its own worker process (default 1; on one GPU, 4 or more: see the "
                          "README)", type=int, check=_at_least(1, 256), backend="optuna")
    address: str | None = option(None, "Ray cluster address HOST:PORT (or env RAY_ADDRESS); without it a local Ray starts",
                                 backend="ray")
    trial_resources: dict[str, float] = option(factory=dict, help="per-trial Ray resources, e.g. cpu=2,gpu=0.5 (default: all CPUs "
                                                                  "of the smallest node, one trial per node)",
                                               type=parse_resources, backend="ray")
    max_concurrent: int | None = option(None, "trials running at once on Ray (default: as resources allow)", type=int,
                                        check=_at_least(1), backend="ray")
    storage_path: str | None = option(None, "Ray experiment storage; must be shared (NFS path or URI) on a multi-node cluster",
                                      backend="ray")
    progress: bool = option(True, "no progress bars", group="", action="off", name="--no-progress")
    # -- what only Python callers set (benchmarks, tests): no flag
    measure_latency: bool = True
    """Measure each student's latency (ONNX Runtime) even without --max-latency-ms."""
    train: str | None = None
    """``module:function`` training a trial in the workers, for tests (default ``train_student``)."""

    def expected_trials(self) -> int:
        """How many trials the search can start: ``trials``, or fewer when a compute limit
        (``max_student_epochs``) runs out first (each trial trains ``epochs``, or at least
        ``min_epochs`` with multi-fidelity). The sampler's startup trials scale with it: a search of
        200 allowed trials that can afford 8 must not sample all 8 at random."""
        if self.max_student_epochs is None:
            return self.trials
        per_trial = self.min_epochs if self.multi_fidelity else self.epochs
        return max(1, min(self.trials, self.max_student_epochs // max(1, per_trial)))

    def resolved_output(self) -> Path:
        if self.output is not None:
            return Path(self.output).resolve()
        budget = re.sub(r"[^0-9A-Za-z.]+", "", format_ops(self.budget.macs))
        return Path("runs", f"{self.dataset}-{budget}-seed{self.seed}").resolve()

    @property
    def rungs(self) -> list[int]:
        return rungs(self.min_epochs, self.epochs, self.eta) if self.multi_fidelity else [self.epochs]

    @property
    def limits(self) -> Limits:
        return Limits(self.budget.macs, self.max_params, self.max_activation_bytes, self.max_latency_ms,
                      self.max_flash_bytes, self.max_sram_bytes)


def flags() -> list[tuple[dataclasses.Field, Flag]]:
    """Every option that has a flag, in declaration order."""
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(SearchOptions) if "flag" in f.metadata]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The search's flags, grouped as ``--help`` shows them; each back-end's in a group of its own."""
    groups: dict[str, Any] = {"": parser}
    for spec, flag in flags():
        title = f"back-end {flag.backend}" if flag.backend else flag.group
        target = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        name = flag.flag_for(spec.name)
        kwargs: dict[str, Any] = {"dest": spec.name, "help": flag.help or None}
        if flag.action == "store_true":
            target.add_argument(name, action="store_true", **kwargs)
        elif flag.action == "off":
            target.add_argument(name, action="store_false", **kwargs)
        elif flag.action == "switch":
            target.add_argument(name, action=argparse.BooleanOptionalAction, default=spec.default, **kwargs)
        else:
            default = os.environ.get(flag.env) if flag.env else None
            choices = flag.choices() if callable(flag.choices) else flag.choices
            if spec.name == "backend":
                kwargs["help"] = f"{flag.help}: " + "; ".join(f"{b.name}: {b.help}" for b in REGISTRY.values())
            target.add_argument(name, default=default, choices=choices, metavar=flag.metavar, required=flag.required, **kwargs)


def from_args(args: argparse.Namespace) -> SearchOptions:
    """The options of parsed flags: each text read by its flag's ``type``, each value checked."""
    values = {}
    for spec, flag in flags():
        value = getattr(args, spec.name)
        if flag.action is None:
            value = flag.type(value) if value is not None and flag.type is not None else value
            if value is None:
                continue  # the field's default
        values[spec.name] = value
    options = SearchOptions(**values)
    check(options)
    return options


def check(options: SearchOptions) -> None:
    """Every option's own check, the options that go together, and no back-end's option given with
    another back-end (each back-end then checks its own: ``backends.get_backend(name).check``)."""
    for spec, flag in flags():
        value = getattr(options, spec.name)
        problem = flag.check(value) if flag.check is not None else None
        if problem:
            raise UsageError(f"{flag.flag_for(spec.name)} {problem}")
        if flag.backend and flag.backend != options.backend and value != _default(spec):
            raise UsageError(f"{flag.flag_for(spec.name)} is for the {REGISTRY[flag.backend].kind} back-end (--backend "
                             f"{flag.backend}): add --backend {flag.backend}, or leave the flag out")
    o = options
    if o.multi_fidelity and not (1 <= o.min_epochs <= o.epochs and o.eta >= 2):
        raise UsageError(f"multi-fidelity needs 1 <= --min-epochs ({o.min_epochs}) <= --epochs ({o.epochs}) "
                         f"and --eta >= 2 ({o.eta})")


def _default(spec: dataclasses.Field) -> Any:
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
