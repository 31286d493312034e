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

import fcntl
import io
import json
import logging
import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from rkd_search.trainer import EpochReport, TrainResult

from .errors import UsageError
from .records import TrialRecord, TrialState

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "rkd-search"
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "oracle")


@dataclass(frozen=True)
class TrackingSettings:
    tracking_uri: str
    experiment: str
    artifact_location: str | None = None

    @property
    def store_id(self) -> str:
        """The store, comparable across working folders: a SQLite file by its absolute path."""
        db = sqlite_path(self.tracking_uri)
        return f"sqlite:///{db.resolve()}" if db is not None else self.tracking_uri.rstrip("/")


def resolve_settings(config_path: str | None = None, tracking_uri: str | None = None, experiment: str | None = None) -> TrackingSettings:
    """Flags, then MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME, then mlflow.yaml, then defaults.

    ``config_path`` defaults to ``./mlflow.yaml`` when that file exists.
    """
    values: dict[str, Any] = {}
    path = Path(config_path) if config_path else Path("mlflow.yaml")
    if config_path and not path.is_file():
        raise UsageError(f"MLflow config {path} does not exist: pass an existing --mlflow-config or leave it out")
    if path.is_file():
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UsageError(f"MLflow config {path} is not valid YAML ({getattr(error, 'problem', error)}); fix or remove it") from None
        if not isinstance(values, dict):
            raise UsageError(f"MLflow config {path} must be a mapping of tracking_uri, experiment, artifact_location")
        unknown = set(values) - {"tracking_uri", "experiment", "artifact_location"}
        if unknown:
            raise UsageError(f"MLflow config {path}: unknown key {sorted(unknown)[0]!r} (allowed: tracking_uri, experiment, artifact_location)")
    return TrackingSettings(
        tracking_uri=str(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or values.get("tracking_uri") or DEFAULT_TRACKING_URI),
        experiment=str(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or values.get("experiment") or DEFAULT_EXPERIMENT),
        artifact_location=values.get("artifact_location"),
    )


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def check_reachable(settings: TrackingSettings, create: bool = True) -> None:
    """Fail early, with the fix, when runs could not be recorded at the tracking URI."""
    uri = settings.tracking_uri
    fix = "start `mlflow server` there, or pass --tracking-uri sqlite:///mlflow.db"
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (OSError, urllib.error.URLError) as error:
            reason = getattr(error, "reason", error)
            raise UsageError(f"cannot reach the MLflow tracking server at {uri} ({reason}): {fix}") from None
    elif uri.startswith("sqlite:"):
        path = sqlite_path(uri)
        if path is None:
            raise UsageError(f"tracking URI {uri} is not a SQLite file URI: write sqlite:///path/to/mlflow.db")
        if not create and not path.is_file():
            raise UsageError(f"no MLflow store at {path}: pass the --tracking-uri the search used")
        _check_sqlite_writable(path)
    elif uri.startswith("file:") or "://" not in uri:
        raise UsageError(f"tracking URI {uri} is a plain file store, which MLflow 3 refuses: use sqlite:///path/to/mlflow.db")
    elif uri.split("://")[0].split("+")[0] in _DATABASE_SCHEMES:
        _check_database(uri)
    else:
        raise UsageError(f"tracking URI {uri}: use sqlite:///path/to/mlflow.db, http(s)://HOST:PORT of an mlflow server, "
                         f"or a database URI ({', '.join(_DATABASE_SCHEMES)})")


def _check_database(uri: str) -> None:
    """A database store needs its SQLAlchemy driver installed and the server answering."""
    import sqlalchemy

    shown = uri.split("@")[-1]  # never print a password
    try:
        engine = sqlalchemy.create_engine(uri)
    except ModuleNotFoundError as error:
        raise UsageError(f"tracking URI ...@{shown} needs the database driver {error.name!r}: pip install it "
                         "(e.g. psycopg2-binary for postgresql, pymysql for mysql+pymysql)") from None
    except Exception as error:
        raise UsageError(f"tracking URI ...@{shown} is not a database URI SQLAlchemy understands ({type(error).__name__})") from None
    try:
        with engine.connect():
            pass
    except Exception as error:
        reason = str(getattr(error, "orig", error)).splitlines()[0][:200]
        raise UsageError(f"cannot connect to the tracking database ...@{shown} ({reason}): start it, or pass --tracking-uri sqlite:///mlflow.db") from None
    finally:
        engine.dispose()


def _check_sqlite_writable(path: Path) -> None:
    """The store can be opened, or created later, without creating anything now (validation leaves no trace)."""
    fix = "pass a writable --tracking-uri sqlite:///DIR/mlflow.db"
    if path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                connection.execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.Error as error:
            raise UsageError(f"cannot open the MLflow store {path} ({error}): {fix}") from None
        if not os.access(path, os.W_OK):
            raise UsageError(f"the MLflow store {path} is read-only: {fix}")
        return
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create the MLflow store {path} ({folder} is not a writable folder): {fix}")


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def _store_lock(settings: TrackingSettings):
    """Serialise the creation of a SQLite store between processes: two searches starting at once on a
    fresh ``mlflow.db`` would otherwise both create its schema (``duplicate column name``)."""
    db = sqlite_path(settings.tracking_uri)
    if db is None:
        yield
        return
    db.absolute().parent.mkdir(parents=True, exist_ok=True)
    with open(db.absolute().with_name(f".{db.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    def __init__(self, settings: TrackingSettings) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        with _store_lock(settings):
            self.client = MlflowClient(tracking_uri=settings.tracking_uri)
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
        existing = self.search(f"tags.`rkd.role` = 'teacher' and tags.`rkd.teacher_digest` = '{digest}'")
        if existing:
            return existing[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"teacher-{name}", tags={"rkd.role": "teacher", "rkd.teacher_digest": digest})
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
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"rkd.role": "search", **{k: str(v) for k, v in tags.items()}})
        self._log(run.info.run_id, params=params)
        self._log_files(run.info.run_id, files)
        return run.info.run_id

    def end_search(self, parent_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_id, status)

    # -- trials --------------------------------------------------------------------------------------
    def find_trial(self, parent_id: str, key: str) -> str | None:
        """The child run already recorded for a trial key (a resumed or restored trial keeps its run)."""
        runs = self.search(f"tags.mlflow.parentRunId = '{parent_id}' and tags.`rkd.trial_key` = '{key}'")
        return runs[0].info.run_id if runs else None

    def start_trial(self, parent_id: str, number: int, key: str, name: str, params: dict[str, Any],
                    metrics: dict[str, float], feasible: bool, tags: dict[str, Any] | None = None) -> str:
        existing = self.find_trial(parent_id, key)
        run_tags = {"mlflow.parentRunId": parent_id, "rkd.trial": number, "rkd.trial_key": key, "rkd.state": TrialState.RUNNING,
                    "rkd.feasible": str(feasible).lower(), **(tags or {})}
        if existing:
            run_id = existing
            self.client.update_run(run_id, status="RUNNING")
        else:  # created with its key, so a process killed right after finds it again instead of leaving an orphan
            run_id = self.client.create_run(self.experiment_id, run_name=f"t{number:03d}-{name}",
                                           tags={k: str(v) for k, v in run_tags.items()}).info.run_id
        self._log(run_id, params=params, metrics=metrics, tags=run_tags)  # params again: the same values are accepted
        return run_id

    def log_epoch(self, run_id: str, report: EpochReport) -> None:
        metrics = {"epoch.val_acc": report.val_acc, "epoch.train_loss": report.train_loss, "epoch.lr": report.lr,
                   "epoch.seconds": report.seconds}
        metrics.update({f"epoch.loss.{name}": value for name, value in report.loss_parts.items()})
        self._log(run_id, metrics=metrics, step=report.epoch)

    def finish_trial(self, run_id: str, state: TrialState, result: TrainResult | None = None, student: dict[str, Any] | None = None,
                     error: str | None = None, tags: dict[str, Any] | None = None, status: str | None = None,
                     metrics: dict[str, float] | None = None, epochs: int = 0) -> None:
        """End (or pause) a trial's run: its metrics, the student as artifacts, its tags and status.

        With a finished ``result``, ``student`` (the spec, config and preprocessing of
        ``spec.json``) and the weights are logged. Without one (over budget, stopped early, failed,
        paused), ``metrics`` and ``epochs`` say how far it got.
        """
        state = TrialState(state)
        run_tags = {"rkd.state": state, **(tags or {})}
        metrics = dict(metrics or {})
        if result is not None:
            metrics.update(result.metrics())
            run_tags["rkd.epochs"] = result.epochs_done
            files: dict[str, bytes | str] = {"spec.json": json.dumps(
                {"format": "rkd-search/student-v1", "spec": result.spec.to_dict(), **(student or {}),
                 "input_shape": list(result.input_shape),
                 "macs": result.macs, "flops": result.flops, "params": result.params}, indent=2)}
            import torch

            buffer = io.BytesIO()
            torch.save(result.state_dict, buffer)
            files["weights.pt"] = buffer.getvalue()
            self._log_files(run_id, files, "student")
        else:
            run_tags.setdefault("rkd.epochs", epochs)
        if error:
            run_tags["rkd.error"] = error[:5000]
        self._log(run_id, metrics=metrics, tags=run_tags)
        run_status = status or state.run_status
        if run_status in ("RUNNING", "SCHEDULED"):
            self.client.update_run(run_id, status=run_status)
        else:
            self.client.set_terminated(run_id, run_status)

    # -- reading back ---------------------------------------------------------------------------------
    def trial_records(self, parent_id: str) -> list[TrialRecord]:
        records = []
        for run in self.search(f"tags.mlflow.parentRunId = '{parent_id}'"):
            tags, data = run.data.tags, run.data
            pareto = tags.get("rkd.pareto")
            records.append(TrialRecord(
                run_id=run.info.run_id,
                name=run.info.run_name,
                number=int(tags.get("rkd.trial", -1)),
                state=tags.get("rkd.state", TrialState.FAILED),
                feasible=tags.get("rkd.feasible") == "true",
                epochs=int(tags.get("rkd.epochs", 0) or 0),
                epochs_planned=int(data.params.get("train.epochs", 0) or 0),
                metrics=dict(data.metrics),
                params=dict(data.params),
                pareto=None if pareto is None else pareto == "true",
                node=tags.get("rkd.node"),
                learned=tags.get("rkd.learned", "true") == "true",
            ))
        return sorted(records, key=lambda r: r.number)

    def latest_search(self, output: str | None = None) -> str:
        """The most recent parent run (of ``output`` when given)."""
        query = "tags.`rkd.role` = 'search'"
        if output:
            query += f" and tags.`rkd.output` = '{output}'"
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
                self.client.set_tag(record.run_id, "rkd.pareto", str(on_front).lower())
                record.pareto = on_front

    def log_parent_files(self, parent_id: str, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(parent_id, str(path))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self._log(run_id, tags=tags)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self._log(run_id, metrics=metrics, step=step)
