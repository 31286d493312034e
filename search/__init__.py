"""The search drivers: CLI, budget, objective, Optuna and Ray back-ends, MLflow tracking, Pareto front."""

from .budget import Budget, parse_budget
from .errors import UsageError
from .pareto import pareto_front

__all__ = ["Budget", "UsageError", "parse_budget", "pareto_front"]
