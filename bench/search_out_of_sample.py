"""The search out of sample: random, random plus the hand-picked students ("enqueue only") and the
default search, on images and at a budget the default was never tuned on.

    python bench/search_out_of_sample.py [--source ../shared/data/cifar10] [--budget 10MFLOPs]
                                         [--seeds 0 1 2 3 4 5] [--methods random enqueue default]

The default space and its starting points were chosen on the CIFAR-10 subset (``cifar10-small``:
training images 0-499 and 500-999 of each class) at 20 M MACs (``bench/search_efficiency.py``).
Here every arm searches a split built from other images of the full CIFAR-10 training set (by
default images 1000-1499 of each class for training, 1500-1999 for validation and 2000-2499 for
test: 5,000 each, no file shared with ``cifar10-small``) at another budget, with its own teacher
(WRN-28-1, 30 epochs, trained on that split), and the same compute per search (32
student-epochs of 4-epoch trials: 8 trials). The code that runs is the commit recorded in the
results (``frozen``): the default is frozen before the run.

- ``random``: random sampling, no hand-picked students;
- ``enqueue``: random sampling after the same hand-picked students the default trains first: what
  the starting list alone gives (the sampler's model never runs);
- ``default``: the CLI's search (TPE, its startup trials, the hand-picked students first).

Reported, per arm over paired seeds: the best validation accuracy at a quarter, half and all of
the compute, the test accuracy of each search's pick (its most accurate learned student, as
``rkd-search train --best`` picks it), the hypervolume on the linear MAC axis (as the search logs
it) and on a log-MAC axis (two decades below the budget), and the paired differences with their
standard errors. Goal: default > enqueue > random in best validation accuracy at all of the
compute (median paired difference above zero; default minus random above one standard error).
Runs already in the results file are reused (an interrupted benchmark continues).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from _common import add_common_flags
from _docs import write_section
import search_efficiency
from search_efficiency import at
from rkd_search.search.budget import parse_budget
from rkd_search.search.pareto import learned_threshold
from rkd_search.search.tracking import Tracker, TrackingSettings
from rkd_search.spaces import TrialContext, load_space
from rkd_search.trainer import defaults, load_dataset, save_checkpoint, train_teacher

METHODS = {
    "random": {"sampler": "random", "enqueue": False},
    "enqueue": {"sampler": "random", "enqueue": True},
    "default": {"sampler": "tpe"},
}
RESULTS = Path("bench/results/search_out_of_sample.json")
SPLITS = ("train", "val", "test")
DECADES = 2
"""The log-MAC axis of the hypervolume spans this many decades below the budget."""


def make_split(source: Path, target: Path, offset: int, per_class: int) -> Path:
    """An ImageFolder tree of links to ``source/train`` files: for each class, its files number
    ``offset`` to ``offset + per_class`` for train/, the next ``per_class`` for val/, the next for test/."""
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    for name in classes:
        files = sorted((source / "train" / name).iterdir())
        needed = offset + 3 * per_class
        if len(files) < needed:
            raise SystemExit(f"{source / 'train' / name} holds {len(files)} images, {needed} are needed")
        for index, split in enumerate(SPLITS):
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            start = offset + index * per_class
            for path in files[start:start + per_class]:
                with contextlib.suppress(FileExistsError):  # made by an earlier run, or a second shard at once
                    (folder / path.name).symlink_to(path.resolve())
    return target


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    """--source, --offset and --per-class: the split ``make_split`` builds."""
    parser.add_argument("--source", type=Path, default=Path(os.environ.get("RKD_FULL_DATA", "../shared/data/cifar10")),
                        help="an ImageFolder tree whose train/ the split is built from (the full CIFAR-10)")
    parser.add_argument("--offset", type=int, default=1000, help="first image of each class used (default 1000: after cifar10-small's)")
    parser.add_argument("--per-class", type=int, default=500)


def log_hypervolume(points: list[tuple[float, float]], budget: float, chance: float) -> float:
    """The area dominated in (validation accuracy, log-MAC position) from (chance, the budget), the MAC
    axis running over ``DECADES`` decades below the budget (a student 100x cheaper counts fully)."""
    import moocore

    rows = [[acc, min(1.0, max(0.0, math.log10(macs / budget) / DECADES + 1.0))] for acc, macs in points
            if acc > chance and macs <= budget]
    if not rows:
        return 0.0
    return float(moocore.hypervolume(np.array(rows), ref=[chance, 1.0], maximise=[True, False]))


def linear_hypervolume(points: list[tuple[float, float]], budget: float, chance: float) -> float:
    import moocore

    rows = [[acc, macs / budget] for acc, macs in points if acc > chance and macs < budget]
    return float(moocore.hypervolume(np.array(rows), ref=[chance, 1.0], maximise=[True, False])) if rows else 0.0


def frozen_commit() -> str:
    """The commit of the code being run (``-dirty`` when the work tree differs)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(args, method: str, seed: int, teacher: Path, work: Path) -> dict:
    result = search_efficiency.run_one(args, method, seed, teacher, work, METHODS)
    tracker = Tracker(TrackingSettings(f"sqlite:///{work / f'{method}-s{seed}'}/mlflow.db", "rkd-search"))
    records = tracker.trial_records(tracker.latest_search(str((work / f"{method}-s{seed}").resolve())))
    for row, record in zip(result["trials"], records):
        row["learned"] = record.learned
    result["enqueued"] = len(load_space("default").enqueued_params(context_of(args, seed))) if METHODS[method].get("enqueue", True) else 0
    return result


def context_of(args, seed: int) -> TrialContext:
    """The trial context of a search here (CIFAR-10's shape): which hand-picked students fit the budget."""
    return TrialContext(budget_macs=parse_budget(args.budget).macs, in_channels=3, num_classes=10, resolution=32,
                        epochs=args.epochs, seed=seed)


def eligible(run: dict, threshold: float) -> list[dict]:
    """Fully trained students that learned: what a front, and a pick, are made of."""
    return [t for t in run["trials"] if t["state"] == "complete" and t["epochs"] >= t["planned"] > 0
            and t["metrics"].get("val_acc", 0.0) > threshold]


def pick(run: dict, threshold: float) -> dict | None:
    """The search's most accurate learned student (fewer MACs first on a tie): ``train --best``'s choice."""
    students = eligible(run, threshold)
    return max(students, key=lambda t: (t["metrics"]["val_acc"], -t["metrics"]["macs"])) if students else None


def summary(run: dict, args, threshold: float, chance: float) -> dict:
    budget = parse_budget(args.budget).macs
    points = [(t["metrics"]["val_acc"], t["metrics"]["macs"]) for t in eligible(run, threshold)]
    chosen = pick(run, threshold)
    return {
        **{f"best_{name}": at(run["traces"]["best_val_acc"], share * args.compute)
           for name, share in (("quarter", 0.25), ("half", 0.5), ("all", 1.0))},
        "pick_test": chosen["metrics"].get("test_acc", 0.0) if chosen else 0.0,
        "pick": chosen["student"] if chosen else "-",
        "pick_enqueued": bool(chosen and chosen["number"] < run.get("enqueued", 0)),
        "hv_linear": linear_hypervolume(points, budget, chance),
        "hv_log": log_hypervolume(points, budget, chance),
    }


def paired(a: list[float], b: list[float]) -> tuple[list[float], float, float, float]:
    """Per-seed differences a - b, their median, mean and standard error of the mean."""
    differences = [x - y for x, y in zip(a, b)]
    se = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else float("nan")
    return differences, statistics.median(differences), statistics.mean(differences), se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(parser)
    parser.add_argument("--budget", default="10MFLOPs")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--compute", type=int, default=32, help="student-epochs per search (default 32: 8 full trials)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    add_common_flags(parser, "/tmp/rkd-bench-out-of-sample", RESULTS, data=False)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    command = "python bench/search_out_of_sample.py " + " ".join(sys.argv[1:])
    args.data_dir = args.work / f"data-{args.offset}-{args.per_class}"
    settings = {"budget": args.budget, "epochs": args.epochs, "compute": args.compute, "offset": args.offset,
                "per_class": args.per_class, "source": str(args.source.resolve())}
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    runs = stored.get("runs", []) if stored.get("settings") == settings else []
    if args.report_only:
        if not stored.get("runs"):
            parser.error(f"--report-only: {args.results} holds no runs; run the benchmark first")
        report(args, stored, stored.get("command", command))  # the command that made the runs
        return
    frozen = frozen_commit()
    if runs and stored.get("frozen") and stored["frozen"] != frozen:
        print(f"note: the results file's runs were made by {stored['frozen']}, this code is {frozen}", flush=True)
    make_split(args.source, args.data_dir, args.offset, args.per_class)
    data = load_dataset("imagefolder", args.data_dir, seed=0, cache_dir=args.cache_dir)
    model, spec, meta, _ = train_teacher(data, defaults.TEACHER, epochs=args.teacher_epochs, seed=0, cache_dir=args.cache_dir)
    teacher = save_checkpoint(model, spec, args.work / "teacher.pt", meta)
    print(f"split {args.data_dir}: {len(data.train_labels)}/{len(data.val_labels)}/{len(data.test_labels)}; teacher {spec.name}: "
          f"val acc {meta['val_acc']:.4f}, test acc {meta['test_acc']:.4f}; code {frozen}", flush=True)
    for seed in args.seeds:  # seed by seed, every arm: a stopped run still has paired seeds
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            result = run_one(args, method, seed, teacher, args.work)
            result["frozen"] = frozen
            runs.append(result)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            stored = {"settings": settings, "teacher": meta, "frozen": stored.get("frozen") or frozen, "command": command,
                      "threads": torch.get_num_threads(),
                      "split": f"{len(data.train_labels)}/{len(data.val_labels)}/{len(data.test_labels)}", "runs": runs}
            args.results.write_text(json.dumps(stored, indent=1))
            print(f"{method:8s} seed {seed}: {len(result['trials'])} trials, best val acc "
                  f"{at(result['traces']['best_val_acc'], args.compute):.4f}, {result['seconds'] / 60:.1f} min", flush=True)
    report(args, stored, command)


def report(args, stored: dict, command: str) -> None:
    runs = stored["runs"]
    val_size = 5000 if not stored.get("split") else int(stored["split"].split("/")[1])
    chance = 0.1
    threshold = learned_threshold(chance, val_size)
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    seeds = sorted(set.intersection(*({r["seed"] for r in runs if r["method"] == m} for m in methods))) if methods else []
    table = {m: {r["seed"]: summary(r, args, threshold, chance) for r in runs if r["method"] == m and r["seed"] in seeds}
             for m in methods}
    columns = (("best_quarter", "best val acc at 1/4 (%)"), ("best_half", "at 1/2 (%)"), ("best_all", "at all (%)"),
               ("pick_test", "test acc of the pick (%)"), ("hv_linear", "hypervolume, linear MACs"),
               ("hv_log", "hypervolume, log MACs"))
    rows = []
    for m in methods:
        cells = []
        for key, _ in columns:
            values = [table[m][s][key] for s in seeds]
            scale = 100 if not key.startswith("hv") else 1
            spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
            digits = 2 if scale == 100 else 3
            cells.append(f"{statistics.mean(values) * scale:.{digits}f} ± {spread:.{digits}f}")
        picks = ", ".join(table[m][s]["pick"] + ("*" if table[m][s]["pick_enqueued"] else "") for s in seeds)
        rows.append(f"| {m} | " + " | ".join(cells) + f" | {picks} |")
    differences = []
    verdict_parts = []
    for a, b in (("default", "random"), ("enqueue", "random"), ("default", "enqueue")):
        if a not in table or b not in table:
            continue
        for key, label in (("best_all", "best val acc at all"), ("best_quarter", "at 1/4"), ("pick_test", "test acc of the pick"),
                           ("hv_log", "hypervolume, log MACs")):
            scale = 100 if not key.startswith("hv") else 1
            per_seed, median, mean, se = paired([table[a][s][key] for s in seeds], [table[b][s][key] for s in seeds])
            digits = 2 if scale == 100 else 3
            differences.append(f"| {a} - {b} | {label} | {', '.join(f'{scale * d:+.{digits}f}' for d in per_seed)} | "
                               f"{scale * median:+.{digits}f} | {scale * mean:+.{digits}f} ± {scale * se:.{digits}f} |")
            if key == "best_all":
                verdict_parts.append((a, b, median, mean, se))
    verdicts = []
    for a, b, median, mean, se in verdict_parts:
        ok = median > 0 and (mean > se if (a, b) == ("default", "random") else True)
        need = "median above 0" + (" and mean above one standard error" if (a, b) == ("default", "random") else "")
        verdicts.append(f"{a} - {b}: median {100 * median:+.2f}, mean {100 * mean:+.2f} ± {100 * se:.2f} points ({need}: "
                        f"{'met' if ok else 'not met'})")
    teacher = stored.get("teacher", {})
    frozen = stored.get("frozen", "unknown")
    total = sum(r["seconds"] for r in runs) / 60
    write_section(Path(args.doc), "search_out_of_sample", "The search out of sample: random, enqueue only and the default", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {stored.get('threads', torch.get_num_threads())} "
        f"threads, code "
        f"`{frozen}` (the default frozen before the run). Images never used to tune the default: CIFAR-10 training images "
        f"{args.offset}-{args.offset + args.per_class - 1} of each class for training, the next {args.per_class} for validation "
        f"and the next {args.per_class} for test ({stored.get('split', '?')}), budget {args.budget} (the default was tuned at "
        f"20 M), teacher WRN-28-1 trained on that split ({args.teacher_epochs} epochs, test acc "
        f"{100 * teacher.get('test_acc', float('nan')):.2f}%), {args.epochs} epochs per trial, {args.compute} student-epochs "
        f"per search, paired seeds {', '.join(map(str, seeds))} ({len(seeds)} of the {len(args.seeds)} planned"
        + (f"; seeds {', '.join(str(s) for s in args.seeds if s not in seeds)} not run yet: the same command continues" if
           len(seeds) < len(args.seeds) else "") + f"); the {len(runs)} searches took {total:.0f} minutes. The "
        f"standard error of one validation accuracy near 40% on {val_size} images is "
        f"{100 * math.sqrt(0.4 * 0.6 / val_size):.2f} points.",
        "",
        "| arm | " + " | ".join(label for _, label in columns) + " | pick per seed |",
        "|---|" + "---|" * (len(columns) + 1),
        *rows,
        "",
        "(* a hand-picked, enqueued student.)",
        "",
        "Paired differences (per seed, in the order of the seeds; median; mean ± standard error of the mean):",
        "",
        "| arms | measure | per seed | median | mean ± se |",
        "|---|---|---|---|---|",
        *differences,
        "",
        "Goal (default > enqueue only > random in best validation accuracy at all of the compute): " + "; ".join(verdicts) + ".",
    ])
    print("\n".join(rows + differences + verdicts))


if __name__ == "__main__":
    main()
