"""Train one student by (relational) knowledge distillation: data, models, losses, teacher, loop.

Knows nothing of Optuna, Ray or MLflow: ``fit`` takes a plain ``TrainConfig`` and a report
callback and returns a ``TrainResult``.
"""

from . import defaults
from .checkpoint import TeacherError, check_teacher_fits, load_checkpoint, save_checkpoint, weights_digest
from .config import (
    COMPILE_MODES,
    PRECISIONS,
    REDUCTIONS,
    SCHEDULES,
    SIMILARITIES,
    STAGES,
    LossConfig,
    TrainConfig,
)
from .results import EpochReport, TrainResult, TrainState
from .data import DATASETS, DataError, ImageDataset, dataset_from_tensors, default_cache_dir, load_dataset
from .fit import fit
from .metrics import accuracy
from ._device import resolve_device
from .models import ModelSpec, build_model
from .ops import OpsCount, count_ops, count_spec_ops
from .targets import LiveTeacher, TeacherTargets
from .teacher import Teacher, TeacherSource, find_teacher, prepare_teacher, train_teacher

__all__ = [
    "accuracy",
    "resolve_device",
    "defaults",
    "DATASETS",
    "COMPILE_MODES",
    "PRECISIONS",
    "REDUCTIONS",
    "SCHEDULES",
    "SIMILARITIES",
    "STAGES",
    "DataError",
    "EpochReport",
    "ImageDataset",
    "LiveTeacher",
    "LossConfig",
    "ModelSpec",
    "OpsCount",
    "Teacher",
    "TeacherError",
    "TeacherSource",
    "TeacherTargets",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_model",
    "check_teacher_fits",
    "count_ops",
    "count_spec_ops",
    "dataset_from_tensors",
    "default_cache_dir",
    "find_teacher",
    "fit",
    "load_checkpoint",
    "load_dataset",
    "prepare_teacher",
    "save_checkpoint",
    "train_teacher",
    "weights_digest",
]
