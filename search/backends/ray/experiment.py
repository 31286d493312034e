"""The Ray back-end's experiment: the search's missing trials as one Tune experiment."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

from ... import names
from ...errors import SearchError
from ...lifecycle import finished_trials, study_storage
from ...trial_loop import TrialLoop
from ...objective import DIRECTIONS, OBJECTIVES
from ...study import STUDY_NAME
from .cluster import RaySession, trial_resources
from .tune import TuneEvents, lifecycle_search, pareto_rung_scheduler, train_trial

log = logging.getLogger(__name__)


@dataclass
class TunePieces:
    """What a Tune experiment of the loop is made of; ``run_trials`` hands them to a Tuner, the
    back-end's own tests drive them in-process."""

    searcher: Any
    scheduler: Any
    events: TuneEvents
    parameters: dict[str, Any]
    """``train_trial``'s shared arguments (data, targets, train), for ``tune.with_parameters``."""
    remaining: int


def tune_pieces(loop: TrialLoop, max_concurrent: int | None = None) -> TunePieces:
    """The searcher (OptunaSearch over the loop's study, trials from the lifecycle), the scheduler
    (the promotion rule with multi-fidelity), the callback and the trainable's shared arguments."""
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    lifecycle = loop.lifecycle

    def define(captor) -> dict[str, Any]:
        number = captor.ot_trial.number
        plan = lifecycle.plan_of(number)
        return {"rkd": {"number": number, "feasible": plan.feasible, "macs": plan.ops.macs, "config": plan.config.to_dict()}}

    searcher = lifecycle_search(
        lifecycle, deadline=loop.options.deadline, space=define, metric=list(OBJECTIVES),
        mode=["max" if d == "maximize" else "min" for d in DIRECTIONS],
        sampler=loop.study.sampler, storage=study_storage(loop.study), study_name=STUDY_NAME,
    )
    if max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    scheduler = FIFOScheduler()
    if loop.options.multi_fidelity:
        table = lifecycle.rung_table(loop.options.trials)
        scheduler = pareto_rung_scheduler(table, loop.options.eta, loop.objective.limits.budget_macs,
                                          loop.recorder.front.learned_threshold)
    parameters = {"data": loop.data.to("cpu"), "targets": loop.targets.materialize() if loop.targets else None, "train": loop.train}
    return TunePieces(searcher, scheduler, TuneEvents(lifecycle, loop.options.rungs), parameters,
                      loop.options.trials - finished_trials(loop.study))


def run_trials(loop: TrialLoop, session: RaySession) -> bool:
    """Run the missing trials of the study as a Tune experiment; False when stopped by the deadline."""
    import ray
    from ray import tune

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C raises at once; the running trials are marked
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output prints even at verbose=0; ours is the bar
    pieces = tune_pieces(loop, session.max_concurrent)
    if pieces.remaining <= 0:
        return True
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, **pieces.parameters), trial_resources(session)),
        # reuse_actors: the next trial runs in the finished one's actor (same resources), not in a new
        # process that imports torch again; measured 1.41 -> 0.99 of the embedded back-end's wall time
        # (bench/ray_overhead.py). A trial that does not stop within 2 s gets a fresh actor.
        tune_config=tune.TuneConfig(search_alg=pieces.searcher, scheduler=pieces.scheduler, num_samples=pieces.remaining,
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=session.storage, name=f"rkd-search-{uuid.uuid4().hex[:8]}", verbose=0,
                                  callbacks=[pieces.events.callback], log_to_file=True),
    )
    loop.recorder.tracker.set_tags(loop.recorder.parent_id, {names.RAY_STORAGE: session.storage,
                                                             names.RAY_NODES: len([n for n in ray.nodes() if n.get("Alive")])})
    lifecycle = loop.lifecycle
    try:
        tuner.fit()
    except KeyboardInterrupt as stop:
        lifecycle.interrupt_all(getattr(stop, "reason", "interrupted (Ctrl-C)"))
        raise
    except Exception as error:
        lifecycle.interrupt_all(f"the Ray search stopped: {type(error).__name__}: {error}", "error")
        raise SearchError(f"the Ray search stopped: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from None
    if lifecycle.open:  # Tune ended without completing some trials (a stopped cluster, say)
        log.warning("%d trials ended without a result; a rerun runs them again", len(lifecycle.open))
        lifecycle.interrupt_all("Tune ended before the trial finished", "error")
    return finished_trials(loop.study) >= loop.options.trials
