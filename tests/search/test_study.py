"""The study's journal, its sampler and the output folder's lock."""

from __future__ import annotations

import pytest

from rkd_search.search import UsageError
from rkd_search.search.budget import parse_budget
from rkd_search.search.start import sampler_note
from rkd_search.search.options import SearchOptions
from rkd_search.search.study import OutputLock, check_journal, make_sampler, open_study, startup_trials, stored_settings


def test_a_torn_last_line_is_cut_and_damage_elsewhere_refused(tmp_path):
    journal = tmp_path / "study.journal"
    journal.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert "dropped a torn last line" in check_journal(journal)
    assert journal.read_bytes().endswith(b"{\"c\": "), "without repair nothing is written"
    check_journal(journal, repair=True)
    assert journal.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    journal.write_bytes(b'{"a": 1}\n{"b": \n{"c": 3}\n')
    with pytest.raises(UsageError, match="damaged at line 2 of 3"):
        check_journal(journal)
    journal.write_bytes(b'{"a": 1}')
    assert "newline was missing" in check_journal(journal, repair=True) and journal.read_bytes() == b'{"a": 1}\n'


def test_an_empty_journal_holds_no_study_and_a_new_one_starts_there(tmp_path):
    (tmp_path / "study.journal").write_bytes(b"")
    assert stored_settings(tmp_path) is None
    study = open_study(tmp_path, ("maximize", "minimize"), "random", 0, 5)
    study.set_user_attr("rkd.settings", {"seed": 0})
    assert stored_settings(tmp_path) == {"seed": 0}


@pytest.mark.parametrize("trials, enqueued, expected", [(8, 1, 3), (12, 3, 5), (200, 3, 10), (60, 0, 6), (10, 9, 11)])
def test_startup_trials_scale_with_the_search_and_count_the_enqueued(trials, enqueued, expected):
    assert startup_trials(trials, enqueued) == expected


@pytest.mark.parametrize("extra, expected", [({}, 200), ({"max_student_epochs": 32, "epochs": 4}, 8),
                                             ({"max_student_epochs": 32, "epochs": 4, "multi_fidelity": True}, 32),
                                             ({"max_student_epochs": 3, "epochs": 4}, 1), ({"max_student_epochs": 10_000}, 200)])
def test_a_compute_limit_scales_the_startup_trials_to_the_trials_it_allows(extra, expected):
    """The benchmark's searches allow 100,000 trials and stop at 32 student-epochs (8 trials of 4):
    scaled to --trials, TPE's 10 startup trials made all 8 random; scaled to the 8, 5 of them are
    (3 hand-picked, 2 random) and TPE samples the other 3."""
    options = SearchOptions(budget=parse_budget("20MFLOPs"), trials=200, **extra)
    assert options.expected_trials() == expected
    if expected == 8:
        assert make_sampler("tpe", 0, 0, options.expected_trials(), 3)._n_startup_trials == 5
        assert sampler_note(options, 5) == ("sampler tpe: the first 5 of 8 trials that --max-student-epochs 32 allows are "
                                            "hand-picked or random, then TPE models the results.")
    if expected == 1:
        assert sampler_note(options, 3).startswith("sampler tpe: 3 startup trials (hand-picked or random) cover all 1 trial "
                                                   "that --max-student-epochs 3 allows;")


def test_tpe_lies_about_running_trials_only_when_trials_run_at_once():
    assert not make_sampler("tpe", 0, 0, 50, 3, jobs=1)._constant_liar
    assert make_sampler("tpe", 0, 0, 50, 3, jobs=4)._constant_liar
    assert make_sampler("tpe", 0, 0, 50, 3)._n_startup_trials == 5
    assert make_sampler("gp", 0, 0, 200, 3)._n_startup_trials == 10


def test_a_second_lock_on_one_output_is_refused_with_its_owner(tmp_path):
    with OutputLock(tmp_path / "out"):
        with pytest.raises(UsageError, match=r"is in use by another rkd-search \(pid \d+ on"):
            OutputLock(tmp_path / "out").acquire()
    with OutputLock(tmp_path / "out"):  # released: free again
        pass
