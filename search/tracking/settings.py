"""Where runs are recorded: the tracking URI and experiment, resolved once, and checked before a search starts.

Flags win, then MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME, then ``mlflow.yaml``, then the
defaults (a SQLite file in the working folder, experiment ``rkd-search``). ``check_reachable``
fails with the fix before anything is created: a server that does not answer, a database driver
that is missing, a SQLite file that cannot be written, MLflow 3's refused plain file store.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

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
        if not create:
            _check_mlflow_tables(path)
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


def _check_mlflow_tables(path: Path) -> None:
    """A command that reads a store must find MLflow's tables there: MLflow itself would create (or
    complete) them, writing its 65 tables into any SQLite file it is pointed at."""
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.tracking.dbmodels import models  # noqa: F401  (declares MLflow's tables on Base)

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
    if "experiments" not in tables or "runs" not in tables:
        raise UsageError(f"{path} is not an MLflow store (it holds no MLflow tables): pass the --tracking-uri the search used")
    missing = sorted(set(Base.metadata.tables) - tables)
    if missing:
        raise UsageError(f"the MLflow store {path} was made by an older MLflow (it lacks {', '.join(missing[:3])}): upgrade it "
                         f"with `mlflow db upgrade sqlite:///{path}`, then rerun")


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
