"""Every name a search writes outside itself: MLflow tags and Optuna attributes, declared once.

The ``rkd.`` prefix keeps them apart from MLflow's own (``mlflow.*``) and a user's tags. Other
modules use these constants; ``tests/test_layout.py`` refuses an ``rkd.`` string anywhere else.
"""

from __future__ import annotations

# -- MLflow tags on every run of a search --------------------------------------------------------
ROLE = "rkd.role"
"""``search`` (a parent run), ``teacher`` (a teacher's own run); trials have a parent instead."""
ROLE_SEARCH = "search"
ROLE_TEACHER = "teacher"
ROLE_TRAIN = "train"
"""A student trained again to the end by ``rkd-search train`` (its own run, linked to its trial and search)."""

# -- a trial's child run --------------------------------------------------------------------------
STATE = "rkd.state"
"""The trial's state (``records.TrialState``): running, paused, complete, infeasible, pruned, failed."""
TRIAL = "rkd.trial"
"""The trial's number in the study."""
TRIAL_KEY = "rkd.trial_key"
"""Finds a trial's run again (a resumed trial keeps its run)."""
FEASIBLE = "rkd.feasible"
EPOCHS = "rkd.epochs"
"""Epochs the student trained."""
PARETO = "rkd.pareto"
LEARNED = "rkd.learned"
"""False for a student no better than guessing the majority class."""
NODE = "rkd.node"
"""The Ray node the trial ran on."""
ERROR = "rkd.error"
"""Why the trial failed (a failed trial only; cleared when it resumes)."""
FAILURE = "rkd.failure"
"""How it failed: ``error``, ``crash`` (its process died), ``interrupted``, ``stale``."""
HISTORY = "rkd.history"
"""Earlier interruptions of a trial that resumed, one line each."""
PRUNED = "rkd.pruned"
"""Why multi-fidelity stopped the trial."""
SCORES = "rkd.scores"
"""The zero-cost scores of the trial's untrained student (also logged as ``score.*`` metrics)."""
PRESCREEN = "rkd.prescreen"
"""How many candidates the prescreen scored for this trial."""
COMPILE_FALLBACK = "rkd.compile_fallback"
"""Why the trial's compiled training step went back to eager (its compilation failed)."""
EXPORTED = "rkd.exported"
"""Where ``rkd-search export`` last wrote the student."""

# -- a final training's run (``rkd-search train``) --------------------------------------------------
TRIAL_RUN = "rkd.trial_run"
"""The trial run whose student and recipe were trained again."""
SEARCH_RUN = "rkd.search_run"
"""The search (parent run) the trial belongs to: its data and teacher."""
TRAIN_KEY = "rkd.train_key"
"""Finds a final training's run again (a resumed training keeps its run)."""
TRAIN_ON = "rkd.train_on"
"""The images it trained on: ``train``, or ``train+val`` (then it has no validation figure)."""
REGISTERED = "rkd.registered"
"""``NAME@champion``: the Model Registry entry ``--register`` made."""

# -- a search's parent run ------------------------------------------------------------------------
OUTPUT = "rkd.output"
TEACHER_RUN_ID = "rkd.teacher_run_id"
BUDGET_UNIT = "rkd.budget_unit"
BACKEND = "rkd.backend"
TRIALS_TARGET = "rkd.trials_target"
SAMPLER_STARTUP = "rkd.sampler_startup"
"""Trials TPE or GP sample at random (the hand-picked ones included) before modelling the results."""
STOPPED = "rkd.stopped"
"""``timeout`` when the search stopped at --timeout."""
RAY_STORAGE = "rkd.ray_storage"
RAY_NODES = "rkd.ray_nodes"

# -- a teacher's run --------------------------------------------------------------------------------
TEACHER_DIGEST = "rkd.teacher_digest"

# -- Optuna: the study's and its trials' user attributes --------------------------------------------
STUDY_SETTINGS = "rkd.settings"
"""The flags a study was created with; a rerun with others is refused."""
STUDY_PARENT_RUN = "rkd.parent_run_id"
TRIAL_MACS = "rkd.macs"
TRIAL_RUNGS = "rkd.rungs"
"""{epochs: validation accuracy} at each rung the trial reached (multi-fidelity)."""
TRIAL_TARGET = "rkd.target"
"""The epoch the trial is being trained to."""
TRIAL_SCREENED_OUT = "rkd.screened_out"
"""A prescreen candidate that lost to a better-scored one: never trained."""


def tag_equals(name: str, value: str) -> str:
    """An MLflow search filter: the tag ``name`` equals ``value`` (backquoted: the names hold dots)."""
    return f"tags.`{name}` = '{value}'"
