"""MLflow tracking: the one place that writes runs.

Layout of an experiment:
- a teacher run per teacher (tag ``rkd.role = teacher``), shared by every search that uses it;
- a parent run per search (``rkd.role = search``), referring to its teacher run;
- one nested child run per trial, named ``t007-wrn16_0.75``, with the sampled values as dotted
  params, per-epoch metrics (``epoch.*``), final metrics, ``rkd.*`` tags and the student's spec
  and weights as artifacts that load without unpickling code.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so the
driver of any back-end can log any trial.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from rkd_search.trainer import EpochReport, TrainResult

from .. import names
from ..errors import UsageError
from ..records import TrialRecord, TrialState
from .client import PatientClient, store_lock
from .settings import TrackingSettings, sqlite_path

log = logging.getLogger(__name__)

def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    def __init__(self, settings: TrackingSettings) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        with store_lock(settings):
            self.client = PatientClient(MlflowClient(tracking_uri=settings.tracking_uri))
            experiment = self.client.get_experiment_by_name(settings.experiment)
            if experiment is None:
                location = settings.artifact_location
                db = sqlite_path(settings.tracking_uri)
                if location is None and db is not None:
                    location = (db.resolve().parent / "mlartifacts").as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(settings.experiment, artifact_location=location)
                except Exception:  # created meanwhile by another process (a server store)
                    experiment = self.client.get_experiment_by_name(settings.experiment)
                    if experiment is None:
                        raise
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    raise UsageError(f"MLflow experiment {settings.experiment!r} is deleted: restore it or pass another --experiment")
                self.experiment_id = experiment.experiment_id

    # -- generic helpers ------------------------------------------------------------------------
    def _log(self, run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
             tags: dict[str, Any] | None = None, step: int = 0) -> None:
        from mlflow.entities import Metric, Param, RunTag

        stamp = _now_ms()
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), stamp, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def _log_files(self, run_id: str, files: dict[str, bytes | str], artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as folder:
            for name, content in files.items():
                target = Path(folder) / name
                target.write_bytes(content if isinstance(content, bytes) else content.encode())
            self.client.log_artifacts(run_id, folder, artifact_path)

    def search(self, filter_string: str, order_by: list[str] | None = None, max_results: int = 5000):
        return self.client.search_runs([self.experiment_id], filter_string, max_results=max_results, order_by=order_by)

    def run_exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    # -- teacher ------------------------------------------------------------------------------------
    def teacher_run(self, digest: str, name: str, params: dict[str, Any], metrics: dict[str, float], checkpoint: Path | None) -> str:
        """The teacher's own run (not nested), found by its weights' digest or created once."""
        existing = self.search(f"{names.tag_equals(names.ROLE, names.ROLE_TEACHER)} and {names.tag_equals(names.TEACHER_DIGEST, digest)}")
        if existing:
            return existing[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"teacher-{name}", tags={names.ROLE: names.ROLE_TEACHER, names.TEACHER_DIGEST: digest})
        self._log(run.info.run_id, metrics=metrics, params=params)
        if checkpoint is not None and checkpoint.is_file():
            self.client.log_artifact(run.info.run_id, str(checkpoint), "teacher")
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    # -- the search's parent run ---------------------------------------------------------------------
    def start_search(self, name: str, params: dict[str, Any], tags: dict[str, Any], files: dict[str, str], resume_id: str | None = None) -> str:
        if resume_id and self.run_exists(resume_id):
            self.client.update_run(resume_id, status="RUNNING")
            return resume_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={names.ROLE: names.ROLE_SEARCH, **{k: str(v) for k, v in tags.items()}})
        self._log(run.info.run_id, params=params)
        self._log_files(run.info.run_id, files)
        return run.info.run_id

    def end_search(self, parent_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_id, status)

    # -- trials --------------------------------------------------------------------------------------
    def find_trial(self, parent_id: str, key: str) -> str | None:
        """The child run already recorded for a trial key (a resumed or restored trial keeps its run)."""
        runs = self.search(f"tags.mlflow.parentRunId = '{parent_id}' and {names.tag_equals(names.TRIAL_KEY, key)}")
        return runs[0].info.run_id if runs else None

    def start_trial(self, parent_id: str, number: int, key: str, name: str, params: dict[str, Any],
                    metrics: dict[str, float], feasible: bool, tags: dict[str, Any] | None = None) -> str:
        existing = self.find_trial(parent_id, key)
        run_tags = {"mlflow.parentRunId": parent_id, names.TRIAL: number, names.TRIAL_KEY: key, names.STATE: TrialState.RUNNING,
                    names.FEASIBLE: str(feasible).lower(), **(tags or {})}
        if existing:
            run_id = existing
            self.client.update_run(run_id, status="RUNNING")
            self._clear_failure(run_id)
        else:  # created with its key, so a process killed right after finds it again instead of leaving an orphan
            run_id = self.client.create_run(self.experiment_id, run_name=f"t{number:03d}-{name}",
                                           tags={k: str(v) for k, v in run_tags.items()}).info.run_id
        self._log(run_id, params=params, metrics=metrics, tags=run_tags)  # params again: the same values are accepted
        return run_id

    def _clear_failure(self, run_id: str) -> None:
        """A trial that resumes is no longer failed: its failure tags go, kept as a line of ``rkd.history``."""
        tags = self.client.get_run(run_id).data.tags
        if names.FAILURE not in tags and names.ERROR not in tags:
            return
        first_line = (tags.get(names.ERROR) or "").strip().splitlines()[:1]
        entry = f"{tags.get(names.FAILURE, 'failed')}: {first_line[0][:300] if first_line else ''}".strip()
        history = [line for line in tags.get(names.HISTORY, "").splitlines() if line] + [entry]
        self.client.set_tag(run_id, names.HISTORY, "\n".join(history)[-5000:])
        for key in (names.FAILURE, names.ERROR):
            if key in tags:
                self.client.delete_tag(run_id, key)

    def log_epoch(self, run_id: str, report: EpochReport) -> None:
        metrics = {"epoch.val_acc": report.val_acc, "epoch.train_loss": report.train_loss, "epoch.lr": report.lr,
                   "epoch.seconds": report.seconds}
        metrics.update({f"epoch.loss.{name}": value for name, value in report.loss_parts.items()})
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}  # no validation images: no epoch.val_acc
        self._log(run_id, metrics=finite, step=report.epoch)

    def finish_trial(self, run_id: str, state: TrialState, result: TrainResult | None = None, student: dict[str, Any] | None = None,
                     error: str | None = None, tags: dict[str, Any] | None = None, status: str | None = None,
                     metrics: dict[str, float] | None = None, epochs: int = 0) -> None:
        """End (or pause) a trial's run: its metrics, the student as artifacts, its tags and status.

        With a finished ``result``, ``student`` (the spec, config and preprocessing of
        ``spec.json``) and the weights are logged. Without one (over budget, stopped early, failed,
        paused), ``metrics`` and ``epochs`` say how far it got.
        """
        state = TrialState(state)
        run_tags = {names.STATE: state, **(tags or {})}
        metrics = dict(metrics or {})
        if result is not None:
            metrics.update(result.metrics())
            run_tags[names.EPOCHS] = result.epochs_done
            self.log_student(run_id, result, student)
        else:
            run_tags.setdefault(names.EPOCHS, epochs)
        if error:
            run_tags[names.ERROR] = error[:5000]
        self._log(run_id, metrics=metrics, tags=run_tags)
        run_status = status or state.run_status
        if run_status in ("RUNNING", "SCHEDULED"):
            self.client.update_run(run_id, status=run_status)
        else:
            self.client.set_terminated(run_id, run_status)

    def log_student(self, run_id: str, result: TrainResult, student: dict[str, Any] | None = None) -> None:
        """The trained student as the run's ``student/`` artifacts: ``spec.json`` (its spec, ``student``'s
        preprocessing, classes and recipe, its input shape and costs) and ``weights.pt`` (a plain state_dict)."""
        import torch

        files: dict[str, bytes | str] = {"spec.json": json.dumps(
            {"format": "rkd-search/student-v1", "spec": result.spec.to_dict(), **(student or {}),
             "input_shape": list(result.input_shape),
             "macs": result.macs, "flops": result.flops, "params": result.params}, indent=2)}
        buffer = io.BytesIO()
        torch.save(result.state_dict, buffer)
        files["weights.pt"] = buffer.getvalue()
        self._log_files(run_id, files, "student")

    # -- final trainings ------------------------------------------------------------------------------
    def train_run(self, key: str, name: str, params: dict[str, Any], tags: dict[str, Any]) -> tuple[str, str]:
        """The run of a final training, found by its key (a resumed training keeps its run) or created;
        returns (run id, its state tag)."""
        existing = self.search(names.tag_equals(names.TRAIN_KEY, key), max_results=1)
        if existing:
            run = existing[0]
            return run.info.run_id, run.data.tags.get(names.STATE, TrialState.RUNNING)
        run_tags = {names.ROLE: names.ROLE_TRAIN, names.TRAIN_KEY: key, names.STATE: TrialState.RUNNING, **tags}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v) for k, v in run_tags.items()}).info.run_id
        self._log(run_id, params=params)
        return run_id, TrialState.RUNNING

    def last_step(self, run_id: str, metric: str) -> int:
        """The last step ``metric`` was logged at on the run (0 when never)."""
        return max((m.step for m in self.client.get_metric_history(run_id, metric)), default=0)

    def set_status(self, run_id: str, status: str) -> None:
        if status in ("RUNNING", "SCHEDULED"):
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status)

    def log_model(self, run_id: str, model, example, card: dict[str, Any], register: str | None = None) -> tuple[str, str | None]:
        """Log ``model`` as the run's MLflow model ``model`` (torch.export's pt2 format: it loads without
        running pickled code, ``mlflow.pytorch.load_model``), with a signature from ``example`` and
        ``card`` (preprocessing, classes) in its metadata. With ``register``, a new version of that
        registered model, which the alias ``champion`` then points at. Returns (model URI, version)."""
        import mlflow
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            logits = model(torch.from_numpy(example)).numpy()
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        with mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id):
            # the pt2 file needs torch alone: said outright, as MLflow's inference (a subprocess that
            # imports the model again) took 14 of a 1-epoch run's 50 s
            requirements = [f"torch=={torch.__version__.split('+')[0]}"]
            info = mlflow.pytorch.log_model(model, name="model", input_example=example, signature=infer_signature(example, logits),
                                            serialization_format="pt2", metadata=card, registered_model_name=register,
                                            pip_requirements=requirements)
        version = None
        if register:
            version = str(info.registered_model_version)
            self.client.set_registered_model_alias(register, "champion", version)
        return info.model_uri, version

    # -- reading back ---------------------------------------------------------------------------------
    def trial_records(self, parent_id: str) -> list[TrialRecord]:
        records = []
        for run in self.search(f"tags.mlflow.parentRunId = '{parent_id}'"):
            tags, data = run.data.tags, run.data
            pareto = tags.get(names.PARETO)
            records.append(TrialRecord(
                run_id=run.info.run_id,
                name=run.info.run_name,
                number=int(tags.get(names.TRIAL, -1)),
                state=tags.get(names.STATE, TrialState.FAILED),
                feasible=tags.get(names.FEASIBLE) == "true",
                epochs=int(tags.get(names.EPOCHS, 0) or 0),
                epochs_planned=int(data.params.get("train.epochs", 0) or 0),
                metrics=dict(data.metrics),
                params=dict(data.params),
                pareto=None if pareto is None else pareto == "true",
                node=tags.get(names.NODE),
                learned=tags.get(names.LEARNED, "true") == "true",
            ))
        return sorted(records, key=lambda r: r.number)

    def latest_search(self, output: str | None = None) -> str:
        """The most recent parent run (of ``output`` when given)."""
        query = names.tag_equals(names.ROLE, names.ROLE_SEARCH)
        if output:
            query += f" and {names.tag_equals(names.OUTPUT, output)}"
        runs = self.search(query, order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            where = f" for output {output}" if output else ""
            raise UsageError(f"no rkd-search run in experiment {self.settings.experiment!r} at {self.settings.tracking_uri}{where}: "
                             "pass the --tracking-uri, --experiment and --output the search used")
        return runs[0].info.run_id

    def mark_front(self, records: Iterable[TrialRecord], front_ids: set[str]) -> None:
        """Tag every trial ``rkd.pareto`` true or false; only the tags that change are written."""
        for record in records:
            on_front = record.run_id in front_ids
            if record.pareto is not on_front:
                self.client.set_tag(record.run_id, names.PARETO, str(on_front).lower())
                record.pareto = on_front

    def log_parent_files(self, parent_id: str, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(parent_id, str(path))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self._log(run_id, tags=tags)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self._log(run_id, metrics=metrics, step=step)
