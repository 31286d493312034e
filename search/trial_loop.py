"""What a back-end's trial loop receives: the trial lifecycle (study, recorder), the objective, the
shared data and teacher targets, the ``LoopOptions`` it reads, and what worker processes load. A
loop never sees the search that built it, and this module knows no back-end."""

from __future__ import annotations

from dataclasses import dataclass, field

from rkd_search.trainer import ImageDataset, TeacherTargets

from .lifecycle import Lifecycle
from .objective import LoopOptions, Objective, Train, train_student
from .recorder import Recorder

DEFAULT_TRAIN = "rkd_search.search.objective:train_student"


@dataclass(frozen=True)
class SharedFiles:
    """What a worker process loads once: the data and the teacher targets (memory-mapped), and how to train."""

    data: str
    """An ``ImageDataset.save`` file."""
    targets: str | None
    """A teacher targets folder (``TeacherTargets.compute`` with a cache), or None."""
    target_epochs: int
    device: str
    threads: int
    train: str = DEFAULT_TRAIN
    """``module:function`` with ``train_student``'s signature (tests substitute their own)."""


@dataclass
class TrialLoop:
    lifecycle: Lifecycle
    objective: Objective
    data: ImageDataset
    targets: TeacherTargets | None
    options: LoopOptions
    train: Train = field(default=train_student)
    """The training function of in-process runs (the loops' tests pass a stub)."""
    files: SharedFiles | None = None
    """What worker processes load; None: a back-end trains in this process, with ``train``."""

    @property
    def study(self):
        return self.lifecycle.study

    @property
    def recorder(self) -> Recorder:
        return self.lifecycle.recorder
