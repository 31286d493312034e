"""The MLflow client a search writes through: created once per store (``store_lock``: two processes
creating a fresh SQLite store's schema at once collide), and patient with a store another process
holds locked (``PatientClient``)."""

from __future__ import annotations

import fcntl
import logging
import time
from contextlib import contextmanager

from .settings import TrackingSettings, sqlite_path

log = logging.getLogger(__name__)


@contextmanager
def store_lock(settings: TrackingSettings):
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


LOCK_WAIT_SECONDS = 900.0
"""How long a write waits for a store another process holds locked before the search gives up."""


def _locked(error: BaseException) -> bool:
    return "database is locked" in str(error) or "database table is locked" in str(error)


class PatientClient:
    """An ``MlflowClient`` whose calls wait out a store another process holds locked.

    SQLite lets one writer in at a time; MLflow gives up after about 20 s with ``database is
    locked``, which killed a search while, for instance, another program held the file for a minute.
    Every call retries with a growing pause, saying once that it waits, for up to ``wait`` seconds;
    a locked write was not committed, so retrying it is safe."""

    def __init__(self, client, wait: float = LOCK_WAIT_SECONDS) -> None:
        self._client, self._wait = client, wait

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            deadline, pause = None, 0.5
            while True:
                try:
                    return attribute(*args, **kwargs)
                except Exception as error:
                    if not _locked(error):
                        raise
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self._wait
                        log.warning("the MLflow store is locked by another process (%s); waiting for it, up to %.0f minutes",
                                    type(error).__name__, self._wait / 60)
                    if now > deadline:
                        raise
                    time.sleep(pause)
                    pause = min(5.0, pause * 2)

        return call
