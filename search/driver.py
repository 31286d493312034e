"""A search from flags to front: validate, set up once, run the trials, mark the Pareto front.

    cli -> Search.validate (nothing created yet) -> back-end connects (Ray) -> Search.setup (the
    output folder's lock, teacher, targets, study, parent run, recorder) -> the back-end's trial
    loop over a ``TrialLoop`` -> Search.finish (front tagged in MLflow, CSV, plot, summary).

Bad input fails in ``validate`` before any study, output folder or MLflow run exists.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rkd_search.spaces import SearchSpace, SpaceError, TrialContext, load_space
from rkd_search.trainer import (
    DataError,
    EpochReport,
    ImageDataset,
    Teacher,
    TeacherError,
    TeacherSource,
    TeacherTargets,
    default_cache_dir,
    find_teacher,
    load_dataset,
    prepare_teacher,
)
from rkd_search.trainer._device import resolve_device
from rkd_search.trainer.deploy import LatencyCache

from .budget import UNIT_NOTE, Budget, format_ops
from .errors import SearchError, UsageError
from .fidelity import rungs
from .objective import DIRECTIONS, Limits, LoopOptions, Objective, TrialLoop
from .recorder import FrontFiles, Progress, Recorder
from .records import TrialRecord, TrialState
from .report import front_table
from .study import SAMPLERS, OutputLock, open_study, stored_settings
from .tracking import Tracker, TrackingSettings, check_reachable, resolve_settings, sqlite_path

log = logging.getLogger(__name__)

BACKENDS = ("optuna", "ray")
# Chosen from measurement (bench/search_efficiency.py, docs/benchmarks.md): see the README.
DEFAULT_MULTI_FIDELITY = False


@dataclass
class SearchOptions:
    budget: Budget
    trials: int = 200
    dataset: str = "cifar10"
    data_dir: str | None = None
    teacher: str = "wrn28_1"
    teacher_epochs: int = 30
    trust_teacher_code: bool = False
    epochs: int = 15
    batch_size: int | None = None  # None: the dataset's default (128; 32 for digits)
    space: str = "default"
    sampler: str = "tpe"
    seed: int = 0
    output: Path | None = None
    experiment: str | None = None
    tracking_uri: str | None = None
    mlflow_config: str | None = None
    backend: str = "optuna"
    cache_dir: Path | None = None
    precision: str = "auto"
    device: str | None = None
    progress: bool = True
    # multi-fidelity and stopping
    multi_fidelity: bool = DEFAULT_MULTI_FIDELITY
    min_epochs: int = 1
    eta: int = 3
    timeout: float | None = None  # seconds
    max_student_epochs: int | None = None  # a compute budget (benchmarks)
    # limits beyond the MAC budget
    max_params: float | None = None
    max_activation_bytes: float | None = None
    max_latency_ms: float | None = None
    measure_latency: bool = True
    # Ray back-end
    address: str | None = None
    trial_resources: dict[str, float] = field(default_factory=dict)
    max_concurrent: int | None = None
    storage_path: str | None = None

    def resolved_output(self) -> Path:
        if self.output is not None:
            return Path(self.output).resolve()
        budget = re.sub(r"[^0-9A-Za-z.]+", "", format_ops(self.budget.macs))
        return Path("runs", f"{self.dataset}-{budget}-seed{self.seed}").resolve()

    @property
    def rungs(self) -> list[int]:
        return rungs(self.min_epochs, self.epochs, self.eta) if self.multi_fidelity else [self.epochs]

    @property
    def limits(self) -> Limits:
        return Limits(self.budget.macs, self.max_params, self.max_activation_bytes, self.max_latency_ms)


class Search:
    def __init__(self, options: SearchOptions) -> None:
        self.options = options
        self.output = options.resolved_output()
        self.progress = Progress(options.progress)
        self.parent_id: str | None = None
        self.tracker: Tracker | None = None
        self.recorder: Recorder | None = None
        self.lock = OutputLock(self.output)
        self.resumed_from = 0

    # -- 1. validate: everything a user can get wrong, before anything is created -------------------
    def validate(self) -> None:
        o = self.options
        if o.trials < 1 or o.epochs < 1 or o.teacher_epochs < 1 or (o.batch_size is not None and o.batch_size < 2):
            raise UsageError("--trials, --epochs and --teacher-epochs must be at least 1 and --batch-size at least 2")
        if o.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {o.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if o.backend not in BACKENDS:
            raise UsageError(f"unknown backend {o.backend!r}: choose one of {', '.join(BACKENDS)}")
        if o.backend != "ray" and (o.address or o.max_concurrent or o.trial_resources or o.storage_path):
            raise UsageError("--address, --max-concurrent, --trial-resources and --storage-path "
                             "are for the Ray back-end: add --backend ray")
        if o.max_concurrent is not None and o.max_concurrent < 1:
            raise UsageError("--max-concurrent must be at least 1")
        if o.multi_fidelity and not (1 <= o.min_epochs <= o.epochs and o.eta >= 2):
            raise UsageError(f"multi-fidelity needs 1 <= --min-epochs ({o.min_epochs}) <= --epochs ({o.epochs}) "
                             f"and --eta >= 2 ({o.eta})")
        self._check_output_folder()
        try:
            self.space: SearchSpace = load_space(o.space)
        except SpaceError as error:
            raise UsageError(str(error)) from None
        self.settings: TrackingSettings = resolve_settings(o.mlflow_config, o.tracking_uri, o.experiment)
        check_reachable(self.settings)
        self.cache_dir = Path(o.cache_dir) if o.cache_dir else default_cache_dir()
        try:
            self.data: ImageDataset = load_dataset(o.dataset, o.data_dir, seed=o.seed, cache_dir=self.cache_dir)
        except DataError as error:
            raise UsageError(str(error)) from None
        self.batch_size = o.batch_size or self.data.default_batch_size
        self.context = TrialContext(
            budget_macs=o.budget.macs, in_channels=self.data.input_shape[0], num_classes=self.data.num_classes,
            resolution=self.data.resolution, epochs=o.epochs, batch_size=self.batch_size, seed=o.seed, precision=o.precision,
            max_params=o.max_params, max_activation_bytes=o.max_activation_bytes,
        )
        smallest, ops = self.space.smallest_student(self.context)
        if ops.macs > o.budget.macs:
            raise UsageError(
                f"budget {o.budget} is below the smallest student of space {self.space.name!r}: {smallest.name} needs "
                f"{format_ops(ops.macs)} MACs ({ops.macs:,}); raise --budget or use a space with smaller students"
            )
        if o.max_params is not None and ops.params > o.max_params:
            raise UsageError(f"--max-params {o.max_params:g} is below the smallest student of space {self.space.name!r}: "
                             f"{smallest.name} has {ops.params:,} parameters; raise the limit")
        try:
            self.teacher_source: TeacherSource = find_teacher(o.teacher, self.data, epochs=o.teacher_epochs, seed=o.seed,
                                                              trust_code=o.trust_teacher_code)
        except TeacherError as error:
            raise UsageError(str(error)) from None
        self.study_settings = {
            "budget_macs": o.budget.macs, "dataset": o.dataset, "dataset_fingerprint": self.data.fingerprint,
            "space": self.space.name, "space_digest": self.space.digest, "epochs": o.epochs, "batch_size": self.batch_size,
            "seed": o.seed, "teacher": self.teacher_source.reference, "precision": o.precision, "backend": o.backend,
            "rungs": o.rungs, "eta": o.eta, "max_params": o.max_params, "max_activation_bytes": o.max_activation_bytes,
            "max_latency_ms": o.max_latency_ms, "tracking_store": self.settings.store_id, "experiment": self.settings.experiment,
        }
        self._check_existing_study()

    def _check_output_folder(self) -> None:
        """--output must be a folder this process can write, or be creatable; checked without writing."""
        output = self.output
        if output.exists() and not output.is_dir():
            raise UsageError(f"--output {output} is a file, not a folder: pass a folder")
        folder = output
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise UsageError(f"--output {output}: {folder} is a file, not a folder: pass another --output")
        try:  # access() misses read-only mounts for root: try a temporary file, removed at once
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise UsageError(f"--output {output} cannot be written ({folder}: {error.strerror}): pass a writable --output") from None

    def _check_existing_study(self) -> None:
        stored = stored_settings(self.output)
        if not stored:
            return
        for key, value in self.study_settings.items():
            if key in stored and stored[key] != value:
                if key in ("tracking_store", "experiment"):
                    raise UsageError(
                        f"{self.output} holds a search logged to {stored['tracking_store']} (experiment "
                        f"{stored.get('experiment')!r}), not {self.settings.store_id} ({self.settings.experiment!r}): "
                        "rerun with the tracking URI and experiment it used, or pass a new --output"
                    )
                raise UsageError(
                    f"{self.output} holds a search with {key} = {stored[key]!r}, not {value!r}: "
                    "rerun with the same flags to resume it, or pass a new --output"
                )

    # -- 2. setup: lock, teacher, targets, study, parent run, recorder --------------------------------
    def setup(self) -> None:
        o = self.options
        self.lock.acquire()  # a second search on this output folder is refused here, before any write
        self.device = resolve_device(o.device)
        self.tracker = Tracker(self.settings)
        self._prepare_teacher()
        self._prepare_targets()
        self.study = open_study(self.output, DIRECTIONS, o.sampler, o.seed, o.trials)
        if "rkd.settings" not in self.study.user_attrs:
            # the hand-designed students first, the settings (which mark the study as set up) last: a
            # process killed in between enqueues them again on the rerun, where skip_if_exists keeps one each
            for params in self.space.enqueued_params(self.context):
                self.study.enqueue_trial(params, skip_if_exists=True)
            self.study.set_user_attr("rkd.settings", self.study_settings)
        self._start_parent()

    def _prepare_teacher(self) -> None:
        o = self.options
        bars = []

        def report(epoch_report: EpochReport) -> None:
            if not bars:
                bars.append(self.progress.bar_for(o.teacher_epochs, 0, f"teacher {self.teacher_source.spec.name}", "epoch"))
            if bars[0] is not None:
                bars[0].update(1)
                bars[0].set_postfix(val_acc=f"{epoch_report.val_acc:.3f}")

        self.teacher: Teacher = prepare_teacher(self.teacher_source, self.data, epochs=o.teacher_epochs, seed=o.seed,
                                                cache_dir=self.cache_dir, device=self.device, report=report)
        if bars and bars[0] is not None:
            bars[0].close()

    def _prepare_targets(self) -> None:
        o = self.options
        bar = self.progress.bar_for(o.epochs, 0, "teacher targets", "epoch")
        self.targets = TeacherTargets.compute(
            self.teacher.model, self.data, epochs=o.epochs, batch_size=self.batch_size, seed=o.seed, precision=o.precision,
            device=self.device, cache_dir=self.cache_dir, progress=(lambda done, total: bar.update(1)) if bar is not None else None,
            digest=self.teacher.digest,
        )
        if bar is not None:
            bar.close()
        test_logits = self.targets.test_logits(self.data).cpu()
        teacher_test_acc = float((test_logits.argmax(1) == self.data.test_labels.cpu()).float().mean())
        spec, ops = self.teacher.spec, self.teacher.ops
        metrics = {"test_acc": teacher_test_acc, "macs": ops.macs, "flops": ops.flops, "params": ops.params}
        if "val_acc" in self.teacher.meta:
            metrics["val_acc"] = float(self.teacher.meta["val_acc"])
        self.teacher_metrics = metrics
        self.teacher_run_id = self.tracker.teacher_run(
            self.teacher.digest, f"{spec.name}-{self.data.name}",
            params={"teacher.arch": spec.name, "teacher.dataset": self.data.name, "teacher.reference": self.teacher.reference,
                    "teacher.epochs": self.teacher.meta.get("epochs", "unknown"), "teacher.checkpoint": str(self.teacher.checkpoint or "")},
            metrics=metrics, checkpoint=self.teacher.checkpoint,
        )

    def _start_parent(self) -> None:
        o = self.options
        val = self.data.val_labels.cpu()
        majority = float(val.bincount().max()) / len(val)
        params = {
            "budget": o.budget.text, "budget.macs": int(o.budget.macs), "budget.unit": UNIT_NOTE,
            "dataset": o.dataset, "dataset.fingerprint": self.data.fingerprint,
            "data_dir": str(Path(o.data_dir).resolve()) if o.data_dir else "",
            "dataset.sizes": f"{len(self.data.train_labels)}/{len(self.data.val_labels)}/{len(self.data.test_labels)}",
            "dataset.val_majority": round(majority, 6),
            "space": self.space.name, "space.digest": self.space.digest, "sampler": o.sampler, "seed": o.seed,
            "epochs": o.epochs, "batch_size": self.batch_size, "backend": o.backend, "precision": o.precision,
            "rungs": ",".join(map(str, o.rungs)), "eta": o.eta,
            "teacher": self.teacher.spec.name, "teacher.reference": self.teacher.reference,
            "teacher.run_id": self.teacher_run_id, "teacher.digest": self.teacher.digest,
            "teacher.test_acc": round(self.teacher_metrics["test_acc"], 4),
        }
        for name, limit in (("limit.params", o.max_params), ("limit.activation_bytes", o.max_activation_bytes),
                            ("limit.latency_ms", o.max_latency_ms)):
            if limit is not None:
                params[name] = limit
        tags = {"rkd.output": str(self.output), "rkd.teacher_run_id": self.teacher_run_id,
                "rkd.budget_unit": "MACs (thop)", "rkd.backend": o.backend}
        files = {"space.yaml": self.space.text, "search.json": json.dumps({**params, "output": str(self.output)}, indent=2)}
        name = f"search-{o.dataset}-{format_ops(o.budget.macs)}MACs-{o.sampler}-s{o.seed}"
        resume_id = self.study.user_attrs.get("rkd.parent_run_id")
        self.parent_id = self.tracker.start_search(name, params, tags, files, resume_id=resume_id)
        if resume_id != self.parent_id:
            self.study.set_user_attr("rkd.parent_run_id", self.parent_id)
        self.tracker.set_tags(self.parent_id, {"rkd.trials_target": o.trials})
        front = FrontFiles(self.output, o.budget.macs, f"{o.dataset}, budget {o.budget}", majority, len(val))
        student = {"preprocessing": {"input_size": list(self.data.input_shape), "channel_order": "RGB" if self.data.input_shape[0] == 3 else "gray",
                                     "scale": "1/255", "mean": list(self.data.mean), "std": list(self.data.std),
                                     "layout": "NCHW", "dtype": "float32"},
                   "classes": list(self.data.classes), "dataset": o.dataset}
        self.recorder = Recorder(self.tracker, self.parent_id, self.progress, front, student)
        self.recorder.reload()
        self.recorder.student_epochs = sum(r.epochs for r in self.recorder.records)
        self._mark_stale_runs()

    def _mark_stale_runs(self) -> None:
        """MLflow runs left RUNNING by a stopped process: marked, and reopened if their trial resumes."""
        for record in [r for r in self.recorder.records if r.state is TrialState.RUNNING]:
            self.tracker.finish_trial(record.run_id, TrialState.FAILED, error="the process running this trial stopped",
                                      tags={"rkd.failure": "stale"}, status="KILLED", epochs=record.epochs)
            record.state = TrialState.FAILED

    def announce(self) -> None:
        """Say where results go, and whether and from where this run resumes."""
        o, write = self.options, self.progress.write
        uri = self.settings.tracking_uri
        db = sqlite_path(uri)
        ui = f"mlflow ui --backend-store-uri sqlite:///{db.resolve()}" if db is not None else f"open {uri}"
        write(f"rkd-search: output {self.output}; MLflow experiment {self.settings.experiment!r} at {uri} "
              f"(browse: {ui}, then 'Model training'); front: {self.output / 'pareto.csv'}")
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state.name != "WAITING" for t in trials):
            finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
            alive = [t for t in trials if t.state.name == "RUNNING"]
            self.resumed_from = finished
            detail = f"; {len(alive)} unfinished trial(s) continue: " + ", ".join(f"t{t.number:03d}" for t in alive[:8]) if alive else ""
            write(f"resuming the search in {self.output}: {finished} of {o.trials} trials done{detail}")

    def loop(self) -> TrialLoop:
        o = self.options
        latency = LatencyCache(self.cache_dir) if o.measure_latency else None
        objective = Objective(self.space, self.context, o.limits,
                              latency=(lambda spec: latency(spec, self.data.resolution)) if latency else None)
        deadline = time.monotonic() + o.timeout if o.timeout else None
        options = LoopOptions(trials=o.trials, epochs=o.epochs, rungs=o.rungs, eta=o.eta, device=self.device,
                              checkpoints=self.output / "checkpoints", deadline=deadline, max_student_epochs=o.max_student_epochs)
        return TrialLoop(self.study, objective, self.recorder, self.data, self.targets, options)

    def finished_trials(self) -> int:
        from optuna.trial import TrialState as OptunaState

        return len(self.study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE, OptunaState.PRUNED)))

    def open_trials_bar(self) -> None:
        self.progress.bar = self.progress.bar_for(self.options.trials, min(self.finished_trials(), self.options.trials), "trials", "trial")
        self.recorder.update_bar()

    # -- 4. finish: the front ---------------------------------------------------------------------------
    def finish(self, completed: bool = True) -> list[TrialRecord]:
        self.progress.close()
        recorder = self.recorder
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
        self.tracker.log_metrics(self.parent_id, summary)
        if failed and not attempted:
            self.tracker.end_search(self.parent_id, "FAILED")
            last = failed[-1]
            raise SearchError(f"every trial failed ({len(failed)}), none finished: see the rkd.error tag of run "
                              f"{last.run_id} ({last.name}) in MLflow; nothing to put on a front")
        if not completed:
            self.tracker.set_tags(self.parent_id, {"rkd.stopped": "timeout"})
        self.tracker.end_search(self.parent_id, "FINISHED")
        o, write = self.options, self.progress.write
        write(f"\nBudget {o.budget} = {UNIT_NOTE}.")
        write(f"{len(records)} trials: {len(trained)} trained, {len(over)} over budget or a limit and never trained "
              f"({100 * summary['over_budget_share']:.0f}% of candidates), "
              f"{sum(r.state is TrialState.PRUNED for r in records)} stopped early, {len(failed)} failed"
              + (f", {len(paused)} paused" if paused else "") + ".")
        write(f"Pareto front (validation accuracy vs MACs), tagged rkd.pareto=true in MLflow experiment "
              f"{self.settings.experiment!r} at {self.settings.tracking_uri}:")
        write(front_table(front))
        write(f"Front table: {self.output / 'pareto.csv'}; plot: {self.output / 'pareto.png'}. "
              "Export a student with: rkd-search export RUN_ID")
        if not completed:
            done = sum(r.state.finished for r in records)
            write(f"stopped after --timeout: {done} of {o.trials} trials finished"
                  + (f", {len(paused)} paused with checkpoints" if paused else "")
                  + ". Rerun the same command to continue.")
        return front

    def interrupted(self) -> None:
        self.progress.close()
        if self.tracker is not None and self.parent_id is not None:
            self.tracker.end_search(self.parent_id, "KILLED")
        done = self.finished_trials() if hasattr(self, "study") else 0
        print(f"\ninterrupted after {done} of {self.options.trials} trials: rerun the same command to resume", flush=True)


def run_search(options: SearchOptions) -> list[TrialRecord]:
    search = Search(options)
    search.validate()
    if options.backend == "ray":
        from . import ray_backend as backend
    else:
        from . import optuna_backend as backend  # type: ignore[no-redef]
    session = backend.connect(options, search.output) if options.backend == "ray" else None
    try:
        search.setup()
        search.announce()
        search.open_trials_bar()
        loop = search.loop()
        completed = backend.run_trials(loop, session) if session is not None else backend.run_trials(loop)
        return search.finish(completed)
    except KeyboardInterrupt:
        search.interrupted()
        raise
    except BaseException:
        search.progress.close()
        if search.tracker is not None and search.parent_id is not None:
            search.tracker.end_search(search.parent_id, "FAILED")
        raise
    finally:
        if session is not None:
            session.close()
        search.lock.release()
