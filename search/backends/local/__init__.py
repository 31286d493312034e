"""The local back-end (``--backend optuna``, the default): Optuna's ask-and-tell in the search's
process, the training in worker processes on this machine.

Ask-and-tell keeps every state change explicit, through the trial lifecycle: an over-limit
student is told to the sampler with its constraints and never trained; a failure marks the trial
FAIL and another takes its place; the study lives in a journal file under the output folder, so
rerunning the same command runs only what is still missing. Up to ``--jobs`` trials train at once,
each in its own worker process (``worker``, ``pool``), so a native crash fails one trial, not the
search. What to run next (a trial left running, a promotion, a new trial) and when to stop is the
shared ``scheduling.Scheduler``'s; this module turns its answers into jobs.

Multi-fidelity: each new trial trains to the first rung and pauses there (its training state saved
under ``OUTPUT/checkpoints``); the next free worker takes the highest promotable paused trial,
continued from its checkpoint to the next rung, else a new trial. Whatever stops the process
(Ctrl-C, SIGTERM, kill -9), the study keeps its running trials RUNNING: the output folder's lock
guarantees no other process owns them, so the next run resumes them with the same parameters,
from their last checkpoint when they have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...scheduling import Scheduler, Work
from ...trial_loop import TrialLoop
from .jobs import Done, Epoch, Event, Executor, Failed, InProcess, Job
from .pool import WorkerPool


def check(options) -> None:
    """Nothing beyond the option's own check (``--jobs`` between 1 and 256)."""


def prepare(options) -> WorkerPool:
    """The workers start first, before this process computes anything (then they are forked from it:
    see ``worker.fresh_process``); they wait for the search's files."""
    return WorkerPool(capacity=options.jobs).prewarm()


def connect(setup, prepared: WorkerPool | None = None) -> WorkerPool | None:
    """Nothing to connect to: the trials run here, on the pool ``prepare`` started."""
    return prepared


def close(session: WorkerPool | None) -> None:
    if session is not None:
        session.close()


def executor(loop: TrialLoop, pool: WorkerPool | None) -> Executor:
    if loop.files is None:
        return InProcess(loop.train, loop.data, loop.targets, loop.options.device)
    pool = pool if pool is not None else WorkerPool(capacity=loop.options.jobs)
    pool.configure(loop.files)
    return pool


@dataclass
class Runner:
    """One run of the loop: the scheduler's work as jobs on the executor, their events back to the lifecycle."""

    loop: TrialLoop
    scheduler: Scheduler
    pool: Executor

    @property
    def lifecycle(self):
        return self.loop.lifecycle

    def checkpoint(self, number: int) -> Path | None:
        folder = self.loop.options.checkpoints
        return folder / f"trial-{number:05d}.pt" if folder is not None else None

    def drop_checkpoint(self, number: int) -> None:
        path = self.checkpoint(number)
        if path is not None:
            path.unlink(missing_ok=True)

    def job(self, work: Work) -> Job:
        plan = self.lifecycle.plan_of(work.number)
        path = self.checkpoint(work.number)
        resume = work.resume and self.scheduler.table.reached.get(work.number, 0) and path
        return Job(work.number, plan.config.to_dict(), work.until, resume=str(path) if resume else None,
                   checkpoint=str(path) if path else None, why=work.why)

    def start(self, work: Work) -> None:
        plan = self.lifecycle.plan_of(work.number)
        self.lifecycle.start(work.number, plan, work.until)
        job = self.job(work)
        self.scheduler.started(work.number, work.until)
        self.pool.submit(job)

    def prune(self, number: int, why: str) -> None:
        self.lifecycle.prune(number, why)
        self.scheduler.ended(number)
        self.drop_checkpoint(number)

    def handle(self, event: Event) -> None:
        number = event.number
        if isinstance(event, Epoch):
            self.scheduler.epoch(number, event.report.epoch)
            self.lifecycle.epoch(number, event.report)
        elif isinstance(event, Done):
            result = event.result
            self.scheduler.reached(number, result.epochs_done, result.val_acc, float(self.lifecycle.open[number].plan.ops.macs))
            if result.paused:
                self.lifecycle.pause(number, result)
            else:
                self.lifecycle.finish(number, result)
                self.scheduler.ended(number)
                self.drop_checkpoint(number)
        elif isinstance(event, Failed):
            name = self.lifecycle.open[number].plan.config.student.name
            self.lifecycle.fail(number, event.details, "crash" if event.crashed else "error",
                                self.scheduler.table.reached.get(number, 0))
            self.drop_checkpoint(number)
            self.loop.recorder.progress.write(f"trial {number} ({name}) failed: {event.message}")
            self.scheduler.failed(number, event.message)

    def run(self) -> bool:
        running = lambda: set(self.pool.running)  # noqa: E731
        while True:
            for number, why in self.scheduler.hopeless(running()):
                self.prune(number, why)
            while len(self.pool.running) < self.pool.capacity and not self.scheduler.out_of_time(running()):
                work = self.scheduler.next_work(running())
                if work is None:
                    break
                self.start(work)
            if not self.pool.running:
                break
            self.pool.wait(self.handle)
        if self.scheduler.stopped_early(running()):
            return False  # stopped by the deadline or the compute budget: paused trials stay for a rerun
        for number in sorted(self.scheduler.table.paused()):  # nothing can be promoted any more
            self.prune(number, "not promoted")
        return True


def run_trials(loop: TrialLoop, session: WorkerPool | None = None) -> bool:
    """Run the study until ``--trials`` trials finished; False when stopped by the deadline (or the
    compute budget) first. Ctrl-C or SIGTERM: the running trials are marked interrupted (kept
    RUNNING in the study for the next run) and the exception goes on."""
    pool = executor(loop, session)
    runner = Runner(loop, Scheduler.for_loop(loop.lifecycle, loop.options), pool)
    try:
        return runner.run()
    except KeyboardInterrupt as stop:
        loop.lifecycle.interrupt_all(getattr(stop, "reason", "interrupted (Ctrl-C)"))
        raise
    except BaseException as error:  # the search failed under the other running trials: they resume next time
        loop.lifecycle.interrupt_all(f"the search stopped ({type(error).__name__})", "stopped")
        raise
    finally:
        if pool is not session:  # a pool the driver started (``prepare``) is closed by ``close``
            pool.close()


__all__ = ["Runner", "WorkerPool", "check", "close", "connect", "prepare", "run_trials"]
