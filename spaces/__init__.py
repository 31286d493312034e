"""Search spaces: YAML files shipped with the package, and the define-by-run function that turns one
and a sampler's trial into a student's training config."""

from ._space import Architecture, SearchSpace, SpaceError, TrialContext, TrialPlan, builtin_spaces, load_space

__all__ = ["Architecture", "SearchSpace", "SpaceError", "TrialContext", "TrialPlan", "builtin_spaces", "load_space"]
