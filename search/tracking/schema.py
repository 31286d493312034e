"""What each MLflow run of a search holds: the parent run's params, tags and files, the teacher's
run, and the ``spec.json`` stored beside every trained student.

A search's runs in one experiment:
- a teacher run per teacher (tag ``rkd.role = teacher``), shared by every search that uses it:
  its source, architecture, taps, preprocessing, test accuracy on the user's data and MACs;
- a parent run per search (``rkd.role = search``): the budget, data (with the validation split's
  size and noise), space, sampler, schedule, limits and teacher; ``pareto.csv``, ``pareto.png``
  and the hypervolume against compute are added as trials end;
- a child run per trial (``t007-wrn16_0.75``): dotted params, per-epoch ``epoch.*`` metrics, the
  final metrics, the ``rkd.*`` tags of ``names`` and the student's ``spec.json`` and weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rkd_search.trainer import ImageDataset, Teacher

from .. import names
from ..budget import UNIT_NOTE, Budget, format_ops
from ..pareto import standard_error


def parent_name(dataset: str, budget: Budget, sampler: str, seed: int) -> str:
    return f"search-{dataset}-{format_ops(budget.macs)}MACs-{sampler}-s{seed}"


def majority_share(data: ImageDataset) -> float:
    """The validation accuracy of always guessing the most frequent class."""
    labels = data.val_labels.cpu()
    return float(labels.bincount().max()) / len(labels)


def parent_params(options: Any, data: ImageDataset, space: Any, batch_size: int, teacher: Teacher, teacher_run_id: str,
                  teacher_test_acc: float) -> dict[str, Any]:
    """The parent run's params: everything that defines the search."""
    o = options
    val_size = len(data.val_labels)
    params = {
        "budget": o.budget.text, "budget.macs": int(o.budget.macs), "budget.unit": UNIT_NOTE,
        "dataset": o.dataset, "dataset.fingerprint": data.fingerprint,
        "data_dir": str(Path(o.data_dir).resolve()) if o.data_dir else "",
        "dataset.sizes": f"{len(data.train_labels)}/{val_size}/{len(data.test_labels)}",
        "dataset.val_majority": round(majority_share(data), 6),
        "dataset.val_source": data.val_source,
        "dataset.val_fraction": o.val_fraction,
        "dataset.image_size": f"{data.resolution[1]}x{data.resolution[0]}",
        "val.size": val_size,
        "val.stderr_at_teacher": round(standard_error(teacher_test_acc, val_size), 6),
        "space": space.name, "space.digest": space.digest, "sampler": o.sampler, "seed": o.seed,
        "epochs": o.epochs, "batch_size": batch_size, "backend": o.backend, "precision": o.precision,
        "rungs": ",".join(map(str, o.rungs)), "eta": o.eta, "jobs": o.jobs, "prescreen": o.prescreen,
        "teacher": teacher.name, "teacher.reference": teacher.reference,
        "teacher.run_id": teacher_run_id, "teacher.digest": teacher.digest,
        "teacher.test_acc": round(teacher_test_acc, 4),
    }
    for name, limit in (("limit.params", o.max_params), ("limit.activation_bytes", o.max_activation_bytes),
                        ("limit.latency_ms", o.max_latency_ms), ("limit.flash_bytes", o.max_flash_bytes),
                        ("limit.sram_bytes", o.max_sram_bytes)):
        if limit is not None:
            params[name] = limit
    return params


def parent_tags(output: Path, teacher_run_id: str, backend: str) -> dict[str, Any]:
    return {names.OUTPUT: str(output), names.TEACHER_RUN_ID: teacher_run_id, names.BUDGET_UNIT: "MACs (thop)",
            names.BACKEND: backend}


def parent_files(space_text: str, params: dict[str, Any], output: Path) -> dict[str, str]:
    return {"space.yaml": space_text, "search.json": json.dumps({**params, "output": str(output)}, indent=2)}


def teacher_params(teacher: Teacher, data: ImageDataset) -> dict[str, Any]:
    """The teacher run's params: where it came from and how it is fed and tapped."""
    params = {"teacher.arch": teacher.meta.get("architecture", teacher.name), "teacher.dataset": data.name, "teacher.reference": teacher.reference,
              "teacher.epochs": teacher.meta.get("epochs", "unknown"), "teacher.checkpoint": str(teacher.checkpoint or ""),
              "teacher.source": teacher.meta.get("source", "rkd-search")}
    for key in ("taps", "input_size", "mean", "std"):
        if key in teacher.meta:
            params[f"teacher.{key}"] = teacher.meta[key]
    return params


def student_card(data: ImageDataset, dataset: str) -> dict[str, Any]:
    """What ``spec.json`` records beside each student: how to feed it and what its outputs mean."""
    channels = data.input_shape[0]
    return {"preprocessing": {"input_size": list(data.input_shape), "channel_order": "RGB" if channels == 3 else "gray",
                              "scale": "1/255", "mean": list(data.mean), "std": list(data.std),
                              "layout": "NCHW", "dtype": "float32"},
            "classes": list(data.classes), "dataset": dataset}
