"""The multi-fidelity rung ladder and its promotion rule, on hand-made rung tables."""

from __future__ import annotations

import pytest

from rkd_search.search.fidelity import RungEntry, RungTable, hopeless, promotable, promotion_order, rungs

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


def test_the_top_floor_n_over_eta_are_promotable():
    entries = table(*[(0.1 * i, 10.0) for i in range(1, 10)])  # all at the same MACs: accuracy decides
    assert promotable(entries, 3, BUDGET) == [8, 7, 6]
    assert promotable(entries, 3, BUDGET, already=[8]) == [7, 6]
    assert promotable(entries[:8], 3, BUDGET) == [7, 6]  # floor(8 / 3) = 2
    assert promotable(entries[:8], 3, BUDGET, finishing=True) == [7, 6, 5]  # ceil(8 / 3) = 3


def test_a_rung_below_eta_results_promotes_nothing_until_the_search_finishes():
    assert promotable(table((0.4, 8), (0.6, 8)), 3, BUDGET) == []
    assert promotable(table((0.4, 8), (0.6, 8)), 3, BUDGET, finishing=True) == [1]
    assert promotable(table((0.4, 8)), 3, BUDGET, finishing=True) == [0]
    assert promotable([], 3, BUDGET, finishing=True) == []


def test_earlier_promotions_count_against_the_rungs_share():
    # trial 0 moved up when it led; trial 3, now better, does not make a second promotion of 4 results
    entries = table((0.5, 10), (0.4, 10), (0.3, 10), (0.9, 10))
    assert promotable(entries, 3, BUDGET, already=[0]) == []
    assert promotable(entries, 3, BUDGET) == [3]  # without that history, the best of 4 moves up
    six = entries + [RungEntry(4, 0.2, 10e6), RungEntry(5, 0.1, 10e6)]
    assert promotable(six, 3, BUDGET, already=[0]) == [3]  # floor(6 / 3) = 2: one more


def test_ties_keep_trial_order():
    entries = table((0.5, 10), (0.5, 10), (0.3, 12))
    assert promotion_order(entries, BUDGET)[:2] == [0, 1]
    assert promotable(entries, 3, BUDGET) == [0]


def test_infeasible_trials_never_move_up():
    entries = table((0.9, 30), (0.5, 10), (0.4, 12), (0.3, 12), feasible={0: False})
    assert 0 not in promotion_order(entries, BUDGET)
    assert promotable(entries, 3, BUDGET) == [1]


def test_students_at_chance_rank_after_every_other():
    # trial 0 is the cheapest, so non-dominated, but no better than guessing
    entries = table((0.11, 1), (0.5, 10), (0.45, 12), (0.3, 15), (0.2, 16), (0.15, 17))
    order = promotion_order(entries, BUDGET, floor=0.13)
    assert order[-1] == 0
    assert promotable(entries, 3, BUDGET, floor=0.13) == [1, 2]


def test_the_rung_table_knows_what_is_paused_promoted_and_can_still_arrive():
    table_ = RungTable([1, 3, 9], trials_target=9)
    for number, acc in enumerate((0.5, 0.6, 0.7)):
        table_.train_to(number, 1)
        table_.started += 1
        table_.record(number, 1, acc, 10e6)
    assert table_.paused() == [0, 1, 2]
    assert table_.paused(running=[1]) == [0, 2]
    assert table_.most_entries(1) == 3 + 6  # six trials still to start
    assert table_.promotion(3, BUDGET, 0.0) == (2, 3)  # floor(3 / 3) = 1: the best moves up
    table_.train_to(2, 3)
    assert table_.promoted_from(1) == {2}
    assert table_.promotion(3, BUDGET, 0.0) is None
    assert table_.epochs_to_finish(0) == 8
    table_.forget(0)
    assert 0 not in table_.paused()


def test_a_trial_dominated_by_enough_others_is_hopeless():
    entries = table((0.2, 15), (0.6, 10), (0.5, 12), (0.7, 5))
    worst = entries[0]
    assert hopeless(worst, entries, 3, most_entries=9)  # 3 dominate it, and at most ceil(9/3) = 3 move up
    assert not hopeless(worst, entries, 3, most_entries=12)  # 4 could move up: it may still
    assert not hopeless(entries[3], entries, 3, most_entries=9)
