"""MLflow tracking: where runs are recorded (settings), the one writer of runs (tracker) and what
each run of a search holds (schema)."""

from .settings import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, TrackingSettings, check_reachable, resolve_settings, sqlite_path
from .tracker import Tracker

__all__ = ["DEFAULT_EXPERIMENT", "DEFAULT_TRACKING_URI", "Tracker", "TrackingSettings", "check_reachable", "resolve_settings",
           "sqlite_path"]
