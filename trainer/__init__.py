"""Train one student by (relational) knowledge distillation: data, models, losses, teacher, loop.

Knows nothing of Optuna, Ray or MLflow: ``fit`` takes a plain ``TrainConfig`` and a report
callback and returns a ``TrainResult``.
"""

from .config import EpochReport, LossConfig, TrainConfig, TrainResult
from .data import DATASETS, DataError, ImageDataset, load_dataset
from .loop import fit
from .models import ModelSpec, build_model
from .ops import OpsCount, count_ops, count_spec_ops
from .targets import LiveTeacher, TeacherTargets
from .teacher import TeacherError, check_teacher_fits, load_checkpoint, save_checkpoint, train_teacher

__all__ = [
    "DATASETS",
    "DataError",
    "EpochReport",
    "ImageDataset",
    "LiveTeacher",
    "LossConfig",
    "ModelSpec",
    "OpsCount",
    "TeacherError",
    "TeacherTargets",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "check_teacher_fits",
    "count_ops",
    "count_spec_ops",
    "fit",
    "load_checkpoint",
    "load_dataset",
    "save_checkpoint",
    "train_teacher",
]
