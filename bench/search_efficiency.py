"""Search efficiency: the front's hypervolume against compute, for three ways of searching.

    python bench/search_efficiency.py [--data-dir ../shared/data/cifar10-small] [--epochs 6] [--compute 60] [--seeds 0 1 2]

On the CIFAR-10 subset at a 20 M MAC budget, with the default space, each method gets the same
compute, counted in student-epochs (every epoch any trial trains): random search at full fidelity
(every trial trained for --epochs), TPE at full fidelity, and TPE with multi-fidelity (rungs at
1, 3, 6 epochs, eta 3). The hypervolume is the area the front of fully trained students dominates
in (validation accuracy, MACs / budget) from (chance, 1), as each search logs it on its parent run.

Prints and writes to docs/benchmarks.md, per method: the final hypervolume (mean +- std over the
seeds) and the compute each needs to reach random search's final hypervolume (its mean over
seeds): the goal is that multi-fidelity needs at most a third of it. The plot goes to
docs/search_efficiency.png. Runs already in bench/results/search_efficiency.json are reused, so an
interrupted benchmark continues where it stopped. The teacher (WRN-28-1, 30 epochs) is trained
once, beforehand, and shared by every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from _docs import write_section
from rkd_search.search.budget import parse_budget
from rkd_search.search.driver import SearchOptions, run_search
from rkd_search.search.tracking import Tracker, TrackingSettings
from rkd_search.trainer import load_dataset, save_checkpoint, train_teacher

METHODS = {
    "random, full fidelity": {"sampler": "random", "multi_fidelity": False},
    "TPE, full fidelity": {"sampler": "tpe", "multi_fidelity": False},
    "TPE, multi-fidelity": {"sampler": "tpe", "multi_fidelity": True},
}
RESULTS = Path("bench/results/search_efficiency.json")


def hypervolume_at(trace: list[list[float]], compute: float) -> float:
    """The hypervolume reached after ``compute`` student-epochs (0 before the first full-fidelity student)."""
    reached = [value for step, value in trace if step <= compute]
    return max(reached, default=0.0)


def compute_to_reach(trace: list[list[float]], target: float) -> float | None:
    return next((step for step, value in sorted(trace) if value >= target - 1e-12), None)


def run_one(args, method: str, seed: int, teacher: Path, work: Path) -> dict:
    out = work / f"{method.replace(', ', '-').replace(' ', '_')}-s{seed}"
    options = SearchOptions(
        budget=parse_budget(args.budget), trials=100_000, dataset="imagefolder", data_dir=args.data_dir, teacher=str(teacher),
        epochs=args.epochs, space="default", seed=seed, output=out, tracking_uri=f"sqlite:///{out}/mlflow.db",
        cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=False, min_epochs=1, eta=3,
        max_student_epochs=args.compute, **METHODS[method],
    )
    started = time.perf_counter()
    run_search(options)
    seconds = time.perf_counter() - started
    tracker = Tracker(TrackingSettings(f"sqlite:///{out}/mlflow.db", "rkd-search"))
    parent = tracker.latest_search(str(out.resolve()))
    history = tracker.client.get_metric_history(parent, "hypervolume")
    trace = sorted([int(m.step), float(m.value)] for m in history)
    records = tracker.trial_records(parent)
    spent = sum(r.epochs for r in records)
    return {"method": method, "seed": seed, "trace": trace, "student_epochs": spent, "seconds": seconds,
            "trials": len(records), "complete": sum(r.state == "complete" for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RKD_DATA_DIR", "../shared/data/cifar10-small"))
    parser.add_argument("--budget", default="20MFLOPs")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of a fully trained trial (default 6: rungs 1, 3, 6)")
    parser.add_argument("--compute", type=int, default=60, help="student-epochs per search (default 60: 10 full trials)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--cache-dir", default=os.environ.get("RKD_CACHE_DIR"))
    parser.add_argument("--doc", default="docs/benchmarks.md")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    command = "python bench/search_efficiency.py " + " ".join(sys.argv[1:])
    settings = {"budget": args.budget, "epochs": args.epochs, "compute": args.compute, "data": str(Path(args.data_dir).resolve())}

    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    runs = stored.get("runs", []) if stored.get("settings") == settings else []
    data = load_dataset("imagefolder", args.data_dir, seed=0, cache_dir=args.cache_dir)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model, spec, meta, _ = train_teacher(data, "wrn28_1", epochs=args.teacher_epochs, seed=0, cache_dir=args.cache_dir)
        teacher = save_checkpoint(model, spec, work / "teacher.pt", meta)
        print(f"teacher {spec.name}: val acc {meta['val_acc']:.4f}, test acc {meta['test_acc']:.4f}")
        for seed in args.seeds:
            for method in METHODS:
                if any(r["method"] == method and r["seed"] == seed for r in runs):
                    continue
                result = run_one(args, method, seed, teacher, work)
                runs.append(result)
                args.results.parent.mkdir(parents=True, exist_ok=True)
                args.results.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
                print(f"{method:24s} seed {seed}: {result['trials']:3d} trials ({result['complete']} complete), "
                      f"{result['student_epochs']} student-epochs, final hypervolume {hypervolume_at(result['trace'], 1e12):.4f}, "
                      f"{result['seconds'] / 60:.1f} min", flush=True)
    report(args, runs, command, meta)


def report(args, runs: list[dict], command: str, teacher_meta: dict) -> None:
    """Per seed, each method is compared with random search of the same seed (same data split,
    same first trial, the enqueued WRN-28-0.5): the compute it needs to reach random's final
    hypervolume, as a share of random's own compute to get there."""
    by_method = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in METHODS}
    seeds = sorted({r["seed"] for r in runs})
    random_runs = {r["seed"]: r for r in by_method["random, full fidelity"]}
    targets = {seed: hypervolume_at(random_runs[seed]["trace"], args.compute) for seed in seeds}
    own = {seed: compute_to_reach(random_runs[seed]["trace"], targets[seed]) for seed in seeds}
    rows, shares = [], {}
    for method, rs in by_method.items():
        finals = [hypervolume_at(r["trace"], args.compute) for r in rs]
        steps = [compute_to_reach(r["trace"], targets[r["seed"]]) for r in rs]
        shares[method] = [s / own[r["seed"]] if s is not None and s <= args.compute else None for s, r in zip(steps, rs)]
        shown = ", ".join("not within " + str(args.compute) if s is None or s > args.compute else str(s) for s in steps)
        ratio = ", ".join("-" if x is None else f"{x:.2f}" for x in shares[method])
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        minutes = statistics.mean(r["seconds"] for r in rs) / 60
        trials = statistics.mean(r["trials"] for r in rs)
        complete = statistics.mean(r["complete"] for r in rs)
        rows.append(f"| {method} | {statistics.mean(finals):.4f} ± {spread:.4f} | {shown} | {ratio} | {trials:.0f} ({complete:.0f}) | {minutes:.1f} |")
    plot(args, by_method, statistics.mean(targets.values()))
    mf = shares["TPE, multi-fidelity"]
    met = all(x is not None and x <= 1 / 3 for x in mf)
    verdict = (f"multi-fidelity reached random search's final hypervolume with {', '.join('-' if x is None else f'{x:.2f}' for x in mf)} "
               f"of random's compute in seeds {', '.join(map(str, seeds))}: the goal (at most 1/3 in every seed) is "
               f"{'met' if met else 'not met'}")
    total = sum(r["seconds"] for r in runs) / 60
    write_section(Path(args.doc), "search_efficiency", "Search efficiency: hypervolume against compute", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads: CIFAR-10 subset, "
        f"budget {args.budget}, default space, teacher WRN-28-1 ({args.teacher_epochs} epochs, test acc {teacher_meta['test_acc']:.4f}), "
        f"{args.epochs} epochs per fully trained student, {args.compute} student-epochs per search, seeds "
        f"{', '.join(map(str, seeds))}; the {len(runs)} searches took {total:.0f} minutes. Hypervolume of the front of fully trained "
        "students in (validation accuracy, MACs / budget) from (chance, 1), logged by each search on its parent run.",
        "",
        "| method | final hypervolume (mean ± std) | student-epochs to reach the same seed's random final hypervolume (per seed) "
        "| share of random's compute (per seed) | trials (fully trained) | minutes per search |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Result: {verdict}. Multi-fidelity therefore stays off by default.",
        "",
        "![hypervolume against compute](search_efficiency.png)",
    ])


def plot(args, by_method: dict[str, list[dict]], target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    grid = list(range(0, args.compute + 1, max(1, args.compute // 200)))
    for method, rs in by_method.items():
        if not rs:
            continue
        curves = [[hypervolume_at(r["trace"], c) for c in grid] for r in rs]
        mean = [statistics.mean(values) for values in zip(*curves)]
        low = [min(values) for values in zip(*curves)]
        high = [max(values) for values in zip(*curves)]
        line, = axes.step(grid, mean, where="post", label=f"{method} (mean of {len(rs)})")
        axes.fill_between(grid, low, high, step="post", alpha=0.15, color=line.get_color())
    axes.axhline(target, ls="--", c="gray", lw=1, label="random's final hypervolume")
    axes.set_xlabel("compute: student-epochs trained")
    axes.set_ylabel("hypervolume (val acc x MACs/budget)")
    axes.set_title(f"CIFAR-10 subset, budget {args.budget}: the front against compute", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(Path(args.doc).parent / "search_efficiency.png")
    plt.close(figure)


if __name__ == "__main__":
    main()
