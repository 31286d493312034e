"""Teacher and student models: one ``build_model`` over a registry of families."""

from ._registry import FAMILIES, ModelSpec, build_model, get_family, register_family
from . import mobilenet, resnet, wrn  # noqa: F401  (registers the families)

__all__ = ["FAMILIES", "ModelSpec", "build_model", "get_family", "register_family"]
