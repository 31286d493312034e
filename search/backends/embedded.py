"""The embedded back-end: Optuna's ask-and-tell in this process, the training in worker processes.

Ask-and-tell keeps every state change explicit, through the trial lifecycle: an over-limit
student is told to the sampler with its constraints and never trained; a failure marks the trial
FAIL and another takes its place; the study lives in a journal file under the output folder, so
rerunning the same command runs only what is still missing. Up to ``--jobs`` trials train at once,
each in its own worker process (``workers``), so a native crash fails one trial, not the search.

Multi-fidelity (``LoopOptions.rungs`` longer than one) is asynchronous successive halving with the
promotion rule of ``fidelity``: each new trial trains to the first rung and pauses there (its
training state saved under ``OUTPUT/checkpoints``); the next free worker takes the highest
promotable paused trial, continued from its checkpoint to the next rung, else a new trial. A
paused trial that can no longer be promoted, or not within the compute left, is pruned.

Whatever stops the process (Ctrl-C, SIGTERM, kill -9), the study keeps its running trials
RUNNING: the output folder's lock guarantees no other process owns them, so the next run resumes
them with the same parameters, from their last checkpoint when they have one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import names
from ..errors import SearchError
from ..fidelity import RungTable
from ..loop import TrialLoop
from .workers import Done, Epoch, Event, Executor, Failed, InProcess, Job, WorkerPool

log = logging.getLogger(__name__)


def connect(setup) -> None:
    """Nothing to connect to: the embedded back-end runs here."""
    return None


def executor(loop: TrialLoop) -> Executor:
    if loop.workers is None:
        return InProcess(loop.train, loop.data, loop.targets, loop.options.device)
    pool = loop.pool if loop.pool is not None else WorkerPool(capacity=loop.options.jobs)
    pool.configure(loop.workers)
    return pool


def checkpoint_path(loop: TrialLoop, number: int) -> Path | None:
    folder = loop.options.checkpoints
    return folder / f"trial-{number:05d}.pt" if folder is not None else None


def _drop_checkpoint(loop: TrialLoop, number: int) -> None:
    path = checkpoint_path(loop, number)
    if path is not None:
        path.unlink(missing_ok=True)


@dataclass
class EmbeddedLoop:
    """The state of one run of the loop: the rung table and the failures in a row."""

    loop: TrialLoop
    table: RungTable
    pool: Executor
    failures: int = 0
    last_error: str = ""
    trained: dict[int, int] = field(default_factory=dict)
    """Running trial -> the epochs it has trained (its last report, or where it resumed from)."""

    @property
    def lifecycle(self):
        return self.loop.lifecycle

    # -- choosing the next job ----------------------------------------------------------------------
    def job(self, number: int, until: int, why: str, resume: bool) -> Job:
        plan = self.lifecycle.plan_of(number)
        path = checkpoint_path(self.loop, number)
        reached = self.table.reached.get(number, 0)
        return Job(number, plan.config.to_dict(), until, resume=str(path) if resume and reached and path else None,
                   checkpoint=str(path) if path else None, why=why)

    def next_job(self) -> Job | None:
        """Resume what a stopped process left in flight, else promote, else start a new trial."""
        options = self.loop.options
        running = set(self.pool.running)
        for number, target in sorted(self.table.targets.items()):  # in flight when the last process stopped
            if number in running or target <= self.table.reached.get(number, 0):
                continue
            plan = self.lifecycle.plan_of(number)
            if not plan.feasible:  # stopped between the sampler's ask and tell
                self.lifecycle.infeasible(number, plan)
                self.table.forget(number)
                continue
            return self.job(number, target, "resumed", resume=True)
        promotion = self.table.promotion(options.eta, self.loop.objective.limits.budget_macs,
                                         self.loop.recorder.front.learned_threshold, running, finishing=self.finishing)
        if promotion is not None:
            number, until = promotion
            return self.job(number, until, "promoted", resume=True)
        while self.table.started < options.trials and not self.compute_short:
            number, plan = self.lifecycle.ask()
            self.table.started += 1
            if plan.feasible:
                return self.job(number, options.rungs[0], "new", resume=False)
            self.lifecycle.infeasible(number, plan)
        return None

    @property
    def committed_epochs(self) -> int:
        """Student-epochs trained, plus those the running trials will still train before they report:
        with several jobs, a budget counted on trained epochs alone started trials for compute
        already promised (``--jobs 8``, ``--max-student-epochs 96``: 120 trained)."""
        running = sum(max(0, self.table.targets.get(n, 0) - self.trained.get(n, 0)) for n in self.pool.running)
        return self.loop.recorder.student_epochs + running

    @property
    def out_of_time(self) -> bool:
        """The deadline passed or the compute budget is spent or promised: start nothing more."""
        return self.loop.options.out_of_time(self.committed_epochs)

    @property
    def compute_short(self) -> bool:
        """The compute budget left could not train one more student fully: start no new trial."""
        left = self.loop.options.compute_left(self.committed_epochs)
        return left is not None and left < self.loop.options.epochs

    @property
    def finishing(self) -> bool:
        """No new trial will start: the rungs promote with ceil so the best paused trials finish."""
        return self.table.started >= self.loop.options.trials or self.compute_short

    # -- pruning --------------------------------------------------------------------------------------
    def prune_hopeless(self) -> None:
        options = self.loop.options
        if not options.multi_fidelity:
            return
        for number in self.table.hopeless(options.eta):
            self.prune(number, "dominated at its rung")
        left = options.compute_left(self.committed_epochs)
        if left is not None:  # a compute budget: a paused trial that cannot finish within it stops now
            for number in self.table.paused(self.pool.running):
                if self.table.epochs_to_finish(number) > left:
                    self.prune(number, "cannot finish within the compute left")

    def prune(self, number: int, why: str) -> None:
        self.lifecycle.prune(number, why)
        self.table.forget(number)
        _drop_checkpoint(self.loop, number)

    # -- events -----------------------------------------------------------------------------------------
    def start(self, job: Job) -> None:
        plan = self.lifecycle.plan_of(job.number)
        self.lifecycle.start(job.number, plan, job.until)
        self.trained[job.number] = self.table.reached.get(job.number, 0)
        self.table.train_to(job.number, job.until)
        self.pool.submit(job)

    def handle(self, event: Event) -> None:
        if isinstance(event, Epoch):
            self.trained[event.number] = event.report.epoch
            self.lifecycle.epoch(event.number, event.report)
        elif isinstance(event, Done):
            self.done(event)
        elif isinstance(event, Failed):
            self.failed(event)

    def done(self, event: Done) -> None:
        number, result = event.number, event.result
        self.failures = 0
        self.trained.pop(number, None)  # not running any more (a paused trial resumes from table.reached)
        macs = float(self.lifecycle.open[number].plan.ops.macs)
        self.table.record(number, result.epochs_done, result.val_acc, macs)
        if result.paused:
            self.lifecycle.pause(number, result)
        else:
            self.lifecycle.finish(number, result)
            self.table.forget(number)
            _drop_checkpoint(self.loop, number)

    def failed(self, event: Failed) -> None:
        number = event.number
        self.trained.pop(number, None)
        name = self.lifecycle.open[number].plan.config.student.name
        epochs_done = self.table.reached.get(number, 0)
        self.lifecycle.fail(number, event.details, "crash" if event.crashed else "error", epochs_done)
        self.table.forget(number)
        self.table.started -= 1  # a failed trial does not count towards --trials: another one is sampled
        _drop_checkpoint(self.loop, number)
        self.failures += 1
        self.last_error = event.message
        self.loop.recorder.progress.write(f"trial {number} ({name}) failed: {event.message}")
        if self.failures >= self.loop.options.max_consecutive_failures:
            raise SearchError(f"{self.failures} trials in a row failed, the last with {event.message}; "
                              f"see the {names.ERROR} tags in MLflow")

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> bool:
        while True:
            self.prune_hopeless()
            while len(self.pool.running) < self.pool.capacity and not self.out_of_time:
                job = self.next_job()
                if job is None:
                    break
                self.start(job)
            if not self.pool.running:
                break
            self.pool.wait(self.handle)
        if self.out_of_time or (self.compute_short and self.table.started < self.loop.options.trials):
            return False  # stopped by the deadline or the compute budget: paused trials stay for a rerun
        for number in sorted(self.table.paused()):  # nothing can be promoted any more
            self.prune(number, "not promoted")
        return True


def run_trials(loop: TrialLoop, session=None) -> bool:
    """Run the study until ``--trials`` trials finished; False when stopped by the deadline (or the
    compute budget) first. Ctrl-C or SIGTERM: the running trials are marked interrupted (kept
    RUNNING in the study for the next run) and the exception goes on."""
    pool = executor(loop)
    state = EmbeddedLoop(loop, loop.lifecycle.rung_table(loop.options.trials), pool)
    try:
        return state.run()
    except KeyboardInterrupt as stop:
        loop.lifecycle.interrupt_all(getattr(stop, "reason", "interrupted (Ctrl-C)"))
        raise
    except BaseException as error:  # the search failed under the other running trials: they resume next time
        loop.lifecycle.interrupt_all(f"the search stopped ({type(error).__name__})", "stopped")
        raise
    finally:
        if pool is not loop.pool:  # a pool the driver started is the driver's to close
            pool.close()
