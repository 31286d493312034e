"""How well each zero-cost score ranks students before training, and how well an early epoch ranks them.

    python bench/proxy_rank.py [--results bench/results/search_efficiency.json] [--methods random]

Reads the trials of ``bench/search_efficiency.py`` (every trial logs its zero-cost scores, computed
on the untrained student, and its validation accuracy after every epoch): the fully trained
students of the chosen methods' searches (random search by default: students drawn uniformly from
the default space at the 20 M budget). Reported:

- Kendall's tau between each score (``graph``: the teacher-student relation similarity at
  initialisation; ``synflow``; ``params``, the baseline) or a combination (mean rank) and the
  trained validation accuracy, with its p-value; the goal is tau >= 0.5 and above parameters alone;
  again over the students that learned (validation accuracy more than three standard errors above
  chance): a student left at chance failed in training (its loss settings), which no score of the
  untrained network can see, and such ties weigh on every tau;
- Kendall's tau between the validation accuracy after each earlier epoch and the final one: how
  early a multi-fidelity rung can rank students (``--min-epochs``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, rankdata

from _docs import write_section

SCORES = ("graph", "synflow", "naswot", "params")


def students(results: dict, methods: list[str]) -> list[dict]:
    out = []
    for run in results["runs"]:
        if run["method"] not in methods:
            continue
        for trial in run["trials"]:
            metrics = trial["metrics"]
            if trial["state"] == "complete" and trial["epochs"] >= trial["planned"] and all(f"score.{s}" in metrics for s in SCORES):
                out.append({**trial, "seed": run["seed"]})
    return out


def combined(values: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """The mean rank of the named scores (higher is better for every score)."""
    return np.mean([rankdata(values[name]) for name in names], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results/search_efficiency.json"))
    parser.add_argument("--methods", nargs="+", default=["random"])
    parser.add_argument("--doc", default="docs/benchmarks.md")
    parser.add_argument("--classes", type=int, default=10, help="classes of the searches' data (chance is 1/classes)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images of the searches' data")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    found = students(results, args.methods)
    if len(found) < 10:
        sys.exit(f"only {len(found)} fully trained students with scores in {args.results}: run bench/search_efficiency.py first")
    accuracy = np.array([s["metrics"]["val_acc"] for s in found])
    values = {name: np.array([s["metrics"][f"score.{name}"] for s in found]) for name in SCORES}
    chance = 1 / args.classes
    learned = accuracy > chance + 3 * np.sqrt(chance * (1 - chance) / args.val_size)
    rows, taus = [], {}
    candidates = [(name,) for name in SCORES] + list(itertools.combinations(SCORES, 2)) + [SCORES]
    for names in candidates:
        score = values[names[0]] if len(names) == 1 else combined(values, names)
        tau, p = kendalltau(score, accuracy)
        tau_learned, p_learned = kendalltau(score[learned], accuracy[learned])
        taus[names] = tau
        rows.append(f"| {' + '.join(names)} | {tau:.3f} | {p:.2g} | {tau_learned:.3f} | {p_learned:.2g} |")
        print(f"{' + '.join(names):28s} tau {tau:.3f} (p {p:.2g}); students that learned: {tau_learned:.3f} (p {p_learned:.2g})")
    epochs = max(len(s["history"]) for s in found)
    rung_rows = []
    for epoch in range(1, epochs):
        early = np.array([s["history"][epoch - 1] for s in found if len(s["history"]) == epochs])
        final = np.array([s["history"][-1] for s in found if len(s["history"]) == epochs])
        tau, p = kendalltau(early, final)
        rung_rows.append(f"| {epoch} | {tau:.3f} | {p:.2g} |")
        print(f"epoch {epoch} vs {epochs}: tau {tau:.3f}")
    best = max(taus, key=taus.get)
    baseline = taus[("params",)]
    settings = results["settings"]
    verdict = (f"the best is {' + '.join(best)} at tau {taus[best]:.3f}, against {baseline:.3f} for parameters alone: the goal "
               f"(tau >= 0.5 and above parameters) is {'met' if taus[best] >= 0.5 and taus[best] > baseline else 'not met'}")
    write_section(Path(args.doc), "proxy_rank", "Ranking students before training: zero-cost scores", [
        f"Command: `python bench/proxy_rank.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Run {date.today()}: {len(found)} fully trained students of the {', '.join(args.methods)} searches of "
        f"`bench/search_efficiency.py` (default space, budget {settings['budget']}, {settings['epochs']} epochs each, CIFAR-10 "
        "subset, accuracy on its 5,000-image val/ split); each score was computed on the untrained student by the search "
        "(`trainer/proxies.py`). Kendall's tau against the trained validation accuracy (a combination: the mean of the "
        f"scores' ranks). {int((~learned).sum())} of the {len(found)} students ended at chance (validation accuracy within "
        "three standard errors of it): training failures that no score of the untrained student can see; the last columns "
        "leave them out:",
        "",
        f"| score | Kendall tau, all {len(found)} | p-value | tau, the {int(learned.sum())} that learned | p-value |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Result: {verdict}.",
        "",
        f"Validation accuracy after an early epoch against after all {epochs} (the same students; how early a rung ranks them):",
        "",
        "| epoch | Kendall tau with the final accuracy | p-value |",
        "|---|---|---|",
        *rung_rows,
    ])


if __name__ == "__main__":
    main()
