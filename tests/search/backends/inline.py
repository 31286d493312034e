"""A back-end of a few dozen lines, written against the seam only (``search.backends``' docstring):
every trial trains here, one after another, through the shared scheduler and the trial lifecycle.
The test registers it and runs a whole search through the registry (``--backend inline``)."""

from __future__ import annotations

from rkd_search.search.scheduling import Scheduler

CALLS: list[str] = []


def check(options) -> None:
    CALLS.append("check")


def prepare(options) -> None:
    CALLS.append("prepare")


def connect(setup, prepared) -> str:
    CALLS.append("connect")
    return "session"


def run_trials(loop, session) -> bool:
    assert session == "session"
    lifecycle, scheduler = loop.lifecycle, Scheduler.for_loop(loop.lifecycle, loop.options)
    while (work := scheduler.next_work(set())) is not None:
        plan = lifecycle.plan_of(work.number)
        lifecycle.start(work.number, plan, work.until)
        scheduler.started(work.number, work.until)
        result = loop.train(plan.config, loop.data, loop.targets, lambda report: lifecycle.epoch(work.number, report),
                            loop.options.device, until=work.until)
        scheduler.reached(work.number, result.epochs_done, result.val_acc, float(plan.ops.macs))
        lifecycle.finish(work.number, result)
        scheduler.ended(work.number)
    CALLS.append("run_trials")
    return True


def close(session) -> None:
    CALLS.append("close")
