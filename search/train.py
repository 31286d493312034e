"""``rkd-search train``: the student picked from a search's front, trained again to the end.

    rkd-search train RUN_ID|--best [--epochs 200] [--recipe kd+graph] [--on train+val] [--output DIR] [--register NAME]

A search trains each candidate briefly, to rank them; the student a user ships is trained to the
end. ``train`` takes the trial's architecture and recipe (its ``spec.json`` config), changes what
``--recipe`` says (``recipes.RECIPES``), takes its search's data and teacher (weights digest
checked), stretches the schedule to ``--epochs`` and runs the teacher live on every batch. A long
job: a checkpoint after every epoch under ``OUTPUT/train/NAME``; Ctrl-C, SIGTERM, ``--timeout`` or
kill -9, then the same command, continues to the weights an uninterrupted run gives; a second
``train`` into the same folder is refused while one runs. Its MLflow run (``rkd.role = train``,
linked to the trial and the search) gets per-epoch metrics, test accuracy, teacher agreement, the
int8 accuracy, ``student/`` (``export`` takes it) and an MLflow model (``--register NAME``: alias ``champion``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rkd_search.trainer import (
    EpochReport,
    ImageDataset,
    Teacher,
    TeacherError,
    TrainResult,
    TrainState,
    build_model,
    find_teacher,
    fit,
    prepare_teacher,
)
from rkd_search.trainer.batches import normalize
from rkd_search.trainer.defaults import FINAL_EPOCHS

from . import names
from .errors import UsageError
from .formats.onnx import int8_accuracy
from .recipes import DEFAULT_RECIPE, RECIPES
from .records import TrialState
from .report import EpochBar, Progress
from .setup import check_output_folder
from .stopping import stop_on_signals
from .students import StoredStudent, best_student, dataset_of, get_run, load_student, search_of
from .study import OutputLock
from .tracking import Tracker, schema

ON_CHOICES = ("train", "train+val")
CHECKPOINT = "checkpoint.pt"
ABOUT = "train.json"


@dataclass(frozen=True)
class TrainOptions:
    run_id: str | None
    best: bool = False
    epochs: int = FINAL_EPOCHS
    recipe: str = DEFAULT_RECIPE
    on: str = "train"
    output: Path | None = None
    register: str | None = None
    timeout: float | None = None
    int8: bool = True
    calibration_images: int = 512
    data_dir: str | None = None
    cache_dir: Path | None = None
    device: str | None = None
    progress: bool = True


class _OutOfTime(Exception):
    """``--timeout`` passed: the checkpoint of the last epoch is kept, the rerun continues."""


@dataclass
class Training:
    """What ``run_train`` did: its run, the trained result (None when stopped) and where it stands."""

    run_id: str
    folder: Path
    student: StoredStudent
    result: TrainResult | None = None
    epochs_done: int = 0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    model_uri: str | None = None
    version: str | None = None
    already: bool = False


def check_options(o: TrainOptions) -> None:
    if (o.run_id is None) == (not o.best):
        raise UsageError("pass a trial's RUN_ID or --best (the most accurate learned student of the latest search's front)")
    if o.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {o.epochs}")
    if o.recipe not in RECIPES:
        raise UsageError(f"--recipe {o.recipe!r}: choose one of {', '.join(RECIPES)}")
    if o.on not in ON_CHOICES:
        raise UsageError(f"--on {o.on!r}: choose {' or '.join(ON_CHOICES)}")
    if o.register is not None and not o.register.strip():
        raise UsageError("--register needs a model name, e.g. --register cifar10-student")
    if o.calibration_images < 1:
        raise UsageError("--calibration-images must be at least 1")


def run_train(o: TrainOptions, tracker: Tracker) -> Training:
    """Train the student of ``o.run_id`` (or the best of the latest search) to the end; everything
    a user can get wrong is checked before anything is written."""
    check_options(o)
    run_id = o.run_id or best_student(tracker, str(o.output.resolve()) if o.output else None).run_id
    student = load_student(tracker, run_id)
    if student.trained_again:
        raise UsageError(f"run {run_id} is already a final training (of trial run {student.run.data.tags.get(names.TRIAL_RUN)}): "
                         "pass the trial's run id")
    if student.config is None:
        raise UsageError(f"run {run_id} records no training recipe (made by an older rkd-search): rerun its search")
    search = search_of(tracker, student.run)
    output = Path(o.output or search.data.tags.get(names.OUTPUT) or ".").resolve()
    suffix = "-trainval" if o.on == "train+val" else ""
    folder = output / "train" / f"{student.name}-e{o.epochs}-{o.recipe}{suffix}"
    check_output_folder(folder, "--output")
    data = dataset_of(tracker, search, o.data_dir, o.cache_dir, "rkd-search train")
    if o.on == "train+val":
        data = with_val_in_train(data)
    config = RECIPES[o.recipe].apply(dataclasses.replace(student.config, epochs=o.epochs))
    teacher = teacher_of(tracker, search, data, o.cache_dir)
    lock = OutputLock(folder)
    lock.acquire()  # a second train of this student into this folder is refused here
    try:
        return _train(o, tracker, student, search, data, config, teacher, folder)
    finally:
        lock.release()


def with_val_in_train(data: ImageDataset) -> ImageDataset:
    """The training images and the validation images together, no validation split; the
    normalisation stays the search's (the teacher was fed with it)."""
    empty = data.val_images[:0]
    return dataclasses.replace(data, train_images=torch.cat([data.train_images, data.val_images]),
                               train_labels=torch.cat([data.train_labels, data.val_labels]), val_images=empty,
                               val_labels=data.val_labels[:0], val_source="none: validation images trained on (--on train+val)")


def teacher_of(tracker: Tracker, search, data: ImageDataset, cache_dir) -> Teacher:
    """The search's teacher: the checkpoint its teacher run holds (rkd-search's own), else rebuilt
    from what the run records (a torchvision, timm or TorchScript teacher); its weights digest must
    be the search's."""
    params = search.data.params
    teacher_run = get_run(tracker, params["teacher.run_id"])
    found, why = None, "its teacher run holds no checkpoint"
    with tempfile.TemporaryDirectory() as download:
        try:
            local = Path(tracker.client.download_artifacts(teacher_run.info.run_id, "teacher", download))
            files = sorted(p for p in local.iterdir() if p.is_file())
        except Exception:
            files = []
        for path in files:
            try:
                found = prepare_teacher(find_teacher(str(path), data), data, cache_dir=cache_dir)
                break
            except TeacherError as error:
                why = str(error)
        if found is None:
            found, why = _rebuild_foreign(teacher_run.data.params, data, cache_dir, why)
    if found is None:
        raise UsageError(f"cannot load the search's teacher {params.get('teacher')} ({why}): rkd-search train needs the "
                         "teacher the search distilled from")
    if found.digest != params.get("teacher.digest"):
        raise UsageError(f"the teacher found for the search ({found.name}) is not the one it used (its weights digest differs): "
                         "restore the search's teacher file")
    return found


def _rebuild_foreign(params: dict, data: ImageDataset, cache_dir, why: str) -> tuple[Teacher | None, str]:
    source, arch, path = params.get("teacher.source"), params.get("teacher.arch"), params.get("teacher.checkpoint")
    if source not in ("torchvision", "timm", "torchscript") or not path:
        return None, why
    reference = f"{source}:{arch}={path}" if source != "torchscript" else path
    normalization = None
    if "teacher.mean" in params:
        mean, std = json.loads(params["teacher.mean"]), json.loads(params["teacher.std"])
        normalization = ",".join(map(str, mean)) + "/" + ",".join(map(str, std))
    try:
        taps = params.get("teacher.taps")
        size = int(params["teacher.input_size"]) if "teacher.input_size" in params else None
        return prepare_teacher(find_teacher(reference, data, taps=taps, size=size, normalization=normalization), data,
                               cache_dir=cache_dir), ""
    except (TeacherError, ValueError) as error:
        return None, str(error)


def _train(o: TrainOptions, tracker: Tracker, student: StoredStudent, search, data: ImageDataset, config, teacher: Teacher,
           folder: Path) -> Training:
    key = f"{student.run_id}:{o.epochs}:{o.recipe}:{o.on}:{folder}"
    tags = {names.TRIAL_RUN: student.run_id, names.SEARCH_RUN: search.info.run_id, names.TRAIN_ON: o.on,
            names.TEACHER_RUN_ID: search.data.params.get("teacher.run_id", "")}
    params = {**{k: v for k, v in student.run.data.params.items() if k != "train.epochs"}, "train.epochs": o.epochs,
              "train.on": o.on, "train.images": len(data.train_labels),
              "train.trial_epochs": student.run.data.tags.get(names.EPOCHS, ""), "train.recipe": o.recipe,
              **RECIPES[o.recipe].params(student.config, config)}
    run_id, state = tracker.train_run(key, f"train-{student.name}-e{o.epochs}-{o.recipe}{'-trainval' if o.on != 'train' else ''}",
                                      params, tags)
    training = Training(run_id, folder, student)
    if state == TrialState.COMPLETE:
        training.already = True
        return training
    resume = _resume(folder, key)
    (folder / ABOUT).write_text(json.dumps({"key": key, "run_id": run_id, "trial_run": student.run_id, "epochs": o.epochs,
                                            "recipe": o.recipe, "on": o.on}, indent=2))
    tracker.set_status(run_id, "RUNNING")
    tracker.set_tags(run_id, {names.STATE: TrialState.RUNNING})
    deadline = time.monotonic() + o.timeout if o.timeout else None
    progress = Progress(o.progress)
    start = resume.epoch if resume is not None else 0
    bar = EpochBar(progress, o.epochs, f"train {student.name}")
    if resume is not None:
        bar.resumed(start)
        progress.write(f"resuming {student.name} at epoch {start} of {o.epochs} from {folder / CHECKPOINT}")

    def save(state: TrainState) -> None:
        state.save(folder / CHECKPOINT)
        training.epochs_done = state.epoch

    def report(epoch: EpochReport) -> None:  # after the epoch's checkpoint: a stop here loses nothing
        tracker.log_epoch(run_id, epoch)
        bar.epoch(epoch.epoch, epoch.val_acc)
        if deadline is not None and time.monotonic() > deadline and epoch.epoch < o.epochs:
            raise _OutOfTime()

    training.epochs_done = start
    if resume is not None and resume.history and tracker.last_step(run_id, "epoch.train_loss") < start:
        tracker.log_epoch(run_id, resume.history[-1])  # stopped between its checkpoint and its metrics
    with stop_on_signals():
        try:
            result = fit(config, data, teacher=teacher.model, report=report, device=o.device, resume=resume, checkpoint=save,
                         batch_progress=bar.batch)
        except (KeyboardInterrupt, _OutOfTime) as stop:
            bar.close()
            why = "--timeout" if isinstance(stop, _OutOfTime) else getattr(stop, "reason", "interrupted (Ctrl-C)")
            tracker.set_tags(run_id, {names.STATE: TrialState.PAUSED, names.EPOCHS: training.epochs_done})
            tracker.set_status(run_id, "KILLED")
            progress.write(f"{why}: stopped after {training.epochs_done} of {o.epochs} epochs (checkpoint {folder / CHECKPOINT}); "
                           "rerun the same command to continue")
            if isinstance(stop, _OutOfTime):
                return training
            raise
        except BaseException as error:
            bar.close()
            tracker.set_tags(run_id, {names.STATE: TrialState.FAILED, names.ERROR: f"{type(error).__name__}: {error}"[:5000]})
            tracker.set_status(run_id, "FAILED")
            raise
    bar.close()
    _record(o, tracker, training, result, data, search, config)
    return training


def _resume(folder: Path, key: str) -> TrainState | None:
    path = folder / CHECKPOINT
    if not path.exists():
        return None
    about = folder / ABOUT
    stored = json.loads(about.read_text()).get("key") if about.exists() else None
    if stored != key:
        raise UsageError(f"{folder} holds another training's checkpoint: pass another --output")
    try:
        return TrainState.load(path)
    except ValueError as error:
        raise UsageError(f"{error}: delete it to train from the start") from None


def _record(o: TrainOptions, tracker: Tracker, training: Training, result: TrainResult, data: ImageDataset, search, config) -> None:
    """The finished training: its metrics, the int8 export's accuracy, the student's artifacts, the MLflow model."""
    model = build_model(result.spec)
    model.load_state_dict(result.state_dict)
    model.eval()
    card = schema.student_card(data, search.data.params.get("dataset", data.name))
    metrics = {k: v for k, v in result.metrics().items() if math.isfinite(v)}
    if o.int8:
        accuracy = int8_accuracy(model, result.input_shape, data, card["preprocessing"], o.calibration_images)
        metrics.update(onnx_test_acc=accuracy["onnx"], int8_test_acc=accuracy["onnx_int8"],
                       int8_drop=accuracy["onnx"] - accuracy["onnx_int8"])
    tracker.log_metrics(training.run_id, metrics)
    tracker.log_student(training.run_id, result, {**card, "config": config.to_dict()})
    # two images: torch.export keeps a dimension of size 1 fixed, and the batch must stay free
    example = normalize(data.test_images[:2].cpu(), tuple(data.mean), tuple(data.std)).numpy()
    training.model_uri, training.version = tracker.log_model(training.run_id, model, example, card, o.register)
    tags = {names.STATE: TrialState.COMPLETE, names.EPOCHS: result.epochs_done}
    if o.register:
        tags[names.REGISTERED] = f"{o.register}@champion"
    tracker.set_tags(training.run_id, tags)
    tracker.set_status(training.run_id, "FINISHED")
    training.result, training.metrics, training.epochs_done = result, metrics, result.epochs_done
