"""The multi-fidelity rung ladder and its promotion rule, on hand-made rung tables."""

from __future__ import annotations

import pytest

from rkd_search.search.fidelity import RungEntry, hopeless, promotable, promotion_order, rungs

BUDGET = 20e6


@pytest.mark.parametrize("low, high, eta, expected", [(1, 15, 3, [1, 3, 9, 15]), (1, 9, 3, [1, 3, 9]), (2, 15, 3, [2, 6, 15]),
                                                     (1, 6, 3, [1, 3, 6]), (5, 5, 3, [5]), (1, 8, 2, [1, 2, 4, 8])])
def test_rungs_go_up_by_eta_and_end_at_the_full_epochs(low, high, eta, expected):
    assert rungs(low, high, eta) == expected


@pytest.mark.parametrize("low, high, eta", [(0, 5, 3), (6, 5, 3), (1, 5, 1)])
def test_bad_rungs_are_refused(low, high, eta):
    with pytest.raises(ValueError):
        rungs(low, high, eta)


def table(*points, **flags):
    return [RungEntry(number, acc, macs * 1e6, flags.get("feasible", {}).get(number, True)) for number, (acc, macs) in enumerate(points)]


def test_non_dominated_layers_come_first_most_accurate_first():
    # 0 dominates 2; 0, 1 and 3 are mutually non-dominated
    entries = table((0.8, 10), (0.7, 5), (0.6, 12), (0.5, 2))
    order = promotion_order(entries, BUDGET)
    assert order[0] == 0 and set(order[:3]) == {0, 1, 3} and order[3] == 2


def test_the_top_ceil_n_over_eta_are_promotable():
    entries = table(*[(0.1 * i, 10.0) for i in range(1, 10)])  # all at the same MACs: accuracy decides
    assert promotable(entries, 3, BUDGET) == [8, 7, 6]
    assert promotable(entries, 3, BUDGET, already=[8]) == [7, 6]


def test_a_rung_with_fewer_than_eta_trials_promotes_its_best():
    assert promotable(table((0.4, 8), (0.6, 8)), 3, BUDGET) == [1]
    assert promotable(table((0.4, 8)), 3, BUDGET) == [0]
    assert promotable([], 3, BUDGET) == []


def test_ties_keep_trial_order():
    entries = table((0.5, 10), (0.5, 10), (0.3, 12))
    assert promotion_order(entries, BUDGET)[:2] == [0, 1]
    assert promotable(entries, 3, BUDGET) == [0]


def test_infeasible_trials_never_move_up():
    entries = table((0.9, 30), (0.5, 10), (0.4, 12), feasible={0: False})
    assert 0 not in promotion_order(entries, BUDGET)
    assert promotable(entries, 3, BUDGET) == [1]


def test_students_at_chance_rank_after_every_other():
    # trial 0 is the cheapest, so non-dominated, but no better than guessing
    entries = table((0.11, 1), (0.5, 10), (0.45, 12), (0.3, 15))
    order = promotion_order(entries, BUDGET, floor=0.13)
    assert order[-1] == 0
    assert promotable(entries, 3, BUDGET, floor=0.13) == [1, 2]


def test_a_trial_dominated_by_enough_others_is_hopeless():
    entries = table((0.2, 15), (0.6, 10), (0.5, 12), (0.7, 5))
    worst = entries[0]
    assert hopeless(worst, entries, 3, most_entries=9)  # 3 dominate it, and at most ceil(9/3) = 3 move up
    assert not hopeless(worst, entries, 3, most_entries=12)  # 4 could move up: it may still
    assert not hopeless(entries[3], entries, 3, most_entries=9)
