"""What a back-end's trial loop receives: the trial lifecycle (study, recorder), the objective, the
shared data and teacher targets, the ``LoopOptions`` it reads, and where training runs. A loop never
sees the search that built it."""

from __future__ import annotations

from dataclasses import dataclass, field

from rkd_search.trainer import ImageDataset, TeacherTargets

from .backends.workers import WorkerFiles, WorkerPool
from .lifecycle import Lifecycle
from .objective import LoopOptions, Objective, Train, train_student
from .recorder import Recorder


@dataclass
class TrialLoop:
    lifecycle: Lifecycle
    objective: Objective
    data: ImageDataset
    targets: TeacherTargets | None
    options: LoopOptions
    train: Train = field(default=train_student)
    """The training function of in-process runs (the loops' tests pass a stub)."""
    workers: WorkerFiles | None = None
    """Train in worker processes loading these files; None: in this process, with ``train``."""
    pool: WorkerPool | None = None
    """Worker processes started early (``WorkerPool.prewarm``) for ``workers``."""

    @property
    def study(self):
        return self.lifecycle.study

    @property
    def recorder(self) -> Recorder:
        return self.lifecycle.recorder
