"""The drivers: CLI, budget, objective, Optuna and Ray back-ends, MLflow tracking, Pareto front."""

from .budget import Budget, parse_budget
from .errors import SearchError, UsageError
from .pareto import compute_front, pareto_front
from .records import TrialRecord, TrialState

__all__ = ["Budget", "SearchError", "TrialRecord", "TrialState", "UsageError", "compute_front", "parse_budget", "pareto_front"]
