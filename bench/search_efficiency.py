"""Search efficiency: the front's hypervolume and the best student against compute, for four ways of searching.

    python bench/search_efficiency.py [--data-dir ../shared/data/cifar10-small] [--epochs 4] [--compute 32]
                                      [--seeds 0 1 2 3 4] [--methods random default prescreen multi-fidelity recipes]

On the CIFAR-10 subset (5,000 training images, its 5,000-image val/ split for selection) at a 20 M
MAC budget, with the default space, each method gets the same compute, counted in student-epochs
(every epoch any trial trains, paused and stopped trials included):

- ``random``: random sampling, no hand-picked students (the baseline);
- ``default``: the CLI's search: TPE with startup trials scaled to the search, the space's
  hand-picked students (a shallow MobileNetV2 within a fifth of the budget, the 2-3-3 one within
  half, then each family at the budget, each with its recipe) first;
- ``prescreen``: the default with ``--prescreen 4`` (ranked by ``search.prescreen.PROXIES``);
- ``multi-fidelity``: the default with ``--multi-fidelity --min-epochs 2`` (rungs 2 and 4 at
  ``--epochs 4``; eta 3). The first rung is where ``bench/proxy_rank.py`` measured the ranking at an
  epoch to agree with the final one (Kendall tau 0.71 after 2 of 4 epochs, 0.34 after 1);
- ``recipes``: the default with ``--sampler tpe-recipes`` (after the startup trials, every other trial
  keeps the most accurate architecture so far and TPE draws only its recipe: issue 35's second part, not yet measured).

Reported per method (mean over seeds): the hypervolume of the front of fully trained students in
(validation accuracy, MACs / budget) from (chance, 1), averaged over the compute axis (the area
under its curve divided by the compute), its final value, the share of random's compute each
needs to reach random's final hypervolume in the same seed (median over seeds; goal <= 1/3), and
the best validation accuracy found at 1/3, 2/3 and all of the compute. Every trial's scores,
per-epoch validation accuracy and costs go to bench/results/search_efficiency.json, which
``bench/proxy_rank.py`` reads. Runs already there are reused, so an interrupted benchmark
continues where it stopped. The teacher (WRN-28-1, 30 epochs) is trained once and shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from _common import add_common_flags
from _docs import write_section
from rkd_search.search.budget import parse_budget
from rkd_search.search.driver import run_search
from rkd_search.search.options import SearchOptions
from rkd_search.search.tracking import Tracker, TrackingSettings
from rkd_search.trainer import load_dataset, save_checkpoint, train_teacher

METHODS = {
    "random": {"sampler": "random", "enqueue": False},
    "default": {"sampler": "tpe"},
    "prescreen": {"sampler": "tpe", "prescreen": 4},
    "multi-fidelity": {"sampler": "tpe", "multi_fidelity": True, "min_epochs": 2},
    "recipes": {"sampler": "tpe-recipes"},
}
RESULTS = Path("bench/results/search_efficiency.json")


def at(trace: list[list[float]], compute: float) -> float:
    """A logged value's latest reading at ``compute`` student-epochs (0 before the first). Readings at
    step 0 are left out: the search's closing summary logs ``best_val_acc`` there."""
    reached = [value for step, value in sorted(trace) if 0 < step <= compute]
    return reached[-1] if reached else 0.0


def area(trace: list[list[float]], compute: float) -> float:
    """The mean of the step curve over [0, compute]: its area divided by the compute."""
    points = sorted((step, value) for step, value in trace if step <= compute)
    total, previous_step, previous_value = 0.0, 0.0, 0.0
    for step, value in points:
        total += (step - previous_step) * previous_value
        previous_step, previous_value = step, value
    total += (compute - previous_step) * previous_value
    return total / compute


def compute_to_reach(trace: list[list[float]], target: float) -> float | None:
    return next((step for step, value in sorted(trace) if value >= target - 1e-12), None)


def trial_rows(tracker: Tracker, parent: str) -> list[dict]:
    rows = []
    for record in tracker.trial_records(parent):
        history = [m.value for m in sorted(tracker.client.get_metric_history(record.run_id, "epoch.val_acc"), key=lambda m: m.step)]
        rows.append({"number": record.number, "student": record.params.get("student.name"), "family": record.params.get("student.family"),
                     "params": dict(record.params), "state": str(record.state), "epochs": record.epochs, "planned": record.epochs_planned,
                     "metrics": {k: v for k, v in record.metrics.items() if not k.startswith("epoch.")},
                     "history": history})
    return rows


def run_one(args, method: str, seed: int, teacher: Path, work: Path, methods: dict[str, dict] = METHODS) -> dict:
    """One search of ``methods[method]`` at ``args``' budget, compute and data; its traces and trial rows."""
    out = work / f"{method}-s{seed}"
    options = SearchOptions(
        budget=parse_budget(args.budget), trials=100_000, dataset="imagefolder", data_dir=str(args.data_dir), teacher=str(teacher),
        epochs=args.epochs, space="default", seed=seed, output=out, tracking_uri=f"sqlite:///{out}/mlflow.db",
        cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=False, eta=3, max_student_epochs=args.compute,
        **methods[method],
    )
    started = time.perf_counter()
    run_search(options)
    seconds = time.perf_counter() - started
    tracker = Tracker(TrackingSettings(f"sqlite:///{out}/mlflow.db", "rkd-search"))
    parent = tracker.latest_search(str(out.resolve()))
    traces = {name: sorted([int(m.step), float(m.value)] for m in tracker.client.get_metric_history(parent, name))
              for name in ("hypervolume", "best_val_acc")}
    trials = trial_rows(tracker, parent)
    return {"method": method, "seed": seed, "traces": traces, "student_epochs": sum(t["epochs"] for t in trials),
            "seconds": seconds, "trials": trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="20MFLOPs")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a fully trained trial (default 4)")
    parser.add_argument("--compute", type=int, default=32, help="student-epochs per search (default 32: 8 full trials)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    add_common_flags(parser, "/tmp/rkd-bench-search-efficiency", RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    command = "python bench/search_efficiency.py " + " ".join(sys.argv[1:])
    settings = {"budget": args.budget, "epochs": args.epochs, "compute": args.compute, "data": str(Path(args.data_dir).resolve())}
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    runs = stored.get("runs", []) if stored.get("settings") == settings else []
    if args.report_only:  # the figures from the results file, whatever settings made them: no data, no teacher
        if not stored.get("runs"):
            parser.error(f"--report-only: {args.results} holds no runs; run the benchmark first")
        report(args, stored["runs"], command, stored["teacher"])
        return
    data = load_dataset("imagefolder", args.data_dir, seed=0, cache_dir=args.cache_dir)
    model, spec, meta, _ = train_teacher(data, "wrn28_1", epochs=args.teacher_epochs, seed=0, cache_dir=args.cache_dir)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = save_checkpoint(model, spec, work / "teacher.pt", meta)
    print(f"teacher {spec.name}: val acc {meta['val_acc']:.4f}, test acc {meta['test_acc']:.4f}", flush=True)
    for method in args.methods:
        for seed in args.seeds:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            result = run_one(args, method, seed, teacher, work)
            runs.append(result)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps({"settings": settings, "teacher": meta, "runs": runs}, indent=1))
            hv = at(result["traces"]["hypervolume"], args.compute)
            print(f"{method:15s} seed {seed}: {len(result['trials'])} trials, {result['student_epochs']} student-epochs, "
                  f"final hypervolume {hv:.4f}, {result['seconds'] / 60:.1f} min", flush=True)
    report(args, runs, command, meta)


def report(args, runs: list[dict], command: str, teacher_meta: dict) -> None:
    by_method = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in METHODS}
    by_method = {m: rs for m, rs in by_method.items() if rs}
    random_runs = {r["seed"]: r for r in by_method.get("random", [])}
    compute = args.compute
    rows, shares = [], {}
    for method, rs in by_method.items():
        hv = [r["traces"]["hypervolume"] for r in rs]
        aucs = [area(trace, compute) for trace in hv]
        finals = [at(trace, compute) for trace in hv]
        share = []
        for r in rs:
            base = random_runs.get(r["seed"])
            if base is None:
                continue
            target = at(base["traces"]["hypervolume"], compute)
            own = compute_to_reach(base["traces"]["hypervolume"], target)
            step = compute_to_reach(r["traces"]["hypervolume"], target)
            share.append(step / own if step is not None and own and step <= compute else None)
        median = statistics.median([s if s is not None else float("inf") for s in share]) if share else None
        shares[method] = (share, median)
        best = {f: [at(r["traces"]["best_val_acc"], f * compute) for r in rs] for f in (1 / 3, 2 / 3, 1)}
        spread = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        trials = statistics.mean(len(r["trials"]) for r in rs)
        complete = statistics.mean(sum(t["state"] == "complete" for t in r["trials"]) for r in rs)
        minutes = statistics.mean(r["seconds"] for r in rs) / 60
        rows.append(
            f"| {method} | {statistics.mean(aucs):.4f} ± {spread:.4f} | {statistics.mean(finals):.4f} | "
            f"{', '.join('-' if s is None else f'{s:.2f}' for s in share)} | "
            f"{'-' if median is None or median == float('inf') else f'{median:.2f}'} | "
            + " | ".join(f"{100 * statistics.mean(v):.2f}" for v in best.values())
            + f" | {trials:.0f} ({complete:.0f}) | {minutes:.1f} |")
    plot(args, by_method)
    chance_rows = at_chance(by_method)
    seeds = sorted({r["seed"] for r in runs})
    verdicts = []
    for method, (share, median) in shares.items():
        if method == "random" or not share:
            continue
        verdicts.append(f"{method} reached random's final hypervolume in {sum(s is not None for s in share)} of {len(share)} "
                        f"paired seeds" + (f" (median {median:.2f} of random's compute)" if median != float("inf") else "")
                        + f": {'met' if median <= 1 / 3 else 'not met'}")
    verdict = ("the goal is that the default reaches random's final hypervolume with at most a third of random's compute "
               "(median over seeds). " + "; ".join(verdicts)) if verdicts else "no runs to compare with random yet"
    total = sum(r["seconds"] for r in runs) / 60
    write_section(Path(args.doc), "search_efficiency", "Search efficiency: hypervolume and best student against compute", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads: CIFAR-10 subset "
        f"(5,000 training images, the 5,000-image val/ split for selection), budget {args.budget}, default space, teacher WRN-28-1 "
        f"({args.teacher_epochs} epochs, test acc {teacher_meta['test_acc']:.4f}), {args.epochs} epochs per fully trained student, "
        f"{compute} student-epochs per search (paused and stopped trials included), seeds {', '.join(map(str, seeds))}; the "
        f"{len(runs)} searches took {total:.0f} minutes. Hypervolume of the front of fully trained students in "
        "(validation accuracy, MACs / budget) from (chance, 1), logged by each search on its parent run.",
        "",
        "| method | hypervolume, mean over the compute (± std over seeds) | final hypervolume | share of random's compute "
        "to reach random's final hypervolume (per seed) | median share | best val acc at 1/3 (%) | at 2/3 (%) | at all (%) "
        "| trials (fully trained) | minutes per search |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Result: {verdict}.",
        "",
        "![hypervolume against compute](search_efficiency.png)",
        "",
        "Fully trained students that ended at chance (validation accuracy within three standard errors of 10%: they never "
        "learned), by the graph their trial drew (the hand-picked students' cosine graphs included):",
        "",
        "| graph | students | at chance | mean val acc of the others (%) |",
        "|---|---|---|---|",
        *chance_rows,
    ])


GRAPH_GROUPS = (
    ("cosine", lambda p: p.get("graph.similarity") == "cosine"),
    ("gaussian, bandwidth < 0.5", lambda p: p.get("graph.similarity") == "gaussian" and float(p["graph.bandwidth"]) < 0.5),
    ("gaussian, bandwidth >= 0.5, graph weight >= 12",
     lambda p: p.get("graph.similarity") == "gaussian" and float(p["graph.bandwidth"]) >= 0.5 and float(p["loss.graph_weight"]) >= 12),
    ("gaussian, bandwidth >= 0.5, graph weight < 12",
     lambda p: p.get("graph.similarity") == "gaussian" and float(p["graph.bandwidth"]) >= 0.5 and float(p["loss.graph_weight"]) < 12),
)
"""Groups of trials by their graph, for the students-at-chance table (the Gaussian graph's bandwidth is
a fraction of the batch's median distance: below about half of it, the kernel is steep)."""


def at_chance(by_method: dict[str, list[dict]], chance: float = 0.1, val_size: int = 5000) -> list[str]:
    """Rows of fully trained students left at chance, by ``GRAPH_GROUPS`` (trials whose JSON holds their params),
    with the mean validation accuracy of those that learned."""
    line = chance + 3 * (chance * (1 - chance) / val_size) ** 0.5
    groups: dict[str, list[float]] = {name: [] for name, _ in GRAPH_GROUPS}
    for rs in by_method.values():
        for r in rs:
            for t in r["trials"]:
                params, accuracy = t.get("params"), t["metrics"].get("val_acc")
                if not params or accuracy is None or t["state"] != "complete" or t["epochs"] < t["planned"]:
                    continue
                name = next((name for name, member in GRAPH_GROUPS if member(params)), None)
                if name is not None:
                    groups[name].append(accuracy)
    rows = []
    for name, accuracies in groups.items():
        learned = [a for a in accuracies if a >= line]
        mean = f"{100 * statistics.mean(learned):.1f}" if learned else "-"
        rows.append(f"| {name} | {len(accuracies)} | {len(accuracies) - len(learned)} | {mean} |")
    return rows


def plot(args, by_method: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    grid = list(range(0, args.compute + 1))
    for method, rs in by_method.items():
        for axes, name in ((left, "hypervolume"), (right, "best_val_acc")):
            curves = [[at(r["traces"][name], c) for c in grid] for r in rs]
            mean = [statistics.mean(values) for values in zip(*curves)]
            line, = axes.step(grid, mean, where="post", label=f"{method} (mean of {len(rs)})")
            axes.fill_between(grid, [min(v) for v in zip(*curves)], [max(v) for v in zip(*curves)], step="post", alpha=0.12,
                              color=line.get_color())
    for axes, label in ((left, "hypervolume (val acc x MACs/budget)"), (right, "best validation accuracy")):
        axes.set_xlabel("compute: student-epochs trained")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"CIFAR-10 subset, budget {args.budget}: the search against compute", fontsize=10)
    figure.tight_layout()
    figure.savefig(Path(args.doc).parent / "search_efficiency.png")
    plt.close(figure)


if __name__ == "__main__":
    main()
