"""The distributed back-end (``--backend ray``): the same objective and trial lifecycle as Ray Tune
trials searched by Optuna.

- ``cluster``: a local Ray on loopback or a cluster, and the storage every node must see;
- ``tune``: the trainable, the searcher, the rung scheduler and the callback to the lifecycle;
- ``experiment``: the search's missing trials as one Tune experiment.

Every MLflow write happens on the driver (workers need no access to the tracking store). Resume:
the study lives in the journal file under ``--output``; a rerun starts a new Tune experiment that
runs only the missing trials, and resumes the trials a stopped driver left RUNNING under their
own numbers and runs.
"""

from __future__ import annotations

from ...errors import UsageError
from .cluster import RaySession, connect
from .experiment import run_trials


def check(options) -> None:
    """Tune schedules the trials: the local back-end's compute budget has no meaning here."""
    if options.max_student_epochs is not None:
        raise UsageError("--max-student-epochs is for the embedded back-end; with --backend ray use --trials or --timeout")


def prepare(options) -> None:
    """Nothing starts before the search: Ray starts (or is joined) in ``connect``."""
    return None


def close(session: RaySession | None) -> None:
    if session is not None:
        session.close()


__all__ = ["RaySession", "check", "close", "connect", "prepare", "run_trials"]
