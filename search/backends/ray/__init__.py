"""The distributed back-end: the same objective and trial lifecycle as Ray Tune trials searched by Optuna.

- ``cluster``: a local Ray on loopback or a cluster, and the storage every node must see;
- ``tune``: the trainable, the searcher, the rung scheduler and the callback to the lifecycle;
- ``loop``: the search's missing trials as one Tune experiment.

Every MLflow write happens on the driver (workers need no access to the tracking store). Resume:
the study lives in the journal file under ``--output``; a rerun starts a new Tune experiment that
runs only the missing trials, and resumes the trials a stopped driver left RUNNING under their
own numbers and runs.
"""

from .cluster import RaySession, connect
from .loop import run_trials

__all__ = ["RaySession", "connect", "run_trials"]
