"""The drivers: CLI, setup, the trial lifecycle, the Optuna and Ray back-ends, MLflow tracking, Pareto front.

    cli.py           the commands (search, pareto, export)
    setup.py         options, validated into a frozen setup before anything is created
    driver.py        start, loop, finish: a search from flags to front
    lifecycle.py     every change of a trial's state (Optuna, MLflow, rungs), for both back-ends
    names.py         the rkd.* tag and attribute names
    objective.py     define-by-run, limits as constraints, what a back-end's loop receives
    prescreen.py     zero-cost prescreening of candidates
    fidelity.py      rungs, the rung table, the promotion rule
    backends/        embedded (Optuna ask/tell + worker processes), ray (cluster, tune, loop)
    tracking/        settings, the MLflow writer, the run schema
    recorder.py      MLflow writes and front upkeep as trials end
    study.py         the Optuna journal, sampler and output lock
    pareto.py        dominance, front, hypervolume, noise
    report.py        console, table, CSV, plot
    export.py        ONNX, TorchScript, int8, LiteRT and student.json
    budget.py        budgets, limits, durations, byte sizes
"""

from .budget import Budget, parse_budget
from .errors import SearchError, UsageError
from .pareto import compute_front, pareto_front
from .records import TrialRecord, TrialState

__all__ = ["Budget", "SearchError", "TrialRecord", "TrialState", "UsageError", "compute_front", "parse_budget", "pareto_front"]
