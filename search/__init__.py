"""The drivers: the commands, the search's options and setup, the trial lifecycle and its back-ends,
MLflow tracking, the Pareto front, the final training and the exports.

    cli.py           the commands (search, pareto, train, export)
    options.py       the search's options, declared once: the command line is made from them
    setup.py         the options validated against the world into a frozen setup before anything is created
    driver.py        a search from flags to front: prepare, validate, start, run the trials, finish
    start.py         the teacher, its targets, the study and the parent run; what the user is told first
    trial_loop.py    what a back-end's loop receives (knows no back-end)
    scheduling.py    what to run next and when to stop: the compute budget, the failure limit, promotion
    lifecycle.py     every change of a trial's state (Optuna, MLflow, rungs), for every back-end
    names.py         the rkd.* tag and attribute names
    objective.py     define-by-run, limits as constraints, the options a loop reads
    prescreen.py     zero-cost prescreening of candidates
    fidelity.py      rungs, the rung table, the promotion rule
    backends/        the registry; local (Optuna ask/tell + worker processes), ray (cluster, tune, experiment)
    tracking/        settings, the MLflow client and writer, the run schema
    recorder.py      MLflow writes and front upkeep as trials end
    study.py         the Optuna journal, sampler and output lock
    recipe_sampler.py  --sampler tpe-recipes: TPE on the recipe of the most accurate architecture so far
    pareto.py        dominance, front, hypervolume, noise
    report.py        console, progress bars, table, CSV, plot
    students.py      trained students in MLflow: refusals, the best of a front, a search's data
    train.py         a picked student trained to the end (rkd-search train)
    recipes.py       the final training's recipes (rkd-search train --recipe)
    export.py        student.json and the formats' registry (formats/: onnx, torchscript, litert)
    budget.py        budgets, limits, durations, byte and image sizes
    stopping.py      SIGTERM and SIGHUP as Ctrl-C
"""

from .budget import Budget, parse_budget
from .errors import SearchError, UsageError
from .options import SearchOptions
from .pareto import compute_front, pareto_front
from .records import TrialRecord, TrialState

__all__ = ["Budget", "SearchError", "SearchOptions", "TrialRecord", "TrialState", "UsageError", "compute_front", "parse_budget",
           "pareto_front"]
