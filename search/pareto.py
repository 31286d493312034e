"""The Pareto front of accuracy against operations."""

from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, macs) a dominates b: at least as accurate with no more MACs, and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(items: Sequence[T], accuracy: Sequence[float], macs: Sequence[float]) -> list[T]:
    """The items that no other item dominates, in increasing MACs (ties are all kept)."""
    points = list(zip(accuracy, macs))
    keep = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return [items[i] for i in sorted(keep, key=lambda i: (points[i][1], -points[i][0]))]
