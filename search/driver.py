"""A search from flags to front: validate, set up once, run the trials, mark the Pareto front.

    cli -> Search.validate (nothing created yet) -> Search.setup (teacher, targets, study, parent
    run) -> back-end trial loop (Objective.define on the driver, Objective.train where the trial
    runs, Tracker on the driver) -> Search.finish (front tagged in MLflow, CSV and plot).

Bad input fails in ``validate`` before any study, output folder or MLflow run exists.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spaces import SearchSpace, SpaceError, TrialContext, TrialPlan, load_space
from trainer import (
    DataError,
    EpochReport,
    ImageDataset,
    ModelSpec,
    TeacherError,
    TeacherTargets,
    TrainResult,
    check_teacher_fits,
    load_checkpoint,
    load_dataset,
    train_teacher,
)
from trainer._device import resolve_device
from trainer.data import default_cache_dir
from trainer.teacher import teacher_cache_path, weights_digest

from .budget import UNIT_NOTE, Budget, format_ops
from .errors import UsageError
from .objective import DIRECTIONS
from .report import compute_front, front_table, plot_front, write_csv
from .tracking import Tracker, TrackingSettings, TrialRecord, check_reachable, resolve_settings

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "gp", "nsga2", "random")
BACKENDS = ("optuna", "ray")
STUDY_FILE = "study.journal"
STUDY_NAME = "rkd-search"


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
    # Ray back-end
    address: str | None = None
    trial_resources: dict[str, float] = field(default_factory=dict)
    max_concurrent: int | None = None
    storage_path: str | None = None
    multi_fidelity: bool = False

    def resolved_output(self) -> Path:
        if self.output is not None:
            return Path(self.output).resolve()
        budget = re.sub(r"[^0-9A-Za-z.]+", "", format_ops(self.budget.macs))
        return Path("runs", f"{self.dataset}-{budget}-seed{self.seed}").resolve()


@dataclass
class TeacherInfo:
    model: torch.nn.Module | None
    spec: ModelSpec
    reference: str
    checkpoint: Path | None
    meta: dict[str, Any]


class Progress:
    """A trials bar (done, front size, best accuracy, ETA); silent when progress is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def bar_for(self, total: int, initial: int, desc: str, unit: str):
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)


class Search:
    def __init__(self, options: SearchOptions) -> None:
        self.options = options
        self.output = options.resolved_output()
        self.progress = Progress(options.progress)
        self.records: list[TrialRecord] = []
        self.parent_id: str | None = None
        self.tracker: Tracker | None = None

    # -- 1. validate: everything a user can get wrong, before anything is created -------------------
    def validate(self) -> None:
        o = self.options
        if o.trials < 1 or o.epochs < 1 or o.teacher_epochs < 1 or (o.batch_size is not None and o.batch_size < 2):
            raise UsageError("--trials, --epochs and --teacher-epochs must be at least 1 and --batch-size at least 2")
        if o.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {o.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if o.backend not in BACKENDS:
            raise UsageError(f"unknown backend {o.backend!r}: choose one of {', '.join(BACKENDS)}")
        if o.backend != "ray" and (o.multi_fidelity or o.address or o.max_concurrent or o.trial_resources or o.storage_path):
            raise UsageError("--multi-fidelity, --address, --max-concurrent, --trial-resources and --storage-path "
                             "are for the Ray back-end: add --backend ray")
        if o.max_concurrent is not None and o.max_concurrent < 1:
            raise UsageError("--max-concurrent must be at least 1")
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
        )
        smallest, ops = self.space.smallest_student(self.context)
        if ops.macs > o.budget.macs:
            raise UsageError(
                f"budget {o.budget} is below the smallest student of space {self.space.name!r}: {smallest.name} needs "
                f"{format_ops(ops.macs)} MACs ({ops.macs:,}); raise --budget or use a space with smaller students"
            )
        self.teacher = self._resolve_teacher()
        self.study_settings = {
            "budget_macs": o.budget.macs, "dataset": o.dataset, "dataset_fingerprint": self.data.fingerprint,
            "space": self.space.name, "space_digest": self.space.digest, "epochs": o.epochs, "batch_size": self.batch_size,
            "seed": o.seed, "teacher": self.teacher.reference, "precision": o.precision, "backend": o.backend,
        }
        self._check_existing_study()
        if o.backend == "ray":
            from .ray_backend import connect

            connect(self)  # last: an unreachable cluster or unshared storage fails before anything is created

    def _resolve_teacher(self) -> TeacherInfo:
        o = self.options
        reference = o.teacher
        looks_like_file = reference.endswith((".pt", ".pth", ".ckpt")) or "/" in reference or Path(reference).exists()
        if looks_like_file:
            try:
                model, spec, meta = load_checkpoint(reference, trust_code=o.trust_teacher_code)
                check_teacher_fits(spec, self.data, reference)
            except TeacherError as error:
                raise UsageError(str(error)) from None
            return TeacherInfo(model, spec, str(Path(reference).resolve()), Path(reference).resolve(), meta)
        try:
            spec = ModelSpec.parse(reference, self.data.input_shape[0], self.data.num_classes)
        except ValueError as error:
            raise UsageError(f"--teacher: {error}; or pass a checkpoint file") from None
        return TeacherInfo(None, spec, f"{spec.name}-e{o.teacher_epochs}-s{o.seed}", None, {})

    def study_storage(self):
        """The Optuna storage of this search: a journal file under the output folder."""
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(self.output / STUDY_FILE)))

    def _check_existing_study(self) -> None:
        if not (self.output / STUDY_FILE).exists():
            return
        import optuna

        try:
            study = optuna.load_study(study_name=STUDY_NAME, storage=self.study_storage())
        except Exception as error:
            raise UsageError(f"{self.output / STUDY_FILE} is not a readable rkd-search study ({type(error).__name__}): pass a new --output") from None
        stored = study.user_attrs.get("rkd.settings", {})
        for key, value in self.study_settings.items():
            if key in stored and stored[key] != value:
                raise UsageError(
                    f"{self.output} holds a search with {key} = {stored[key]!r}, not {value!r}: "
                    "rerun with the same flags to resume it, or pass a new --output"
                )

    # -- 2. setup: teacher, targets, study and parent run -----------------------------------------------
    def setup(self) -> None:
        o = self.options
        self.device = resolve_device(o.device)
        self.output.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(self.settings)
        self._prepare_teacher()
        self._prepare_targets()
        self._prepare_study()
        self._start_parent()

    def _prepare_teacher(self) -> None:
        o, teacher = self.options, self.teacher
        if teacher.model is None:
            cached = teacher_cache_path(self.data, teacher.spec, o.teacher_epochs, o.seed, self.cache_dir).exists()
            bar = None if cached else self.progress.bar_for(o.teacher_epochs, 0, f"teacher {teacher.spec.name}", "epoch")

            def report(epoch_report: EpochReport) -> None:
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(val_acc=f"{epoch_report.val_acc:.3f}")

            model, spec, meta, checkpoint = train_teacher(
                self.data, teacher.spec, epochs=o.teacher_epochs, seed=o.seed, cache_dir=self.cache_dir, device=self.device, report=report
            )
            if bar is not None:
                bar.close()
            self.teacher = TeacherInfo(model, spec, teacher.reference, checkpoint, meta)

    def _prepare_targets(self) -> None:
        o = self.options
        bar = self.progress.bar_for(o.epochs, 0, "teacher targets", "epoch")
        self.targets = TeacherTargets.compute(
            self.teacher.model, self.data, epochs=o.epochs, batch_size=self.batch_size, seed=o.seed, precision=o.precision,
            device=self.device, cache_dir=self.cache_dir, progress=(lambda done, total: bar.update(1)) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        test_logits = self.targets.test_logits(self.data).cpu()
        teacher_test_acc = float((test_logits.argmax(1) == self.data.test_labels.cpu()).float().mean())
        self.teacher_digest = weights_digest(self.teacher.model)
        spec = self.teacher.spec
        from trainer import count_spec_ops

        ops = count_spec_ops(spec, self.data.resolution)
        metrics = {"test_acc": teacher_test_acc, "macs": ops.macs, "flops": ops.flops, "params": ops.params}
        if "val_acc" in self.teacher.meta:
            metrics["val_acc"] = float(self.teacher.meta["val_acc"])
        self.teacher_metrics = metrics
        self.teacher_run_id = self.tracker.teacher_run(
            self.teacher_digest, f"{spec.name}-{self.data.name}",
            params={"teacher.arch": spec.name, "teacher.dataset": self.data.name, "teacher.reference": self.teacher.reference,
                    "teacher.epochs": self.teacher.meta.get("epochs", "unknown"), "teacher.checkpoint": str(self.teacher.checkpoint or "")},
            metrics=metrics, checkpoint=self.teacher.checkpoint,
        )

    def make_sampler(self, existing_trials: int):
        import optuna

        # a resumed search must not replay the random draws of its first session
        seed = self.options.seed + 7919 * existing_trials
        name = self.options.sampler
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, self.options.trials // 4)))
        return optuna.samplers.RandomSampler(seed=seed)

    def _prepare_study(self) -> None:
        import optuna

        storage = self.study_storage()
        existing = 0
        try:
            existing = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
        except KeyError:
            pass
        self.study = optuna.create_study(
            study_name=STUDY_NAME, storage=storage, directions=list(DIRECTIONS),
            sampler=self.make_sampler(existing), load_if_exists=True,
        )
        if "rkd.settings" not in self.study.user_attrs:
            self.study.set_user_attr("rkd.settings", self.study_settings)
            for params in self.space.enqueued_params(self.context):
                self.study.enqueue_trial(params, skip_if_exists=True)

    def _start_parent(self) -> None:
        o = self.options
        params = {
            "budget": o.budget.text, "budget.macs": int(o.budget.macs), "budget.unit": UNIT_NOTE,
            "dataset": o.dataset, "dataset.fingerprint": self.data.fingerprint, "data_dir": o.data_dir or "",
            "dataset.sizes": f"{len(self.data.train_labels)}/{len(self.data.val_labels)}/{len(self.data.test_labels)}",
            "space": self.space.name, "space.digest": self.space.digest, "sampler": o.sampler, "seed": o.seed,
            "epochs": o.epochs, "batch_size": self.batch_size, "backend": o.backend, "precision": o.precision,
            "teacher": self.teacher.spec.name, "teacher.reference": self.teacher.reference,
            "teacher.run_id": self.teacher_run_id, "teacher.digest": self.teacher_digest,
            "teacher.test_acc": round(self.teacher_metrics["test_acc"], 4),
        }
        tags = {"rkd.output": str(self.output), "rkd.teacher_run_id": self.teacher_run_id,
                "rkd.budget_unit": "MACs (thop)", "rkd.backend": o.backend}
        files = {"space.yaml": self.space.text, "search.json": json.dumps({**params, "output": str(self.output)}, indent=2)}
        name = f"search-{o.dataset}-{format_ops(o.budget.macs)}MACs-{o.sampler}-s{o.seed}"
        resume_id = self.study.user_attrs.get("rkd.parent_run_id")
        self.parent_id = self.tracker.start_search(name, params, tags, files, resume_id=resume_id)
        if resume_id != self.parent_id:
            self.study.set_user_attr("rkd.parent_run_id", self.parent_id)
        self.tracker.set_tags(self.parent_id, {"rkd.trials_target": o.trials})
        self.records = self.tracker.trial_records(self.parent_id)
        self._fail_stale_trials()

    def _fail_stale_trials(self) -> None:
        """Trials left RUNNING by a killed process are failed, so they are run again."""
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(trial.number, state=TrialState.FAIL)
        for record in [r for r in self.records if r.state == "running"]:
            self.tracker.finish_trial(record.run_id, "failed", error="the process running this trial stopped",
                                      tags={"rkd.failure": "stale"}, status="KILLED")
            record.state = "failed"

    # -- 3. trials -------------------------------------------------------------------------------------
    def finished_trials(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def open_trials_bar(self):
        self.progress.bar = self.progress.bar_for(self.options.trials, min(self.finished_trials(), self.options.trials), "trials", "trial")
        self.update_bar()

    def update_bar(self, running: str | None = None) -> None:
        bar = self.progress.bar
        if bar is None:
            return
        front = compute_front(self.records)
        best = max((r.metrics["val_acc"] for r in front), default=float("nan"))
        over = sum(r.state == "infeasible" for r in self.records)
        postfix = {"front": len(front), "best_val": f"{best:.3f}", "over_budget": over}
        if running:
            postfix["now"] = running
        bar.set_postfix(postfix)

    def start_trial(self, number: int, key: str, plan: TrialPlan, tags: dict[str, Any] | None = None) -> str:
        return self.tracker.start_trial(self.parent_id, number, key, plan.config.student.name, plan.params, plan.ops, plan.feasible, tags)

    def record_trial(self, run_id: str, number: int, plan: TrialPlan, state: str, result: TrainResult | None,
                     error: str | None = None, tags: dict[str, Any] | None = None, status: str | None = None,
                     partial: dict[str, float] | None = None, epochs_done: int = 0) -> None:
        """Finish the trial's MLflow run and keep its record for the progress bar and the front.

        ``partial`` holds what a trial stopped early got to (its last validation accuracy) and
        ``epochs_done`` how far it got; neither counts for the front, which wants full fidelity.
        """
        epochs = result.epochs_done if result else epochs_done
        self.tracker.finish_trial(run_id, state, result, plan.config.to_dict() if result else None, error, tags, status,
                                  metrics=partial, epochs=epochs)
        metrics = result.metrics() if result else {"macs": float(plan.ops.macs), "flops": float(plan.ops.flops),
                                                   "params": float(plan.ops.params), **(partial or {})}
        record = TrialRecord(run_id, f"t{number:03d}-{plan.config.student.name}", number, state, plan.feasible,
                             epochs, plan.config.epochs, metrics,
                             {k: str(v) for k, v in plan.params.items()}, node=(tags or {}).get("rkd.node"))
        self.records = [r for r in self.records if r.run_id != run_id] + [record]
        if self.progress.bar is not None and state != "failed":
            self.progress.bar.update(1)
        self.update_bar()

    # -- 4. finish: the front ---------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED") -> list[TrialRecord]:
        if self.progress.bar is not None:
            self.progress.bar.close()
            self.progress.bar = None
        records = self.tracker.trial_records(self.parent_id)
        front = compute_front(records)
        self.tracker.mark_front(self.parent_id, records, {r.run_id for r in front})
        csv_path = write_csv(front, self.output / "pareto.csv")
        title = f"{self.options.dataset}, budget {self.options.budget} ({len(records)} trials)"
        png_path = plot_front(records, front, self.options.budget.macs, self.output / "pareto.png", title)
        self.tracker.log_parent_files(self.parent_id, [csv_path, png_path])
        trained = [r for r in records if r.state in ("complete", "pruned")]
        over = [r for r in records if r.state == "infeasible"]
        attempted = len(trained) + len(over)
        summary = {
            "trials_done": float(len(trained) + len(over)),
            "trials_trained": float(len(trained)),
            "trials_over_budget": float(len(over)),
            "over_budget_share": len(over) / attempted if attempted else 0.0,
            "front_size": float(len(front)),
        }
        if front:
            summary["best_val_acc"] = max(r.metrics["val_acc"] for r in front)
        self.tracker.log_metrics(self.parent_id, summary)
        self.tracker.end_search(self.parent_id, status)
        write = self.progress.write
        write(f"\nBudget {self.options.budget} = {UNIT_NOTE}.")
        write(f"{len(records)} trials: {len(trained)} trained, {len(over)} over budget and never trained "
              f"({100 * summary['over_budget_share']:.0f}% of candidates), "
              f"{sum(r.state == 'pruned' for r in records)} stopped early, {sum(r.state == 'failed' for r in records)} failed.")
        write(f"Pareto front (validation accuracy vs MACs), tagged rkd.pareto=true in MLflow experiment "
              f"{self.settings.experiment!r} at {self.settings.tracking_uri}:")
        write(front_table(front))
        write(f"Front table: {csv_path}; plot: {png_path}. Export a student with: rkd-search export RUN_ID")
        return front

    def interrupted(self) -> None:
        if self.progress.bar is not None:
            self.progress.bar.close()
            self.progress.bar = None
        if self.tracker is not None and self.parent_id is not None:
            self.tracker.end_search(self.parent_id, "KILLED")
        done = self.finished_trials() if hasattr(self, "study") else 0
        print(f"\ninterrupted after {done} of {self.options.trials} trials: rerun the same command to resume", flush=True)


def run_search(options: SearchOptions) -> list[TrialRecord]:
    search = Search(options)
    search.validate()
    try:
        search.setup()
        if options.backend == "ray":
            from .ray_backend import run_trials
        else:
            from .optuna_backend import run_trials
        run_trials(search)
    except KeyboardInterrupt:
        search.interrupted()
        raise
    except BaseException:
        if search.tracker is not None and search.parent_id is not None:
            search.tracker.end_search(search.parent_id, "FAILED")
        raise
    return search.finish()
