"""Multi-fidelity: rungs over epochs and the multi-objective promotion rule both back-ends share.

Asynchronous successive halving (Li et al., MLSys 2020) trains every new trial to the first rung
(``--min-epochs``) and promotes the best of each rung to the next (``x eta`` epochs) until
``--epochs``. Which trials are "best" at a rung is decided as Syne Tune's MOASHA does (Schmucker
et al. 2021): the rung's feasible trials are ranked by non-dominated sorting on (validation
accuracy at that rung, MACs), each Pareto layer ordered by an epsilon-net (farthest-point order,
seeded with the layer's most accurate trial) so the promoted set spreads along the front, and the
top ``ceil(n / eta)`` of the n trials recorded at the rung are promotable. Trials no better than
chance (``floor``: the accuracy of guessing the majority class, plus a margin) are ranked after
all others: the cheapest student is always non-dominated, even when it has learned nothing.

Rounding up means a rung holding fewer than eta trials still promotes its best one: the first
trials go all the way, as with Ray's ASHA, and every search ends with fully trained students.

The embedded (Optuna) back-end pauses a trial at each rung (a checkpoint) and promotes it later;
the Ray back-end decides when a trial reaches a rung whether it continues (the stopping variant).
Both call ``promotable`` on the same rung tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

# Optuna user attributes that keep a trial's rung results, so a rerun rebuilds the rung tables.
RUNGS_ATTR = "rkd.rungs"  # {epochs: validation accuracy at that rung}
TARGET_ATTR = "rkd.target"  # the epoch the trial is being trained to


def rungs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """Epochs at which a trial is compared: min, min x eta, ... and always ``max_epochs`` last."""
    if min_epochs < 1 or eta < 2 or min_epochs > max_epochs:
        raise ValueError(f"rungs need 1 <= min epochs ({min_epochs}) <= epochs ({max_epochs}) and eta >= 2 ({eta})")
    levels = []
    epochs = min_epochs
    while epochs < max_epochs:
        levels.append(epochs)
        epochs *= eta
    return levels + [max_epochs]


@dataclass(frozen=True)
class RungEntry:
    """One trial's result at a rung: its number, validation accuracy there, MACs, and whether it
    is within every limit (an infeasible trial is never trained; if one shows up, it never moves up)."""

    number: int
    val_acc: float
    macs: float
    feasible: bool = True


def promotion_order(entries: Sequence[RungEntry], budget_macs: float, floor: float = 0.0) -> list[int]:
    """Trial numbers from most to least promotable: Pareto layers first, an epsilon-net within each;
    trials at or below ``floor`` accuracy (no better than chance) after all the others.

    Objectives are (validation accuracy, MACs / budget), both on [0, 1], so distances in the
    epsilon-net weigh them alike. Identical points keep their trial order.
    """
    entries = [e for e in entries if e.feasible]
    learned = [e for e in entries if e.val_acc > floor]
    guessing = [e for e in entries if e.val_acc <= floor]
    return _sorted(learned, budget_macs) + _sorted(guessing, budget_macs)


def _sorted(entries: Sequence[RungEntry], budget_macs: float) -> list[int]:
    import moocore

    if not entries:
        return []
    points = np.array([[e.val_acc, e.macs / budget_macs] for e in entries], dtype=float)
    ranks = moocore.pareto_rank(points, maximise=[True, False])
    order: list[int] = []
    for rank in sorted(set(ranks.tolist())):
        layer = [i for i in range(len(entries)) if ranks[i] == rank]
        order += _epsilon_net(points, layer, entries)
    return [entries[i].number for i in order]


def _epsilon_net(points: np.ndarray, layer: list[int], entries: Sequence[RungEntry]) -> list[int]:
    """Farthest-point order of ``layer``, starting from its most accurate point (ties: lower trial number)."""
    remaining = sorted(layer, key=lambda i: (-points[i, 0], points[i, 1], entries[i].number))
    order = [remaining.pop(0)]
    while remaining:
        distances = [min(float(np.linalg.norm(points[i] - points[j])) for j in order) for i in remaining]
        best = max(range(len(remaining)), key=lambda k: (distances[k], -entries[remaining[k]].number))
        order.append(remaining.pop(best))
    return order


def promotable(entries: Sequence[RungEntry], eta: int, budget_macs: float, already: Iterable[int] = (),
               floor: float = 0.0) -> list[int]:
    """The trials of a rung that may move up now: the top ``ceil(n / eta)``, less those already promoted."""
    done = set(already)
    feasible = [e for e in entries if e.feasible]
    top = promotion_order(feasible, budget_macs, floor)[: math.ceil(len(feasible) / eta)]
    return [number for number in top if number not in done]


def hopeless(entry: RungEntry, entries: Sequence[RungEntry], eta: int, most_entries: int) -> bool:
    """True when ``entry`` can never be promoted from its rung, whatever trials still arrive there.

    A trial that dominates ``entry`` is ahead of it in every later ordering of the rung, so when at
    least ``ceil(most_entries / eta)`` trials dominate it (``most_entries``: the most trials the
    rung can ever hold), it will not be among the promoted: its checkpoint can go.
    """
    point = (entry.val_acc, entry.macs)
    dominating = sum(
        other.val_acc >= point[0] and other.macs <= point[1] and (other.val_acc > point[0] or other.macs < point[1])
        for other in entries
    )
    return dominating >= math.ceil(most_entries / eta)
