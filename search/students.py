"""Trained students as MLflow holds them: a search's trials, and the final trainings of ``rkd-search train``.

``load_student`` reads a run's student (``student/spec.json`` and the weights, loaded without
unpickling code) and refuses, in one line, a run that has none: a search's or a teacher's run, a
trial over a limit, pruned, failed, paused or still training. ``search_of`` finds the search a
student came from (its data and teacher), ``best_student`` the most accurate learned student on a
search's front, and ``dataset_of`` the search's dataset, checked against its fingerprint.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rkd_search.trainer import DataError, ImageDataset, ModelSpec, TrainConfig, load_dataset

from . import names
from .budget import parse_image_size
from .errors import UsageError
from .pareto import compute_front
from .records import TrialRecord, TrialState
from .tracking import Tracker

PICK = f"pick a run tagged {names.PARETO}=true (rkd-search pareto)"


@dataclass
class StoredStudent:
    """A run's trained student: its MLflow run, ``spec.json`` and weights."""

    run: Any
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def name(self) -> str:
        return self.run.info.run_name

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.meta["spec"])

    @property
    def config(self) -> TrainConfig | None:
        """The recipe it was trained with (None for a run made by an older rkd-search)."""
        return TrainConfig.from_dict(self.meta["config"]) if self.meta.get("config") else None

    @property
    def trained_again(self) -> bool:
        """A final training (``rkd-search train``), not a search's trial."""
        return self.run.data.tags.get(names.ROLE) == names.ROLE_TRAIN

    def describe_weights(self) -> str:
        """Which weights these are, in one line."""
        tags, epochs = self.run.data.tags, self.run.data.tags.get(names.EPOCHS, "?")
        if self.trained_again:
            recipe = self.run.data.params.get("train.recipe", "trial")  # runs before --recipe trained the trial's
            return (f"weights trained by `rkd-search train` for {epochs} epochs on {tags.get(names.TRAIN_ON, 'train')} "
                    f"(--recipe {recipe}) from trial run {tags.get(names.TRIAL_RUN, '?')}")
        return (f"weights of the search's trial itself ({epochs} epochs); `rkd-search train {self.run_id}` trains it to "
                "the end first")


def get_run(tracker: Tracker, run_id: str):
    try:
        return tracker.client.get_run(run_id)
    except Exception:
        raise UsageError(f"no MLflow run {run_id!r} at {tracker.settings.tracking_uri}: pass a run id from "
                         "`rkd-search pareto`") from None


def load_student(tracker: Tracker, run_id: str) -> StoredStudent:
    """The student of trial or final-training run ``run_id``; ``UsageError`` when it has none."""
    run = get_run(tracker, run_id)
    tags = run.data.tags
    role = tags.get(names.ROLE)
    if role == names.ROLE_SEARCH:
        raise UsageError(f"run {run_id} is a search's parent run, with no trained student: {PICK}")
    if role == names.ROLE_TEACHER:
        raise UsageError(f"run {run_id} is a teacher's run, not a student: {PICK}")
    state = tags.get(names.STATE)
    if state != TrialState.COMPLETE:
        why = {TrialState.INFEASIBLE: "was over a limit and never trained",
               TrialState.PRUNED: f"was stopped at {tags.get(names.EPOCHS, '?')} epochs by multi-fidelity, and its weights were not kept",
               TrialState.FAILED: f"failed (see its {names.ERROR} tag)",
               TrialState.PAUSED: "is paused, not fully trained",
               TrialState.RUNNING: "is still training"}.get(state, f"is in state {state}")
        raise UsageError(f"run {run_id} ({run.info.run_name}) {why}: it has no trained student; {PICK}")
    with tempfile.TemporaryDirectory() as download:
        try:
            local = Path(tracker.client.download_artifacts(run_id, "student", download))
        except Exception as error:
            raise UsageError(f"cannot download the student of run {run_id} ({type(error).__name__}): is the artifact store "
                             "reachable?") from None
        meta = json.loads((local / "spec.json").read_text())
        state_dict = torch.load(local / "weights.pt", map_location="cpu", weights_only=True)
    if not all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point()):
        raise UsageError(f"run {run_id} holds weights that are not finite (a diverged student): nothing worth using")
    return StoredStudent(run, meta, state_dict)


def search_of(tracker: Tracker, run):
    """The search a student's run belongs to: a trial's parent run, or the search a final training names."""
    tags = run.data.tags
    search_id = tags.get("mlflow.parentRunId") or tags.get(names.SEARCH_RUN)
    if not search_id:
        raise UsageError(f"run {run.info.run_id} belongs to no search: pass a run id from `rkd-search pareto`")
    return get_run(tracker, search_id)


def best_student(tracker: Tracker, output: str | None = None) -> TrialRecord:
    """The most accurate learned, fully trained student on the front of the latest search (of
    ``output`` when given), fewer MACs and then the earlier trial first on a tie: every front student
    fits the budget and limits."""
    parent = tracker.latest_search(output)
    front = compute_front(tracker.trial_records(parent))
    if not front:
        name = tracker.client.get_run(parent).info.run_name
        raise UsageError(f"search {name} ({parent}) has no fully trained student that learned on its front: nothing to "
                         "train; let the search run longer (rerun it with more --trials) or pass a RUN_ID")
    return max(front, key=lambda r: (r.metrics["val_acc"], -r.metrics["macs"], -r.number))


def dataset_of(tracker: Tracker, search, data_dir: str | None, cache_dir, why: str) -> ImageDataset:
    """The search's dataset (``data_dir`` when it moved), refused unless its fingerprint matches."""
    params = search.data.params
    where = data_dir or params.get("data_dir") or None
    try:
        size = parse_image_size(params["dataset.image_size"]) if params.get("dataset") == "imagefolder" and \
            params.get("dataset.image_size") else None
        data = load_dataset(params["dataset"], where, seed=int(params.get("seed", 0)), cache_dir=cache_dir,
                            val_fraction=float(params.get("dataset.val_fraction", 0.1)), image_size=size)
    except DataError as error:
        raise UsageError(f"{why} needs the search's dataset (pass --data-dir DIR if it moved): {error}") from None
    if data.fingerprint != params.get("dataset.fingerprint"):
        raise UsageError(f"the dataset at {where} is not the one the search used (its fingerprint differs): pass --data-dir "
                         "with the search's data")
    return data
