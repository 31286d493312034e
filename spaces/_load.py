"""Search-space files: the built-in ones shipped with the package, and a user's YAML file, loaded
and validated (``_schema``) so that an error names the bad key."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from ._file import SpaceFile


class SpaceError(ValueError):
    """A search-space file is missing or invalid; the message names the bad key."""


def builtin_spaces() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__package__).iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str | os.PathLike):
    """Load a built-in space by name (``default``, ``wrn``, ...) or a YAML file by path: a ``SearchSpace``."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpaceError(f"space file {path} does not exist: pass a YAML file or one of {', '.join(builtin_spaces())}")
        try:
            source, text = str(path), path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SpaceError(f"space file {path} is not a text file (not UTF-8): pass a YAML file") from None
        except OSError as error:
            raise SpaceError(f"space file {path} cannot be read ({error.strerror}): pass a readable YAML file") from None
    elif text_name in builtin_spaces():
        source, text = f"{text_name} (built in)", (resources.files(__package__) / f"{text_name}.yaml").read_text()
    else:
        raise SpaceError(f"unknown space {text_name!r}: pass a YAML file or one of {', '.join(builtin_spaces())}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpaceError(f"space {source}:{where} is not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"space {source} must be a YAML mapping with name, student, graph, loss, optim")
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise SpaceError(f"space {source}: {_describe(error)}") from None
    from ._space import SearchSpace

    return SearchSpace(spec, text, source)


def _describe(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"] if not str(part).startswith(("Range", "list[", "float", "int", "str", "bool", "function-")))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key missing"
        if location and re.match(r"[a-z_][a-z0-9_]*: ", message):  # a section's validator naming one of its keys
            messages.append(f"{location}.{message}")
        else:
            messages.append(f"{location}: {message}" if location else message)
    unique = list(dict.fromkeys(messages))
    return "; ".join(unique[:3]) + (f" (and {len(unique) - 3} more)" if len(unique) > 3 else "")
