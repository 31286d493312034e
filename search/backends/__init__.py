"""Where a search's trials run, behind one registry: ``--backend NAME`` picks a back-end by name.

A back-end is a module (or any object) that offers five calls, in the order the driver makes them:

    check(options)           refuse bad values of its own options, one line (``UsageError``)
    prepare(options)         start what may start before the search computes (worker processes), or None
    connect(setup, prepared) join or start what the trials run on; the session ``run_trials`` gets
    run_trials(loop, session) -> bool
                             run the study's missing trials through ``loop.lifecycle`` (ask, start, epoch,
                             pause, finish, prune, fail, interrupt) with ``loop.objective`` and the
                             shared data; True when ``--trials`` trials finished, False when the deadline
                             or the compute budget stopped it (``loop.options``)
    close(session)           release what ``prepare`` and ``connect`` started (also after a failure)

Its options are fields of ``search.options.SearchOptions`` marked ``backend=NAME``: they make its
group of ``--help``, and a value given with another back-end is refused. What every back-end needs
lives outside any of them, so a new one (a Slurm or Dask launcher) writes only how its framework's
events reach the lifecycle: the trial lifecycle (``lifecycle``), the promotion rule of
multi-fidelity (``fidelity``), the compute budget and the failure limit (``scheduling``).
``register_backend`` adds one (the tests register a back-end of a few dozen lines this way).

- ``optuna`` (``local``): Optuna's ask-and-tell in the search's process, trials in worker processes.
- ``ray`` (``ray``): Ray Tune trials searched by Optuna, on a local Ray or a cluster.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Backend:
    name: str
    kind: str
    """How messages name it: ``embedded``, ``Ray``."""
    help: str
    module: Any
    """The module that implements it, or its dotted path (imported when the back-end is used)."""

    def load(self) -> Any:
        return importlib.import_module(self.module) if isinstance(self.module, str) else self.module


REGISTRY: dict[str, Backend] = {}


def register_backend(name: str, kind: str, help: str, module: Any) -> Backend:
    """Add (or replace) the back-end ``--backend NAME``; ``module`` offers the five calls above."""
    REGISTRY[name] = Backend(name, kind, help, module)
    return REGISTRY[name]


def get_backend(name: str) -> Any:
    """The implementation of back-end ``name``; ``UsageError`` naming the known ones otherwise."""
    if name not in REGISTRY:
        raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name].load()


def backend_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


register_backend("optuna", "embedded", "in this process, trials in worker processes (default)", f"{__name__}.local")
register_backend("ray", "Ray", "Ray Tune, on a local Ray or a cluster", f"{__name__}.ray")
