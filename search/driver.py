"""A search from flags to front: validate, start once, run the trials, mark the Pareto front.

    run_search(options)
      -> setup.validate          everything a user can get wrong; nothing created yet (exit 2)
      -> backend.connect         Ray joins or starts its cluster; the embedded back-end has nothing to do
      -> start                   the output folder's lock, teacher, teacher targets, study, parent run
      -> trial_loop              the objective, the trial lifecycle and where trials train
      -> backend.run_trials      the back-end's loop over the lifecycle
      -> finish                  the front tagged in MLflow, CSV, plot, summary

SIGTERM and SIGHUP (what docker stop, Kubernetes, SLURM and a closing terminal send) stop a search
as Ctrl-C does: the running trials are marked, the front of what finished is written, and the
rerun resumes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from rkd_search.trainer import Teacher, TeacherTargets, prepare_teacher
from rkd_search.trainer._device import resolve_device

from . import names
from .budget import UNIT_NOTE
from .errors import SearchError, cannot_write
from .lifecycle import Lifecycle, finished_trials
from .loop import TrialLoop
from .objective import DIRECTIONS, LoopOptions, Objective
from .prescreen import Prescreen
from .recorder import FrontSettings, Recorder
from .records import TrialRecord, TrialState
from .report import EpochBar, Progress, front_table, noise_note
from .setup import SearchOptions, SearchSetup, check_flags, default_threads, validate
from .stopping import stop_on_signals
from .study import OutputLock, open_study, sampler_startup
from .tracking import Tracker, schema, sqlite_path

log = logging.getLogger(__name__)

BACKENDS = {"optuna": "rkd_search.search.backends.embedded", "ray": "rkd_search.search.backends.ray"}
"""Each back-end module offers ``connect(setup)`` and ``run_trials(loop, session)``."""


@dataclass(frozen=True)
class SearchRun:
    """What a started search holds, made at once by ``start``."""

    setup: SearchSetup
    device: torch.device
    tracker: Tracker
    teacher: Teacher
    targets: TeacherTargets
    teacher_run_id: str
    study: Any
    parent_id: str
    recorder: Recorder
    teacher_test_acc: float
    startup: int | None = None
    """Trials TPE or GP sample at random before modelling the results (None: another sampler)."""


def load_backend(name: str):
    return importlib.import_module(BACKENDS[name])


def run_search(options: SearchOptions) -> list[TrialRecord]:
    check_flags(options)
    pool = None
    if options.backend == "optuna":
        # the embedded back-end's workers start first, before this process computes anything (then
        # they are forked from it: see workers.fresh_process); they wait for the search's files
        from .backends.workers import WorkerPool

        pool = WorkerPool(capacity=options.jobs).prewarm()
    progress = Progress(options.progress)
    try:
        setup = validate(options, progress=_decoding_bar(progress))
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    backend = load_backend(options.backend)
    lock = OutputLock(setup.output)
    run: SearchRun | None = None
    session = None
    with stop_on_signals():
        try:
            session = backend.connect(setup)
            lock.acquire()  # a second search on this output folder is refused here, before any write
            where_results_go(setup, progress)
            run = start(setup, progress)
            announce(run, progress)
            loop = trial_loop(run, progress, pool)
            completed = backend.run_trials(loop, session)
            return finish(run, progress, completed)
        except KeyboardInterrupt as stop:
            progress.close()
            if run is not None:
                run.tracker.end_search(run.parent_id, "KILLED")
            done = finished_trials(run.study) if run is not None else 0
            why = getattr(stop, "reason", "interrupted")
            print(f"\n{why} after {done} of {options.trials} trials: rerun the same command to resume", flush=True)
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
            if pool is not None:
                pool.close()
            if session is not None:
                session.close()
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


# -- start: teacher, targets, study, parent run ----------------------------------------------------------

def start(setup: SearchSetup, progress: Progress) -> SearchRun:
    o = setup.options
    device = resolve_device(o.device)
    tracker = Tracker(setup.tracking)
    teacher = _prepare_teacher(setup, device, progress)
    targets = _prepare_targets(setup, teacher, device, progress)
    teacher_test_acc = float((targets.test_logits(setup.data).cpu().argmax(1) == setup.data.test_labels.cpu()).float().mean())
    teacher_run_id = _teacher_run(setup, tracker, teacher, teacher_test_acc, progress)
    enqueued = setup.space.enqueued_params(setup.context) if o.enqueue else []
    planned = o.expected_trials()
    study = open_study(setup.output, DIRECTIONS, o.sampler, o.seed, planned, len(enqueued), o.jobs)
    startup = sampler_startup(o.sampler, planned, len(enqueued))
    if names.STUDY_SETTINGS not in study.user_attrs:
        # the hand-designed students first, the settings (which mark the study as set up) last: a
        # process killed in between enqueues them again on the rerun, where skip_if_exists keeps one each
        for params in enqueued:
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr(names.STUDY_SETTINGS, setup.study_settings)
    params = schema.parent_params(o, setup.data, setup.space, setup.batch_size, teacher, teacher_run_id, teacher_test_acc)
    resume_id = study.user_attrs.get(names.STUDY_PARENT_RUN)
    parent_id = tracker.start_search(schema.parent_name(o.dataset, o.budget, o.sampler, o.seed), params,
                                     schema.parent_tags(setup.output, teacher_run_id, o.backend),
                                     schema.parent_files(setup.space.text, params, setup.output), resume_id=resume_id)
    if resume_id != parent_id:
        study.set_user_attr(names.STUDY_PARENT_RUN, parent_id)
    tracker.set_tags(parent_id, {names.TRIALS_TARGET: o.trials,
                                 **({names.SAMPLER_STARTUP: startup} if startup is not None else {})})
    front = FrontSettings(setup.output, o.budget.macs, f"{o.dataset}, budget {o.budget}", schema.majority_share(setup.data),
                          len(setup.data.val_labels))
    recorder = Recorder(tracker, parent_id, progress, front, schema.student_card(setup.data, o.dataset))
    recorder.reload()
    recorder.student_epochs = sum(r.epochs for r in recorder.records)
    _mark_stale_runs(tracker, recorder)
    return SearchRun(setup, device, tracker, teacher, targets, teacher_run_id, study, parent_id, recorder, teacher_test_acc,
                     startup)


def _prepare_teacher(setup: SearchSetup, device: torch.device, progress: Progress) -> Teacher:
    o = setup.options
    bar = EpochBar(progress, o.teacher_epochs, f"teacher {setup.teacher.name}")

    def resumed(epoch: int, checkpoint) -> None:
        bar.resumed(epoch)
        progress.write(f"resuming the teacher {setup.teacher.name} at epoch {epoch} of {o.teacher_epochs} from {checkpoint}")

    try:
        return prepare_teacher(setup.teacher, setup.data, epochs=o.teacher_epochs, seed=o.seed, cache_dir=setup.cache_dir,
                               device=device, report=lambda r: bar.epoch(r.epoch, r.val_acc), progress=bar.batch,
                               resumed=resumed)
    finally:
        bar.close()


def _prepare_targets(setup: SearchSetup, teacher: Teacher, device: torch.device, progress: Progress) -> TeacherTargets:
    o = setup.options
    bar = progress.bar_for(o.epochs, 0, "teacher targets", "epoch")
    targets = TeacherTargets.compute(
        teacher.model, setup.data, epochs=o.epochs, batch_size=setup.batch_size, seed=o.seed, precision=o.precision,
        device=device, cache_dir=setup.cache_dir, progress=(lambda done, total: bar.update(1)) if bar is not None else None,
        digest=teacher.digest,
    )
    if bar is not None:
        bar.close()
    return targets


def _teacher_run(setup: SearchSetup, tracker: Tracker, teacher: Teacher, test_acc: float, progress: Progress) -> str:
    ops = teacher.ops
    metrics = {"test_acc": test_acc, "macs": ops.macs, "flops": ops.flops, "params": ops.params}
    if "val_acc" in teacher.meta:
        metrics["val_acc"] = float(teacher.meta["val_acc"])
    chance = schema.majority_share(setup.data)
    if test_acc <= chance + 0.01:
        progress.write(f"warning: the teacher {teacher.name} scores {100 * test_acc:.1f}% on this data's test images, no "
                       f"better than guessing ({100 * chance:.1f}%): distilling from it teaches nothing; check --teacher")
    return tracker.teacher_run(teacher.digest, f"{teacher.name}-{setup.data.name}", params=schema.teacher_params(teacher, setup.data),
                               metrics=metrics, checkpoint=teacher.checkpoint)


def _mark_stale_runs(tracker: Tracker, recorder: Recorder) -> None:
    """MLflow runs left RUNNING by a stopped process: marked, and reopened if their trial resumes."""
    for record in [r for r in recorder.records if r.state is TrialState.RUNNING]:
        tracker.finish_trial(record.run_id, TrialState.FAILED, error="the process running this trial stopped",
                             tags={names.FAILURE: "stale"}, status="KILLED", epochs=record.epochs)
        record.state = TrialState.FAILED


def sampler_note(o: SearchOptions, startup: int) -> str:
    """When TPE or GP starts to model the results, in this search's terms."""
    planned = o.expected_trials()
    trials = f"{planned} trial{'s' if planned != 1 else ''}"
    if planned < o.trials:
        trials += f" that --max-student-epochs {o.max_student_epochs} allows"
    if startup >= planned:
        return (f"sampler {o.sampler}: {startup} startup trials (hand-picked or random) cover all {trials}; "
                f"{o.sampler.upper()} models the results only in a longer search.")
    return f"sampler {o.sampler}: the first {startup} of {trials} are hand-picked or random, then {o.sampler.upper()} models the results."


def where_results_go(setup: SearchSetup, progress: Progress) -> None:
    """Said first, before the teacher and its targets take their time: where the results go, and how the images were read."""
    uri = setup.tracking.tracking_uri
    db = sqlite_path(uri)
    ui = f"mlflow ui --backend-store-uri sqlite:///{db.resolve()}" if db is not None else f"open {uri}"
    progress.write(f"rkd-search: output {setup.output}; MLflow experiment {setup.tracking.experiment!r} at {uri} "
                   f"(browse: {ui}, then 'Model training'); front: {setup.output / 'pareto.csv'}")
    if setup.data.note:
        progress.write(setup.data.note + ".")


def announce(run: SearchRun, progress: Progress) -> None:
    """Say how noisy the validation split is, how the sampler starts, and whether and from where this run resumes."""
    setup = run.setup
    progress.write(noise_note(len(setup.data.val_labels), run.teacher_test_acc, setup.data.val_source) + ".")
    if run.startup is not None:
        progress.write(sampler_note(setup.options, run.startup))
    trials = run.study.get_trials(deepcopy=False)
    if any(t.state.name != "WAITING" for t in trials):
        finished = finished_trials(run.study)
        alive = [t for t in trials if t.state.name == "RUNNING" and not t.user_attrs.get(names.TRIAL_SCREENED_OUT)]
        detail = f"; {len(alive)} unfinished trial(s) continue: " + ", ".join(f"t{t.number:03d}" for t in alive[:8]) if alive else ""
        progress.write(f"resuming the search in {setup.output}: {finished} of {setup.options.trials} trials done{detail}")
    progress.bar = progress.bar_for(setup.options.trials, min(finished_trials(run.study), setup.options.trials), "trials", "trial")
    run.recorder.update_bar()


# -- the loop ------------------------------------------------------------------------------------------------

def trial_loop(run: SearchRun, progress: Progress, pool=None) -> TrialLoop:
    """The objective, the lifecycle and where trials train, as the back-ends receive them."""
    from rkd_search.trainer.deploy import LatencyCache
    from rkd_search.trainer.proxies import ZeroCostScorer

    from .backends.workers import DEFAULT_TRAIN, WorkerFiles

    setup, o = run.setup, run.setup.options
    latency = LatencyCache(setup.cache_dir) if o.measure_latency else None
    scorer = ZeroCostScorer(setup.data, run.targets, device=run.device)
    objective = Objective(setup.space, setup.context, o.limits,
                          latency=(lambda spec: latency(spec, setup.data.resolution)) if latency else None,
                          scorer=lambda plan: scorer(plan.config))
    lifecycle = Lifecycle(run.study, objective, run.recorder, o.rungs,
                          prescreen=Prescreen(o.prescreen) if o.prescreen > 1 else None)
    deadline = time.monotonic() + o.timeout if o.timeout else None
    options = LoopOptions(trials=o.trials, epochs=o.epochs, rungs=o.rungs, eta=o.eta, device=run.device, jobs=o.jobs,
                          checkpoints=setup.output / "checkpoints", deadline=deadline, max_student_epochs=o.max_student_epochs,
                          prescreen=o.prescreen)
    workers = None
    if o.backend == "optuna":
        data_file = setup.cache_dir / "datasets" / f"search-{setup.data.fingerprint}.pt"
        if not data_file.exists():
            setup.data.save(data_file)
        workers = WorkerFiles(str(data_file), str(run.targets.folder) if run.targets.folder else None, o.epochs,
                              str(run.device), default_threads(o.jobs), o.train or DEFAULT_TRAIN)
    return TrialLoop(lifecycle, objective, setup.data, run.targets, options, workers=workers, pool=pool)


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
        write("Next: train the student you pick to the end, with its recipe and this search's teacher: rkd-search train RUN_ID "
              f"(or rkd-search train --best --output {setup.output}), then export the trained run: rkd-search export RUN_ID")
    if not completed:
        done = sum(r.state.finished for r in records)
        reason, hint = ((f"--max-student-epochs {o.max_student_epochs} ({recorder.student_epochs} student-epochs trained)",
                         "Rerun with a larger --max-student-epochs to continue.") if compute_spent else
                        ("--timeout", "Rerun the same command to continue."))
        write(f"stopped after {reason}: {done} of {o.trials} trials finished"
              + (f", {len(paused)} paused with checkpoints" if paused else "") + f". {hint}")
    return front
