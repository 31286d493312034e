"""Multi-fidelity: rungs over epochs, the rung table, and the promotion rule both back-ends share.

Asynchronous successive halving (Li et al., MLSys 2020) trains every new trial to the first rung
(``--min-epochs``) and promotes the best of each rung to the next (``x eta`` epochs) until
``--epochs``. Which trials are "best" at a rung is decided as Syne Tune's MOASHA does (Schmucker
et al. 2021): the rung's feasible trials are ranked by non-dominated sorting on (validation
accuracy at that rung, MACs), each Pareto layer ordered by an epsilon-net (farthest-point order,
seeded with the layer's most accurate trial) so the promoted set spreads along the front, and the
top ``floor(n / eta)`` of the n trials recorded at the rung are promotable. Trials no better than
chance (``floor``: the accuracy of guessing the majority class, plus a margin) are ranked after
all others: the cheapest student is always non-dominated, even when it has learned nothing.

Rounding down means a rung promotes nothing until it holds eta results, and then exactly one
trial in eta: with ``ceil`` the first trial of every rung went straight up, and 43% of a short
search's trials reached the second rung instead of a third. When no new trial can arrive any more
(the search's last trials), ``finishing`` promotes with ``ceil``, so the best paused trials of
every rung still finish and the search ends with fully trained students.

The embedded back-end pauses a trial at each rung (a checkpoint) and promotes it later; the Ray
back-end decides when a trial reaches a rung whether it continues (the stopping variant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .pareto import dominates


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


def promoted_count(entries: int, eta: int, finishing: bool = False) -> int:
    """How many of a rung's ``entries`` move up: ``floor(n / eta)``, or ``ceil`` when the search is
    finishing (no new trial can reach the rung any more)."""
    return math.ceil(entries / eta) if finishing else entries // eta


def promotable(entries: Sequence[RungEntry], eta: int, budget_macs: float, already: Iterable[int] = (),
               floor: float = 0.0, finishing: bool = False) -> list[int]:
    """The trials of a rung that may move up now: the best not yet promoted, while the rung has
    promoted fewer than ``promoted_count`` of its trials (those ``already`` promoted count, so a
    rung of n results never sends up more than floor(n / eta) of them, or ceil when finishing)."""
    done = set(already) & {e.number for e in entries}
    slots = promoted_count(sum(e.feasible for e in entries), eta, finishing) - len(done)
    waiting = [number for number in promotion_order(entries, budget_macs, floor) if number not in done]
    return waiting[: max(0, slots)]


def hopeless(entry: RungEntry, entries: Sequence[RungEntry], eta: int, most_entries: int) -> bool:
    """True when ``entry`` can never be promoted from its rung, whatever trials still arrive there.

    A trial that dominates ``entry`` is ahead of it in every later ordering of the rung. The most
    a rung can ever promote is ``ceil(most_entries / eta)`` (``most_entries``: the most trials it
    can ever hold, promoted with the finishing rule), so a trial dominated by at least that many
    will never move up: its checkpoint can go.
    """
    point = (entry.val_acc, entry.macs)
    dominating = sum(dominates((other.val_acc, other.macs), point) for other in entries)
    return dominating >= promoted_count(most_entries, eta, finishing=True)


@dataclass
class RungTable:
    """The rungs' results and where every alive trial stands; ``Lifecycle.rung_table`` rebuilds it
    from the study, the back-ends keep it current as trials report."""

    rungs: list[int]
    trials_target: int
    """``--trials``: how many trials the search will start in all."""
    entries: dict[int, list[RungEntry]] = field(default_factory=dict)
    reached: dict[int, int] = field(default_factory=dict)
    """Alive trial number -> the highest rung it reached (0: none yet)."""
    targets: dict[int, int] = field(default_factory=dict)
    """Alive trial number -> the epoch it is being trained to."""
    started: int = 0
    """Trials started and not failed (infeasible ones included)."""

    def __post_init__(self) -> None:
        self.entries = {r: list(self.entries.get(r, [])) for r in self.rungs}

    def load(self, number: int, results: dict[int, float], macs: float | None, alive: bool, target: int) -> None:
        """A trial read back from the study: its rung results, and where it stands if alive."""
        self.started += 1
        for epochs, val_acc in results.items():
            if epochs in self.entries and macs is not None:
                self.entries[epochs].append(RungEntry(number, val_acc, macs))
        if alive:
            self.reached[number] = max(results, default=0)
            self.targets[number] = target

    def record(self, number: int, epochs: int, val_acc: float, macs: float) -> None:
        self.entries[epochs] = [e for e in self.entries[epochs] if e.number != number] + [RungEntry(number, val_acc, macs)]
        self.reached[number] = epochs

    def train_to(self, number: int, until: int) -> None:
        self.targets[number] = until
        self.reached.setdefault(number, 0)

    def forget(self, number: int) -> None:
        """The trial ended (finished, pruned, failed): no longer alive."""
        self.reached.pop(number, None)
        self.targets.pop(number, None)

    def promoted_from(self, rung: int) -> set[int]:
        """Trials of ``rung`` already promoted: recorded at a higher rung, or being trained to one."""
        higher = {e.number for r in self.rungs if r > rung for e in self.entries[r]}
        return higher | {n for n, target in self.targets.items() if target > rung}

    def most_entries(self, rung: int) -> int:
        """The most trials ``rung`` can ever hold: those there, plus every alive trial below it and
        every trial not started yet."""
        below = sum(1 for reached in self.reached.values() if reached < rung)
        return len(self.entries[rung]) + below + max(0, self.trials_target - self.started)

    def paused(self, running: Iterable[int] = ()) -> list[int]:
        """Alive trials waiting at a rung (not being trained now)."""
        busy = set(running)
        return [n for n, reached in self.reached.items() if reached and self.targets.get(n, 0) <= reached and n not in busy]

    def hopeless(self, eta: int) -> list[int]:
        """Paused trials that no later trial can help up (see ``hopeless``)."""
        out = []
        for number in self.paused():
            rung = self.reached[number]
            entries = self.entries[rung]
            entry = next(e for e in entries if e.number == number)
            if hopeless(entry, entries, eta, self.most_entries(rung)):
                out.append(number)
        return out

    def promotion(self, eta: int, budget_macs: float, floor: float, running: Iterable[int] = (),
                  finishing: bool = False) -> tuple[int, int] | None:
        """(trial, next rung) of the first promotable paused trial, from the highest rung down."""
        paused = set(self.paused(running))
        for index in range(len(self.rungs) - 2, -1, -1):
            rung = self.rungs[index]
            for number in promotable(self.entries[rung], eta, budget_macs, self.promoted_from(rung), floor, finishing):
                if number in paused:
                    return number, self.rungs[index + 1]
        return None

    def epochs_to_finish(self, number: int) -> int:
        """Epochs a paused trial still needs to reach the last rung."""
        return self.rungs[-1] - self.reached.get(number, 0)
