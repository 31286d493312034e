"""Search spaces: YAML files shipped with the package, and the define-by-run function that turns one
and a sampler's trial into a student's training config.

- ``_schema``: the sections, validated key by key (the loss section reads the trainer's registry of loss terms);
- ``_file``: a whole file, and the hand-picked students it enqueues;
- ``_load``: built-in spaces by name, a user's file by path;
- ``_plan``: the context a trial is planned against and the plan it makes;
- ``_space``: ``SearchSpace``: the define-by-run function, budget-aware widths, the enqueued students' parameters.
"""

from ._load import SpaceError, builtin_spaces, load_space
from ._plan import TrialContext, TrialPlan
from ._space import Architecture, SearchSpace

__all__ = ["Architecture", "SearchSpace", "SpaceError", "TrialContext", "TrialPlan", "builtin_spaces", "load_space"]
