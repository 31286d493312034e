"""The search's Optuna study: its journal file, its sampler, and one process at a time on it.

The study lives in ``OUTPUT/study.journal`` (Optuna's JournalStorage, one JSON line per change).
A crash mid-write or a full disk can leave a torn last line; ``check_journal`` finds it before
anything is appended, drops only that tail, and refuses a journal damaged anywhere else.

Two processes on one output folder would sweep each other's running trials: ``OutputLock`` holds
an exclusive lock on the folder for the whole run, so a second search there is refused with one
line (the lock goes with the process, even after kill -9).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from rkd_search.trainer.files import atomic_write_bytes

from . import names
from .errors import UsageError

log = logging.getLogger(__name__)

STUDY_FILE = "study.journal"
STUDY_NAME = "rkd-search"
LOCK_FILE = ".rkd-search.lock"
SAMPLERS = ("tpe", "tpe-recipes", "gp", "nsga2", "random")


def journal_path(output: Path) -> Path:
    return output / STUDY_FILE


def check_journal(path: Path, repair: bool = False) -> str | None:
    """Check the journal's lines; with ``repair``, cut a torn last line. Returns what was repaired.

    Raises ``UsageError`` when a line other than the last is not JSON (a damaged file that only a
    backup can fix). Without ``repair`` a torn tail is reported but left in place.
    """
    if not path.exists():
        return None
    content = path.read_bytes()
    if not content:
        return None
    lines = content.split(b"\n")
    tail = lines[-1]  # empty when the file ends with a newline, as Optuna leaves it
    for number, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            raise UsageError(f"{path} is damaged at line {number} of {len(lines) - 1}: restore it from a backup, "
                             "or pass a new --output to start another search") from None
    if not tail:
        return None
    try:
        json.loads(tail)
        fixed, what = content + b"\n", "completed its last line (the newline was missing)"
    except ValueError:
        fixed, what = content[: len(content) - len(tail)], f"dropped a torn last line ({len(tail)} bytes)"
    if repair:
        atomic_write_bytes(path, fixed)
        log.warning("%s: %s", path, what)
    return what


def storage(output: Path):
    """The Optuna storage of a search: the journal file under its output folder."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(journal_path(output))))


def stored_settings(output: Path) -> dict[str, Any] | None:
    """The settings a study in ``output`` was started with, or None when there is no study there
    (an empty journal, left by a process killed before its first write, holds none)."""
    path = journal_path(output)
    if not path.exists() or path.stat().st_size == 0:
        return None
    import optuna

    check_journal(journal_path(output))
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage(output))
    except Exception as error:
        raise UsageError(f"{journal_path(output)} is not a readable rkd-search study ({type(error).__name__}): "
                         "pass a new --output") from None
    return dict(study.user_attrs.get(names.STUDY_SETTINGS, {}))


def startup_trials(trials: int, enqueued: int) -> int:
    """Trials sampled at random before TPE or GP model the results, the enqueued ones included:
    a tenth of the search, at least the enqueued students and two random ones, at most Optuna's
    default 10. Optuna's default (always 10) made every search of 10 trials or fewer a random one."""
    return max(enqueued + 2, min(10, trials // 10))


def sampler_startup(name: str, trials: int, enqueued: int) -> int | None:
    """The startup trials of the samplers that have them (TPE, GP); None for the others."""
    return startup_trials(trials, enqueued) if name in ("tpe", "tpe-recipes", "gp") else None


def make_sampler(name: str, seed: int, existing_trials: int, trials: int, enqueued: int = 0, jobs: int = 1):
    """The study's sampler. TPE's constant liar (RUNNING trials counted as bad, so parallel workers
    do not all ask for one point) is on only when trials run at once: a single worker's RUNNING
    trials are paused multi-fidelity trials, and calling them bad would steer TPE away from them."""
    import optuna

    # a resumed search must not replay the random draws of its first session
    seed = seed + 7919 * existing_trials
    startup = sampler_startup(name, trials, enqueued)
    if name in ("tpe", "tpe-recipes"):
        tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=jobs > 1,
                                         n_startup_trials=startup)
        if name == "tpe":
            return tpe
        from .recipe_sampler import RecipesAroundBest

        return RecipesAroundBest(tpe, startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, trials // 4)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def open_study(output: Path, directions: tuple[str, ...], sampler_name: str, seed: int, trials: int, enqueued: int = 0,
               jobs: int = 1):
    """Create the study, or load it to resume; its journal is checked (and a torn tail cut) first."""
    import optuna

    check_journal(journal_path(output), repair=True)
    store = storage(output)
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=STUDY_NAME, storage=store).trials)
    except KeyError:
        pass
    return optuna.create_study(study_name=STUDY_NAME, storage=store, directions=list(directions),
                               sampler=make_sampler(sampler_name, seed, existing, trials, enqueued, jobs), load_if_exists=True)


class OutputLock:
    """An exclusive lock on a search's output folder, held while the search runs."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.handle = None

    def acquire(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        handle = open(self.output / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"{self.output} is in use by another rkd-search ({owner}): wait for it to finish, "
                             "or pass another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
