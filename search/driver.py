"""A search from flags to front: check, prepare the back-end, validate, start once, run the trials, mark the front.

    run_search(options)
      -> options.check, backend.check      the flags alone (bad input: one line, exit 2)
      -> backend.prepare                   what starts before the search computes (the local back-end's workers)
      -> setup.validate                    everything a user can get wrong; nothing created yet (exit 2)
      -> backend.connect                   Ray joins or starts its cluster; the local back-end has its workers
      -> start                             the output folder's lock, teacher, teacher targets, study, parent run
      -> trial_loop                        the objective, the trial lifecycle and the files workers load
      -> backend.run_trials                the back-end's loop over the lifecycle
      -> finish                            the front tagged in MLflow, CSV, plot, summary

The driver knows the back-ends only through their registry (``backends.get_backend``) and the
``TrialLoop`` it hands them. SIGTERM and SIGHUP stop a search as Ctrl-C does (``stopping``): the
running trials are marked, the front of what finished is written, and the rerun resumes. A disk
that cannot be written stops it the same way, with the reason.
"""

from __future__ import annotations

import contextlib
import logging

from . import names
from .backends import get_backend
from .budget import UNIT_NOTE
from .errors import SearchError, cannot_write
from .lifecycle import finished_trials
from .options import SearchOptions, check
from .records import TrialRecord, TrialState
from .report import Progress, front_table, noise_note
from .setup import validate
from .start import SearchRun, announce, start, trial_loop, where_results_go
from .stopping import stop_on_signals
from .study import OutputLock

log = logging.getLogger(__name__)


def run_search(options: SearchOptions) -> list[TrialRecord]:
    check(options)
    backend = get_backend(options.backend)
    backend.check(options)
    prepared = backend.prepare(options)
    session = prepared
    progress = Progress(options.progress)
    try:
        setup = validate(options, progress=_decoding_bar(progress))
    except BaseException:
        backend.close(prepared)
        raise
    lock = OutputLock(setup.output)
    run: SearchRun | None = None
    with stop_on_signals():
        try:
            session = backend.connect(setup, prepared)
            lock.acquire()  # a second search on this output folder is refused here, before any write
            where_results_go(setup, progress)
            run = start(setup, progress)
            announce(run, progress)
            completed = backend.run_trials(trial_loop(run), session)
            return finish(run, progress, completed)
        except KeyboardInterrupt as stop:
            progress.close()
            if run is not None:
                run.tracker.end_search(run.parent_id, "KILLED")
            done = finished_trials(run.study) if run is not None else 0
            progress.write(f"\n{getattr(stop, 'reason', 'interrupted')} after {done} of {options.trials} trials: rerun the same "
                           "command to resume")
            raise
        except Exception as error:
            progress.close()
            why = cannot_write(error)
            if run is not None:
                with contextlib.suppress(Exception):  # the store may be what cannot be written
                    run.tracker.end_search(run.parent_id, "KILLED" if why else "FAILED")
            if why is None:
                raise
            # a full or read-only disk stops the search as Ctrl-C does: the running trials resume on the rerun
            done = finished_trials(run.study) if run is not None else 0
            raise SearchError(f"{why}: stopped after {done} of {options.trials} trials; free space or make {setup.output} "
                              "writable, then rerun the same command to resume") from None
        except BaseException:
            progress.close()
            if run is not None:
                run.tracker.end_search(run.parent_id, "FAILED")
            raise
        finally:
            backend.close(session)
            lock.release()


def _decoding_bar(progress: Progress):
    bars: list = []

    def report(done: int, total: int) -> None:
        if not bars:
            bars.append(progress.bar_for(total, 0, "decoding images", "img"))
        if bars[0] is not None:
            bars[0].n = done
            bars[0].refresh()
            if done >= total:
                bars[0].close()

    return report


# -- finish: the front -------------------------------------------------------------------------------------

def finish(run: SearchRun, progress: Progress, completed: bool = True) -> list[TrialRecord]:
    progress.close()
    setup, o, recorder, tracker = run.setup, run.setup.options, run.recorder, run.tracker
    recorder.reload()
    records = recorder.records
    front = recorder.update_front()
    trained = [r for r in records if r.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    over = [r for r in records if r.state is TrialState.INFEASIBLE]
    failed = [r for r in records if r.state is TrialState.FAILED]
    paused = [r for r in records if r.state is TrialState.PAUSED]
    attempted = len(trained) + len(over)
    summary = {
        "trials_done": float(attempted),
        "trials_trained": float(len(trained)),
        "trials_over_budget": float(len(over)),
        "over_budget_share": len(over) / attempted if attempted else 0.0,
        "trials_failed": float(len(failed)),
        "student_epochs": float(recorder.student_epochs),
    }
    if front:
        summary["best_val_acc"] = max(r.metrics["val_acc"] for r in front)
    tracker.log_metrics(run.parent_id, summary)
    if failed and not attempted:
        tracker.end_search(run.parent_id, "FAILED")
        last = failed[-1]
        raise SearchError(f"every trial failed ({len(failed)}), none finished: see the {names.ERROR} tag of run "
                          f"{last.run_id} ({last.name}) in MLflow; nothing to put on a front")
    # spent: what is left could not train one more student fully (the loop starts none then)
    compute_spent = o.max_student_epochs is not None and o.max_student_epochs - recorder.student_epochs < o.epochs
    if not completed:
        tracker.set_tags(run.parent_id, {names.STOPPED: "max-student-epochs" if compute_spent else "timeout"})
    tracker.end_search(run.parent_id, "FINISHED")
    write = progress.write
    write(f"\nBudget {o.budget} = {UNIT_NOTE}.")
    write(f"{len(records)} trial{'' if len(records) == 1 else 's'}: {len(trained)} trained, {len(over)} over budget or a limit and never trained "
          f"({100 * summary['over_budget_share']:.0f}% of candidates), "
          f"{sum(r.state is TrialState.PRUNED for r in records)} stopped early, {len(failed)} failed"
          + (f", {len(paused)} paused" if paused else "") + ".")
    write(f"Pareto front (validation accuracy vs MACs), tagged {names.PARETO}=true in MLflow experiment "
          f"{setup.tracking.experiment!r} at {setup.tracking.tracking_uri}:")
    val_size = len(setup.data.val_labels)
    write(front_table(front, val_size, records))
    if front:
        best = max(r.metrics["val_acc"] for r in front)
        write(noise_note(val_size, best) + " (val_acc_se: each row's standard error).")
        write(f"Front table: {setup.output / 'pareto.csv'}; plot: {setup.output / 'pareto.png'}.")
        write("Next: train the student you pick to the end with this search's teacher: rkd-search train RUN_ID "
              f"(or rkd-search train --best --output {setup.output}), then export the trained run: rkd-search export RUN_ID")
    if not completed:
        done = sum(r.state.finished for r in records)
        reason, hint = ((f"--max-student-epochs {o.max_student_epochs} ({recorder.student_epochs} student-epochs trained)",
                         "Rerun with a larger --max-student-epochs to continue.") if compute_spent else
                        ("--timeout", "Rerun the same command to continue."))
        write(f"stopped after {reason}: {done} of {o.trials} trials finished"
              + (f", {len(paused)} paused with checkpoints" if paused else "") + f". {hint}")
    return front
