"""Budget parsing, the Pareto front, and where MLflow settings come from."""

from __future__ import annotations

import pytest

from rkd_search.search import UsageError, parse_budget, pareto_front
from rkd_search.search.pareto import compute_front
from rkd_search.search.records import TrialRecord
from rkd_search.search.tracking import check_reachable, resolve_settings


@pytest.mark.parametrize(
    "text, macs",
    [("20MFLOPs", 20e6), ("20M", 20e6), ("20mflops", 20e6), ("1.5GMACs", 1.5e9), ("500k", 5e5), ("500K", 5e5),
     ("2e7", 2e7), (" 15 M MACs ", 15e6), ("1000", 1000)],
)
def test_budgets_parse_to_macs(text, macs):
    assert parse_budget(text).macs == pytest.approx(macs)


@pytest.mark.parametrize("text", ["", "twenty", "20X", "20MB", "M20", "-5M", "0"])
def test_malformed_budgets_are_usage_errors(text):
    with pytest.raises(UsageError, match="budget"):
        parse_budget(text)


def test_pareto_front_keeps_only_non_dominated_points():
    items = ["a", "b", "c", "d", "e", "f"]
    accuracy = [0.70, 0.80, 0.75, 0.90, 0.60, 0.80]
    macs = [10, 20, 25, 40, 5, 20]
    # c is dominated by b; b and f tie and both stay
    assert pareto_front(items, accuracy, macs) == ["e", "a", "b", "f", "d"]


def record(number, state, val_acc, macs, epochs=2, planned=2, feasible=True, learned=True):
    return TrialRecord(f"r{number}", f"t{number}", number, state, feasible, epochs, planned, {"val_acc": val_acc, "macs": macs},
                       learned=learned)


def test_front_ignores_stopped_early_infeasible_and_failed_trials():
    records = [
        record(0, "complete", 0.70, 10e6),
        record(1, "pruned", 0.95, 5e6, epochs=1),       # lower fidelity: never on the front
        record(2, "complete", 0.99, 1e6, epochs=1),     # stopped by a scheduler: not full fidelity
        record(3, "infeasible", 0.0, 30e6, epochs=0, feasible=False),
        record(4, "failed", 0.0, 1e6, epochs=0),
        record(5, "complete", 0.80, 15e6),
        record(6, "complete", 0.118, 0.5e6, learned=False),  # at chance: would be the cheapest point
    ]
    assert [r.number for r in compute_front(records)] == [0, 5]


def test_the_learned_threshold_is_chance_plus_a_margin_and_the_hypervolume_uses_moocore():
    from rkd_search.search.pareto import hypervolume, learned_threshold

    assert learned_threshold(0.1, 500) == pytest.approx(0.1 + 2.326 * (0.09 / 500) ** 0.5)
    assert 0.118 < learned_threshold(0.1, 500) < 0.15
    front = [record(0, "complete", 0.6, 10e6), record(1, "complete", 0.8, 15e6)]
    # (0.6 - 0.1) x (1 - 0.5) + (0.8 - 0.6) x (1 - 0.75): the area dominated from (chance, budget)
    assert hypervolume(front, 20e6, 0.1) == pytest.approx(0.5 * 0.5 + 0.2 * 0.25)
    assert hypervolume([], 20e6, 0.1) == 0.0


def test_tracking_settings_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert resolve_settings().tracking_uri == "sqlite:///mlflow.db"
    (tmp_path / "mlflow.yaml").write_text("tracking_uri: sqlite:///from-yaml.db\nexperiment: yaml-exp\n")
    assert resolve_settings().tracking_uri == "sqlite:///from-yaml.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert resolve_settings().tracking_uri == "sqlite:///from-env.db"
    settings = resolve_settings(tracking_uri="sqlite:///from-flag.db", experiment="flag-exp")
    assert (settings.tracking_uri, settings.experiment) == ("sqlite:///from-flag.db", "flag-exp")


def test_bad_mlflow_config_names_the_key(tmp_path):
    path = tmp_path / "mlflow.yaml"
    path.write_text("tracking_url: sqlite:///x.db\n")
    with pytest.raises(UsageError, match="unknown key 'tracking_url'"):
        resolve_settings(str(path))


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:9", "cannot reach the MLflow tracking server"),
    ("./mlruns", "plain file store"),
    ("sqlite:///{tmp}/a-file/sub/mlflow.db", "cannot create the MLflow store .* not a writable folder"),
    ("sqlite:///{tmp}/garbage.db", "cannot open the MLflow store .*garbage.db"),
])
def test_unreachable_tracking_uris_fail_early_and_create_nothing(tmp_path, uri, message):
    from rkd_search.search.tracking import TrackingSettings

    (tmp_path / "a-file").write_text("a file, not a folder")
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UsageError, match=message):
        check_reachable(TrackingSettings(uri.format(tmp=tmp_path), "x"))
    assert sorted(tmp_path.rglob("*")) == before


def test_checking_a_new_sqlite_store_creates_nothing(tmp_path):
    from rkd_search.search.tracking import TrackingSettings

    check_reachable(TrackingSettings(f"sqlite:///{tmp_path}/new/dir/mlflow.db", "x"))
    assert list(tmp_path.iterdir()) == []


def test_an_empty_front_says_why():
    from rkd_search.search.records import TrialRecord
    from rkd_search.search.report import front_table

    def record(number, state, epochs, learned):
        return TrialRecord(f"r{number}", f"t{number}", number, state, True, epochs, 2, {"val_acc": 0.1, "macs": 1e6}, learned=learned)

    at_chance = [record(0, "complete", 2, False), record(1, "complete", 2, False)]
    assert "all 2 fully trained students scored no better than guessing" in front_table([], 100, at_chance)
    assert "no feasible trial finished all its epochs" in front_table([], 100, [record(0, "pruned", 1, True)])
