"""Where the embedded back-end trains: worker processes (the default) or this process (tests).

A trial that dies natively (a segmentation fault or abort in PyTorch or a library, the kernel's
out-of-memory killer) takes its process with it. The search therefore trains every trial in a
worker process: the driver keeps the study, MLflow and the front, and when a worker dies it fails
that trial with the signal named, starts a new worker and goes on. ``--jobs N`` runs N workers,
so N trials train at once (on one GPU, or on the CPU's cores split between them).

A new process's first workers are forked from it (``fresh_process``): it has imported PyTorch and
run no operation yet, so they start without importing anything (PyTorch's import is seconds of CPU
per search). Every later worker, and every worker of a process that has computed with PyTorch (its
OpenMP thread pool does not survive a fork: the child's first parallel operation hangs) or that may
use CUDA, is forked from a fork server instead (``multiprocessing``'s forkserver, where the platform
has one, else spawned): a process started once per driver that imports PyTorch and the trainer and
never computes, so every worker after its first starts in a fraction of a second, and a library
user's or a benchmark's many searches in one process pay for those imports once.

A worker loads the search's data and teacher targets once, memory-mapped from files the driver
wrote (``WorkerFiles``), then trains one job at a time: it receives the job's config as plain data,
sends an event after every epoch, and sends the result (weights as bytes, written with
``torch.save``: nothing goes through shared memory) or the error. A paused trial's training state
is written by the worker to the job's checkpoint path. Workers ignore SIGINT (the driver decides
how a search stops) and die with the driver (Linux: PR_SET_PDEATHSIG), so a killed search leaves
no worker training alone.

``InProcess`` runs the same jobs in this process, through the same events; the loops' own tests
use it with a stub training function.
"""

from __future__ import annotations

import ctypes
import importlib
import io
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Protocol

from rkd_search.trainer import EpochReport, TrainConfig, TrainResult, TrainState

log = logging.getLogger(__name__)

DEFAULT_TRAIN = "rkd_search.search.objective:train_student"


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


_FRESH: list[bool] = [False]


def fresh_process() -> None:
    """Say that this process has imported PyTorch and computed nothing yet: the next ``prewarm``
    may fork its workers (``rkd-search``'s entry point says so before anything else runs)."""
    _FRESH[0] = True


def _fork_now() -> bool:
    """Whether a worker started now may be forked: a fresh process (``fresh_process``, not yet
    used), on Linux, without a GPU (CUDA, once initialised, does not survive a fork)."""
    if not _FRESH[0] or sys.platform != "linux":
        return False
    import torch

    return not torch.cuda.is_available()


FORKSERVER_PRELOAD = ("rkd_search.search.backends.workers", "rkd_search.search.objective", "torch._dynamo")
"""What the fork server imports once (``torch._dynamo``: PyTorch imports it at a worker's first
optimizer, about 2 CPU-s)."""


def _worker_context():
    """The fork server where the platform has one (Linux, macOS), else spawn: a fresh interpreter."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(FORKSERVER_PRELOAD))  # read when the server starts (once per process)
    return context


def _resolve(reference: str) -> Callable[..., TrainResult]:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _run_job(job: Job, train: Callable[..., TrainResult], data, targets, device, send: Callable[[Event], None]) -> None:
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
            _run_job(job, self.train, self.data, self.targets, self.device, handle_done(self, handle))
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


# -- worker processes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerFiles:
    """What a worker loads once: the data and the teacher targets (memory-mapped), and how to train."""

    data: str
    """An ``ImageDataset.save`` file."""
    targets: str | None
    """A teacher targets folder (``TeacherTargets.compute`` with a cache), or None."""
    target_epochs: int
    device: str
    threads: int
    train: str = DEFAULT_TRAIN
    """``module:function`` with ``train_student``'s signature (tests substitute their own)."""


WORKER_NAME = "rkd-worker"
"""A worker's process name (``ps``, ``top``; Linux): forked workers would otherwise show the
driver's command line."""


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the driver dies (kill -9 included), and name it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, WORKER_NAME.encode())  # PR_SET_NAME
    except (OSError, AttributeError):  # not Linux: the worker ends when its pipe closes
        pass


def worker_main(connection: Connection, parent: int | None) -> None:
    """A worker process: import, receive the ``WorkerFiles`` and load them once, then train the jobs
    the driver sends until it sends None. (Started before the files exist, while the driver trains
    the teacher, so that its imports cost the search nothing.)

    ``parent``: the driver's pid when the driver is this process's parent; None for a fork server's
    child, whose parent is the server (it exits when the driver does, and then this process dies
    too; a driver gone earlier closed the pipe, which ends this process at its first read)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent is not None and os.getppid() != parent:  # the driver died before the line above took effect
        return
    import torch

    from rkd_search.trainer import ImageDataset, TeacherTargets

    try:
        files = connection.recv()
    except EOFError:
        return
    if files is None:
        return

    try:
        torch.set_num_threads(files.threads)
        device = torch.device(files.device)
        data = ImageDataset.load(files.data).to(device)
        targets = TeacherTargets.open(files.targets, files.target_epochs) if files.targets else None
        train = _resolve(files.train)
    except Exception as error:  # the job it is given fails with the reason
        connection.send(("broken", None, (f"the worker could not load the search's data: {type(error).__name__}: {error}",
                                          traceback.format_exc())))
        return

    def send(event: Event) -> None:
        if isinstance(event, Done):
            buffer = io.BytesIO()
            torch.save({"result": event.result.to_dict(), "weights": event.result.state_dict}, buffer)
            connection.send(("done", event.number, buffer.getvalue()))
        elif isinstance(event, Epoch):
            connection.send(("epoch", event.number, event.report.__dict__))

    connection.send(("ready", None, None))
    while True:
        try:
            job = connection.recv()
        except EOFError:  # the driver is gone
            return
        if job is None:
            return
        try:
            _run_job(job, train, data, targets, device, send)
        except (BrokenPipeError, ConnectionResetError):  # the driver is gone (killed): nobody to tell
            return
        except Exception as error:
            connection.send(("failed", job.number, (f"{type(error).__name__}: {error}", traceback.format_exc())))


def describe_exit(exitcode: int | None) -> str:
    """What a worker's exit code says about how it died."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        why = {"SIGSEGV": "a segmentation fault in native code (PyTorch or a library)",
               "SIGABRT": "an abort in native code (PyTorch or a library)",
               "SIGKILL": "killed: the kernel's out-of-memory killer, or kill -9",
               "SIGBUS": "a bus error in native code (often a full /dev/shm)",
               "SIGFPE": "an arithmetic fault in native code"}.get(name, "a signal")
        return f"the trial's worker process died of {name} ({why})"
    return f"the trial's worker process exited unexpectedly (exit code {exitcode})"


@dataclass
class _Worker:
    process: Any
    connection: Connection
    ready: bool = False
    job: Job | None = None


class WorkerPool:
    """``capacity`` worker processes, each training one job at a time; a dead one is replaced.

    ``prewarm`` starts them before the files they load exist (they import meanwhile);
    ``configure`` hands them the files."""

    def __init__(self, files: WorkerFiles | None = None, capacity: int = 1) -> None:
        self.files = files
        self.capacity = capacity
        self.running: dict[int, Job] = {}
        self.context = _worker_context()
        self.workers: list[_Worker] = []

    def prewarm(self) -> "WorkerPool":
        """Start the workers: forked when this process is fresh (``fresh_process``; only this
        once: the process computes next), else from the fork server."""
        fork = _fork_now()
        _FRESH[0] = False
        if fork:
            sys.stdout.flush()  # a forked child must not write the parent's buffered output again
            sys.stderr.flush()
        while len(self.workers) < self.capacity:
            self._start(multiprocessing.get_context("fork") if fork else self.context)
        return self

    def configure(self, files: WorkerFiles) -> None:
        self.files = files
        for worker in list(self.workers):
            try:
                worker.connection.send(files)
            except (BrokenPipeError, OSError):  # died while waiting: replaced when needed
                self.workers.remove(worker)

    def _start(self, context=None, attempts: int = 3) -> _Worker:
        """A new worker. A fork server killed while it forks one (as the out-of-memory killer may)
        breaks that start (EOFError, a refused connection): Python's ``ensure_running`` starts a new
        server on the next try."""
        context = context or self.context
        for attempt in range(1, attempts + 1):
            here, there = context.Pipe()
            parent = None if context.get_start_method() == "forkserver" else os.getpid()
            process = context.Process(target=worker_main, args=(there, parent), daemon=True, name="rkd-search-worker")
            try:
                process.start()
                break
            except (EOFError, ConnectionError, OSError) as error:
                here.close()
                there.close()
                if attempt == attempts:
                    raise
                log.warning("the worker fork server is gone (%s: %s); starting another", type(error).__name__, error)
                time.sleep(0.5 * attempt)
        there.close()
        worker = _Worker(process, here)
        if self.files is not None:
            here.send(self.files)
        self.workers.append(worker)
        return worker

    def submit(self, job: Job) -> None:
        idle = next((w for w in self.workers if w.job is None), None)
        if idle is None:
            if len(self.workers) >= self.capacity:
                raise RuntimeError("every worker is busy")
            idle = self._start()
        try:
            idle.connection.send(job)
        except (BrokenPipeError, OSError):  # it died while idle: replace it
            self.workers.remove(idle)
            idle.process.join(timeout=10)
            idle = self._start()
            idle.connection.send(job)
        idle.job = job
        self.running[job.number] = job

    def wait(self, handle: Callable[[Event], None]) -> None:
        busy = [w for w in self.workers if w.job is not None]
        if not busy:
            return
        ready = wait([w.connection for w in busy])
        for worker in busy:
            if worker.connection not in ready:
                continue
            try:
                kind, number, payload = worker.connection.recv()
            except (EOFError, OSError):
                self._died(worker, handle)
                continue
            if kind == "ready":
                worker.ready = True
            elif kind == "broken":
                job = worker.job
                self._ended(worker)
                self.workers.remove(worker)
                worker.process.join(timeout=10)
                handle(Failed(job.number, payload[0], payload[1]))
            elif kind == "epoch":
                handle(Epoch(number, EpochReport(**payload)))
            elif kind == "done":
                self._ended(worker)
                handle(Done(number, _read_result(payload)))
            elif kind == "failed":
                self._ended(worker)
                handle(Failed(number, payload[0], payload[1]))

    def _ended(self, worker: _Worker) -> None:
        if worker.job is not None:
            self.running.pop(worker.job.number, None)
        worker.job = None

    def _died(self, worker: _Worker, handle: Callable[[Event], None]) -> None:
        worker.process.join(timeout=10)
        job = worker.job
        self.workers.remove(worker)
        worker.connection.close()
        self._ended(worker)
        if job is not None:
            message = describe_exit(worker.process.exitcode)
            handle(Failed(job.number, message, f"{message}; the search started a new worker and went on", crashed=True))

    def close(self) -> None:
        """Stop every worker: finished ones are told to leave, busy ones are terminated."""
        for worker in self.workers:
            try:
                if worker.job is None:
                    worker.connection.send(None)
                    if self.files is None:  # still waiting for its files: one more None ends it
                        worker.connection.send(None)
                else:
                    worker.process.terminate()
            except (OSError, ValueError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.connection.close()
        self.workers.clear()
        self.running.clear()


def _read_result(payload: bytes) -> TrainResult:
    import torch

    stored = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    return TrainResult.from_dict(stored["result"], stored["weights"])
