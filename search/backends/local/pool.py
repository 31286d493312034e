"""``capacity`` worker processes of the local back-end, each training one job at a time; a dead one is
replaced (its job fails with the signal named), from the fork server, itself replaced when it is gone."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from rkd_search.trainer import EpochReport, TrainResult

from .jobs import Done, Epoch, Event, Failed, Job
from ...trial_loop import SharedFiles
from .worker import WORKER_NAME, claim_fork, describe_exit, worker_context, worker_main

log = logging.getLogger(__name__)


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

    def __init__(self, files: SharedFiles | None = None, capacity: int = 1) -> None:
        self.files = files
        self.capacity = capacity
        self.running: dict[int, Job] = {}
        self.context = worker_context()
        self.workers: list[_Worker] = []

    def prewarm(self) -> "WorkerPool":
        """Start the workers: forked when this process is fresh (``fresh_process``; only this
        once: the process computes next), else from the fork server."""
        fork = claim_fork()
        if fork:
            sys.stdout.flush()  # a forked child must not write the parent's buffered output again
            sys.stderr.flush()
        while len(self.workers) < self.capacity:
            self._start(multiprocessing.get_context("fork") if fork else self.context)
        return self

    def configure(self, files: SharedFiles) -> None:
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
            process = context.Process(target=worker_main, args=(there, parent), daemon=True, name=WORKER_NAME)
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
                handle(Done(number, TrainResult.from_bytes(payload)))
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
