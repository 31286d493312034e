"""What the local back-end's trainings exchange: a job (train trial N to epoch E), the events it sends
back (an epoch, done, failed), and how a job runs, in a worker process or, for the loops' own tests
with a stub training function, in this process (``InProcess``)."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from rkd_search.trainer import EpochReport, TrainConfig, TrainResult, TrainState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """Train trial ``number`` to epoch ``until``, from ``resume`` (a checkpoint file) or from scratch.

    A job that stops before the last epoch writes its training state to ``checkpoint``."""

    number: int
    config: dict[str, Any]
    until: int
    resume: str | None = None
    checkpoint: str | None = None
    why: str = "new"


@dataclass(frozen=True)
class Epoch:
    number: int
    report: EpochReport


@dataclass(frozen=True)
class Done:
    number: int
    result: TrainResult
    """Paused (``result.paused``) when the job stopped at a rung; its state is in the checkpoint."""


@dataclass(frozen=True)
class Failed:
    number: int
    message: str
    """One line: what went wrong."""
    details: str
    """The traceback, or what is known of a native crash."""
    crashed: bool = False
    """The worker process died (a native crash, or killed)."""


Event = Epoch | Done | Failed


class Executor(Protocol):
    capacity: int
    running: dict[int, Job]

    def submit(self, job: Job) -> None: ...

    def wait(self, handle: Callable[[Event], None]) -> None:
        """Block until at least one job produced an event; hand every event to ``handle``."""

    def close(self) -> None: ...


def run_job(job: Job, train: Callable[..., TrainResult], data, targets, device, send: Callable[[Event], None]) -> None:
    config = TrainConfig.from_dict(job.config)
    resume = None
    if job.resume is not None and Path(job.resume).exists():
        try:
            resume = TrainState.load(job.resume)
        except ValueError as error:  # a damaged checkpoint: trained again from scratch (same seed, same weights)
            log.warning("%s; trial %d is trained again from scratch", error, job.number)

    def report(epoch_report: EpochReport) -> bool:
        send(Epoch(job.number, epoch_report))
        return False

    result = train(config, data, targets, report, device, resume=resume, until=job.until)
    if result.paused and job.checkpoint is not None:
        result.state.save(job.checkpoint)
    send(Done(job.number, result))


# -- this process ---------------------------------------------------------------------------------------

@dataclass
class InProcess:
    """Runs each job here, one at a time, when ``wait`` is called."""

    train: Callable[..., TrainResult]
    data: Any
    targets: Any
    device: Any = None
    capacity: int = 1
    running: dict[int, Job] = field(default_factory=dict)

    def submit(self, job: Job) -> None:
        self.running[job.number] = job

    def wait(self, handle: Callable[[Event], None]) -> None:
        number, job = next(iter(self.running.items()))
        try:
            run_job(job, self.train, self.data, self.targets, self.device, handle_done(self, handle))
        except KeyboardInterrupt:
            raise
        except Exception as error:
            self.running.pop(number, None)
            handle(Failed(number, f"{type(error).__name__}: {error}", traceback.format_exc()))

    def close(self) -> None:
        self.running.clear()


def handle_done(executor, handle: Callable[[Event], None]) -> Callable[[Event], None]:
    """``handle``, which first frees the job's slot when the event ends it."""

    def forward(event: Event) -> None:
        if isinstance(event, (Done, Failed)):
            executor.running.pop(event.number, None)
        handle(event)

    return forward
