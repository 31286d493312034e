"""A worker process of the local back-end: it loads the search's data and teacher targets once,
memory-mapped from the files the driver wrote (``SharedFiles``), then trains one job at a time and
sends an event after every epoch and the result (weights as bytes, written with ``torch.save``:
nothing goes through shared memory) or the error.

A trial that dies natively (a segmentation fault or abort in PyTorch or a library, the kernel's
out-of-memory killer) takes its process with it, not the search. Workers ignore SIGINT (the driver
decides how a search stops) and die with the driver (Linux: PR_SET_PDEATHSIG), so a killed search
leaves no worker training alone.

A new process's first workers are forked from it (``fresh_process``): it has imported PyTorch and
run no operation yet, so they start without importing anything (PyTorch's import is seconds of CPU
per search). Every later worker, and every worker of a process that has computed with PyTorch (its
OpenMP thread pool does not survive a fork: the child's first parallel operation hangs) or that may
use CUDA, is forked from a fork server instead (``multiprocessing``'s forkserver, where the platform
has one, else spawned): a process started once per driver that imports PyTorch and the trainer and
never computes, so every worker after its first starts in a fraction of a second.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Callable

from rkd_search.trainer import TrainResult

from .jobs import Done, Epoch, Event, run_job



_FRESH: list[bool] = [False]


def fresh_process() -> None:
    """Say that this process has imported PyTorch and computed nothing yet: the next ``prewarm``
    may fork its workers (``rkd-search``'s entry point says so before anything else runs)."""
    _FRESH[0] = True


def claim_fork() -> bool:
    """Whether the workers started now may be forked: a fresh process (``fresh_process``; only this
    once, since the process computes next), on Linux, without a GPU (CUDA, once initialised, does
    not survive a fork)."""
    fresh, _FRESH[0] = _FRESH[0], False
    if not fresh or sys.platform != "linux":
        return False
    import torch

    return not torch.cuda.is_available()


FORKSERVER_PRELOAD = ("rkd_search.search.backends.local.worker", "rkd_search.search.objective", "torch._dynamo")
"""What the fork server imports once (``torch._dynamo``: PyTorch imports it at a worker's first
optimizer, about 2 CPU-s)."""


def worker_context():
    """The fork server where the platform has one (Linux, macOS), else spawn: a fresh interpreter."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(FORKSERVER_PRELOAD))  # read when the server starts (once per process)
    return context


def _resolve(reference: str) -> Callable[..., TrainResult]:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


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
    """A worker process: import, receive the ``SharedFiles`` and load them once, then train the jobs
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
            connection.send(("done", event.number, event.result.to_bytes()))
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
            run_job(job, train, data, targets, device, send)
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
