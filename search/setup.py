"""A search's options validated into a complete, frozen setup before anything is created.

``validate(options)`` checks what the options ask of the world (the space file, the data, the
teacher, the tracking store, the output and cache folders, limits no student can meet; the options
alone are ``options.check``'s) and returns a ``SearchSetup``; bad input raises ``UsageError`` (one
line, exit code 2) and leaves no output folder, study, MLflow store or run behind.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rkd_search.spaces import SearchSpace, SpaceError, TrialContext, load_space
from rkd_search.trainer import (
    DataError,
    ImageDataset,
    TeacherError,
    TeacherSource,
    count_spec_ops,
    default_cache_dir,
    find_teacher,
    load_dataset,
)
from rkd_search.trainer.ops import int8_flash_bytes, int8_sram_bytes, peak_activation_bytes

from .budget import format_bytes, format_ops
from .errors import UsageError
from .options import SearchOptions
from .study import stored_settings
from .tracking import TrackingSettings, check_reachable, resolve_settings


@dataclass(frozen=True)
class SearchSetup:
    """Everything validated: what a search needs before it creates anything."""

    options: SearchOptions
    output: Path
    space: SearchSpace
    tracking: TrackingSettings
    cache_dir: Path
    data: ImageDataset
    batch_size: int
    context: TrialContext
    teacher: TeacherSource
    study_settings: dict[str, Any]


def validate(options: SearchOptions, progress: Callable[[int, int], None] | None = None) -> SearchSetup:
    """Load the space and the data, find the teacher, check what the options ask of them: a
    ``SearchSetup``, or ``UsageError`` with what to do (the options alone are ``options.check``'s).
    ``progress(done, total)`` reports images as they are decoded."""
    output = options.resolved_output()
    check_output_folder(output)
    try:
        space = load_space(options.space)
    except SpaceError as error:
        raise UsageError(str(error)) from None
    tracking = resolve_settings(options.mlflow_config, options.tracking_uri, options.experiment)
    check_reachable(tracking)
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    # the teacher, its targets and the decoded images are saved there: checked before minutes of training
    check_output_folder(cache_dir, "the cache folder", "set RKD_CACHE_DIR or pass --cache-dir to a writable folder")
    try:
        data = load_dataset(options.dataset, options.data_dir, val_fraction=options.val_fraction, seed=options.seed,
                            cache_dir=cache_dir, progress=progress, image_size=options.image_size)
    except DataError as error:
        raise UsageError(str(error)) from None
    batch_size = options.batch_size or data.default_batch_size
    if batch_size > len(data.train_labels):
        raise UsageError(f"--batch-size {batch_size} is larger than the {len(data.train_labels)} training images: pass a smaller one")
    o = options
    context = TrialContext(
        budget_macs=o.budget.macs, in_channels=data.input_shape[0], num_classes=data.num_classes, resolution=data.resolution,
        epochs=o.epochs, batch_size=batch_size, seed=o.seed, precision=o.precision, compile=o.compile,
        max_params=o.max_params,
        max_activation_bytes=o.max_activation_bytes, max_flash_bytes=o.max_flash_bytes, max_sram_bytes=o.max_sram_bytes,
    )
    check_limits_reachable(options, space, context, cache_dir)
    try:
        teacher = find_teacher(o.teacher, data, epochs=o.teacher_epochs, seed=o.seed, trust_code=o.trust_teacher_code,
                               taps=o.teacher_taps, size=o.teacher_size, normalization=o.teacher_norm)
    except TeacherError as error:
        raise UsageError(str(error)) from None
    study_settings = {
        "budget_macs": o.budget.macs, "dataset": o.dataset, "dataset_fingerprint": data.fingerprint,
        "image_size": list(data.resolution),
        "space": space.name, "space_digest": space.digest, "epochs": o.epochs, "batch_size": batch_size,
        "seed": o.seed, "teacher": teacher.reference, "precision": o.precision, "backend": o.backend,
        "rungs": o.rungs, "eta": o.eta, "max_params": o.max_params, "max_activation_bytes": o.max_activation_bytes,
        "max_latency_ms": o.max_latency_ms, "max_flash_bytes": o.max_flash_bytes, "max_sram_bytes": o.max_sram_bytes,
        "prescreen": o.prescreen, "enqueue": o.enqueue, "tracking_store": tracking.store_id, "experiment": tracking.experiment,
    }
    check_existing_study(output, study_settings, tracking)
    return SearchSetup(options, output, space, tracking, cache_dir, data, batch_size, context, teacher, study_settings)


def check_output_folder(output: Path, flag: str = "--output", fix: str = "pass a writable --output") -> None:
    """``output`` must be a folder this process can write, or be creatable; checked without writing."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"{flag} {output} is a file, not a folder: {fix}")
    folder = output
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {output}: {folder} is a file, not a folder: {fix}")
    try:  # access() misses read-only mounts for root: try a temporary file, removed at once
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {output} cannot be written ({folder}: {error.strerror}): {fix}") from None


def check_limits_reachable(o: SearchOptions, space: SearchSpace, context: TrialContext, cache_dir: Path) -> None:
    """Refuse a budget or limit that no student of the space can meet (each cost is lowest at one
    of the families' smallest students; latency is measured on them once, and cached)."""
    smallest = space.smallest_students(context)
    resolution = context.resolution

    def refuse(flag: str, limit: str, cost: Callable, unit: str, fix: str) -> None:
        best = min(smallest, key=cost)
        raise UsageError(f"{flag} {limit} is below the smallest student of space {space.name!r}: {best.name} needs "
                         f"{unit(cost(best))}; {fix}")

    macs = lambda spec: count_spec_ops(spec, resolution).macs  # noqa: E731
    if min(map(macs, smallest)) > o.budget.macs:
        best = min(smallest, key=macs)
        raise UsageError(f"budget {o.budget} is below the smallest student of space {space.name!r}: {best.name} needs "
                         f"{format_ops(macs(best))} MACs ({macs(best):,}); raise --budget or use a space with smaller students")
    checks = [
        ("--max-params", o.max_params, lambda spec: count_spec_ops(spec, resolution).params, lambda v: f"{v:,} parameters"),
        ("--max-activation-memory", o.max_activation_bytes, lambda spec: peak_activation_bytes(spec, resolution),
         lambda v: f"{format_bytes(v)} of activations (fp32, batch 1)"),
        ("--max-flash", o.max_flash_bytes, int8_flash_bytes, lambda v: f"{format_bytes(v)} of int8 weights and biases"),
        ("--max-sram", o.max_sram_bytes, lambda spec: int8_sram_bytes(spec, resolution),
         lambda v: f"{format_bytes(v)} of int8 activations"),
    ]
    for flag, limit, cost, unit in checks:
        if limit is not None and min(map(cost, smallest)) > limit:
            shown = f"{limit:g}" if flag == "--max-params" else format_bytes(limit)
            refuse(flag, shown, cost, unit, "raise the limit")
    if o.max_latency_ms is not None and o.measure_latency:
        from rkd_search.trainer.deploy import LatencyCache

        latency = LatencyCache(cache_dir)
        fastest = min(latency(spec, resolution) for spec in smallest)
        if fastest > o.max_latency_ms:
            refuse("--max-latency-ms", f"{o.max_latency_ms:g}", lambda spec: latency(spec, resolution),
                   lambda v: f"{v:.3f} ms on this CPU (ONNX Runtime, 1 thread)", "raise the limit")


def check_existing_study(output: Path, settings: dict[str, Any], tracking: TrackingSettings) -> None:
    """A rerun must use the flags the study in ``output`` was started with."""
    stored = stored_settings(output)
    if not stored:
        return
    for key, value in settings.items():
        if key in stored and stored[key] != value:
            if key in ("tracking_store", "experiment"):
                raise UsageError(
                    f"{output} holds a search logged to {stored['tracking_store']} (experiment "
                    f"{stored.get('experiment')!r}), not {tracking.store_id} ({tracking.experiment!r}): "
                    "rerun with the tracking URI and experiment it used, or pass a new --output"
                )
            raise UsageError(
                f"{output} holds a search with {key} = {stored[key]!r}, not {value!r}: "
                "rerun with the same flags to resume it, or pass a new --output"
            )


def default_threads(jobs: int) -> int:
    """Torch threads per worker: the threads this process may use (the cores, or OMP_NUM_THREADS)
    shared between the jobs. More threads than cores makes every training spin and wait."""
    import torch

    return max(1, min(os.cpu_count() or 1, torch.get_num_threads()) // jobs)
