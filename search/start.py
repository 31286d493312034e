"""A search's start, once its setup is valid: the teacher (trained or loaded), its targets, its
MLflow run, the study (the hand-picked students enqueued), the search's parent run and the
recorder; what the user is told before the trials (where results go, how noisy the validation
split is, when the sampler starts to model, where a resumed search stands); and the ``TrialLoop``
the back-end receives."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from rkd_search.trainer import Teacher, TeacherTargets, accuracy, prepare_teacher, resolve_device

from . import names
from .lifecycle import Lifecycle, finished_trials, mark_stale_runs
from .objective import DIRECTIONS, LoopOptions, Objective
from .options import SearchOptions
from .prescreen import Prescreen
from .recorder import FrontSettings, Recorder
from .report import EpochBar, Progress, noise_note
from .setup import SearchSetup, default_threads
from .study import open_study, sampler_startup
from .tracking import Tracker, schema, sqlite_path
from .trial_loop import SharedFiles, TrialLoop


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


def start(setup: SearchSetup, progress: Progress) -> SearchRun:
    o = setup.options
    device = resolve_device(o.device)
    tracker = Tracker(setup.tracking)
    teacher = _prepare_teacher(setup, device, progress)
    targets = _prepare_targets(setup, teacher, device, progress)
    teacher_test_acc = accuracy(targets.test_logits(setup.data).cpu(), setup.data.test_labels.cpu())
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
    mark_stale_runs(recorder)
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


def sampler_note(o: SearchOptions, startup: int) -> str:
    """When TPE or GP starts to model the results, in this search's terms."""
    model = {"tpe-recipes": "TPE (every other trial: the recipe only, on the most accurate architecture so far)"}.get(o.sampler, o.sampler.upper())
    planned = o.expected_trials()
    trials = f"{planned} trial{'s' if planned != 1 else ''}"
    if planned < o.trials:
        trials += f" that --max-student-epochs {o.max_student_epochs} allows"
    if startup >= planned:
        return (f"sampler {o.sampler}: {startup} startup trials (hand-picked or random) cover all {trials}; "
                f"{model} models the results only in a longer search.")
    return f"sampler {o.sampler}: the first {startup} of {trials} are hand-picked or random, then {model} models the results."


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


def trial_loop(run: SearchRun) -> TrialLoop:
    """The objective, the lifecycle and what worker processes load, as the back-ends receive them."""
    from rkd_search.trainer.deploy import LatencyCache
    from rkd_search.trainer.proxies import ZeroCostScorer

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
                          checkpoints=setup.output / "checkpoints", deadline=deadline, max_student_epochs=o.max_student_epochs)
    data_file = setup.cache_dir / "datasets" / f"search-{setup.data.fingerprint}.pt"
    if not data_file.exists():
        setup.data.save(data_file)
    files = SharedFiles(str(data_file), str(run.targets.folder) if run.targets.folder else None, o.epochs, str(run.device),
                        default_threads(o.jobs), **({"train": o.train} if o.train else {}))
    return TrialLoop(lifecycle, objective, setup.data, run.targets, options, files=files)
