"""The Pareto front of accuracy against operations, how much of the plane it covers, and chance level."""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import numpy as np

from .records import TrialRecord

T = TypeVar("T")

# One-sided z for p = 0.01: a student whose validation accuracy is not this many standard errors
# above the majority-class rate has learned nothing we can tell apart from guessing.
_Z_LEARNED = 2.326


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, macs) a dominates b: at least as accurate with no more MACs, and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(items: Sequence[T], accuracy: Sequence[float], macs: Sequence[float]) -> list[T]:
    """The items that no other item dominates, in increasing MACs (ties are all kept)."""
    points = list(zip(accuracy, macs))
    keep = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return [items[i] for i in sorted(keep, key=lambda i: (points[i][1], -points[i][0]))]


def compute_front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Non-dominated trials on (validation accuracy up, MACs down).

    Only trials that can enter take part (``TrialRecord.eligible``): trained for every planned epoch
    (a trial stopped at a lower rung has a lower-fidelity accuracy), within budget, and better than
    chance (a diverged or untrained student at chance accuracy would otherwise sit on the front as
    the cheapest).
    """
    eligible = [r for r in records if r.eligible]
    return pareto_front(eligible, [r.metrics["val_acc"] for r in eligible], [r.metrics["macs"] for r in eligible])


def standard_error(accuracy: float, images: int) -> float:
    """The binomial standard error of an accuracy measured on ``images`` images."""
    p = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / max(images, 1))


def learned_threshold(majority_share: float, samples: int) -> float:
    """The validation accuracy a student must exceed to count as having learned anything.

    Guessing the most frequent class scores ``majority_share``; the threshold is that rate plus
    2.33 standard errors over ``samples`` validation images (a one-sided test at p = 0.01).
    """
    return min(max(majority_share, 0.0), 1.0) + _Z_LEARNED * standard_error(majority_share, samples)


def hypervolume(front: Sequence[TrialRecord], budget_macs: float, chance: float) -> float:
    """The area the front dominates in (validation accuracy, MACs / budget), from (chance, 1).

    Computed with moocore. 0 for an empty front; at most (1 - chance) for a perfect student at no cost.
    """
    import moocore

    points = np.array([[r.metrics["val_acc"], r.metrics["macs"] / budget_macs] for r in front], dtype=float)
    points = points[(points[:, 0] > chance) & (points[:, 1] < 1.0)] if len(points) else points
    if not len(points):
        return 0.0
    return float(moocore.hypervolume(points, ref=[chance, 1.0], maximise=[True, False]))
