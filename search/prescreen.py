"""``--prescreen N``: the sampler proposes N feasible candidates per trained trial, and only the
best-scored one trains.

Each candidate's untrained student is scored by the zero-cost proxies (``trainer.proxies``, about
a second each). Which candidate trains: the one with the best mean rank over ``PROXIES`` (what
``bench/proxy_fixed_recipe.py`` measured best: MACs; see docs/benchmarks.md). The other
candidates are told to Optuna as FAIL with ``rkd.screened_out`` set: FAIL keeps them out of the
sampler's model (a candidate a weak proxy disliked is not evidence that its region is bad) and
out of ``--trials``; they get no MLflow run, and the trained trial records how many were scored
(``rkd.prescreen``) and its own scores (``score.*`` metrics).

Candidates over a limit are told as infeasible, as without the prescreen: the sampler learns the
limits from them. Enqueued (hand-picked) trials are never prescreened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rkd_search.spaces import TrialPlan

PROXIES = ("macs",)
"""The scores the prescreen ranks by (mean rank). ``bench/proxy_fixed_recipe.py`` (docs/benchmarks.md, 2026-12-07), Kendall
tau against the validation accuracy of 60 students of the default space at 5-20 M MACs trained with one fixed recipe:
MACs 0.40 [0.25, 0.53], parameters 0.38, DisWOT 0.03, NASWOT -0.02, the graph score -0.04, synflow -0.12. No zero-cost
score beat MACs (nor parameters, the earlier choice, ``bench/proxy_rank.py``): the prescreen trains the candidate with
the most MACs that fits, and it is off by default (``--prescreen 1``)."""


@dataclass
class Prescreen:
    candidates: int
    """N: candidates scored per trained trial."""
    proxies: Sequence[str] = PROXIES

    def choose(self, plans: Sequence[tuple[int, TrialPlan]]) -> int:
        """The trial number of the best-scored candidate (feasible plans with scores)."""
        if len(plans) == 1:
            return plans[0][0]
        proxies = [p for p in self.proxies if all(p in plan.scores for _, plan in plans)]
        if not proxies:
            return plans[0][0]
        ranks = {number: 0.0 for number, _ in plans}
        for proxy in proxies:
            order = sorted(plans, key=lambda item: (-item[1].scores[proxy], item[0]))
            for rank, (number, _) in enumerate(order):
                ranks[number] += rank / len(proxies)
        return min(ranks, key=lambda number: (ranks[number], number))
