"""Which recipe should ``rkd-search train`` use for the final training? An ablation, out of sample.

    python bench/final_recipe.py [--student mbv2-2-3-3_0.75_e6k3] [--epochs 15] [--seeds 1 2] [--shard 0/2]

``bench/champion.py`` (seed 0, cifar10-small) found the champion trained by ``rkd-search train``
with its 4-epoch trial's recipe stretched to 15 epochs (62.10 %) below the same architecture
trained the usual way with Hinton KD (67.16 %). The two recipes differ in three things at once;
this benchmark walks from one to the other a step at a time, on the same architecture, so each
step's effect is measured:

- ``trial``: the champion trial's recipe (CE + Hinton KD 0.5 at T = 4 + cosine dense graph-RKD 25 on
  stages 1-3; SGD lr 0.1, momentum 0.9, weight decay 1e-4, cosine), as ``train --recipe trial`` takes it;
- ``trial-losses``: the same losses with the usual optimiser (weight decay 5e-4, Nesterov);
- ``kd+graph``: and KD weight 1 (the usual KD recipe plus the graph term);
- ``kd``: and no graph term (the usual KD recipe: CE + KD 1, the champion benchmark's ``kd`` arm).

Each arm is ``rkd-search train``'s recipe of that name (``search.recipes.RECIPES``) applied to the trial's.
It runs where that finding was not made: images of the full CIFAR-10 disjoint from cifar10-small
(training images 1000-2499 of each class, 5,000/5,000/5,000, the split and teacher of
``bench/search_out_of_sample.py``) and seeds other than 0. Every training is ``--epochs`` epochs
(15: the champion benchmark's N). Each (arm, seed) result is kept in the work folder as it
finishes: an interrupted run continues, and two processes (``--shard 0/2``, ``--shard 1/2``) split
the trainings. Reported: test accuracy per arm and seed, and the paired differences of each step
with their standard errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from _common import add_common_flags
from _docs import write_section
from rkd_search.search.recipes import RECIPES
from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig, defaults, fit, load_dataset, train_teacher
from search_out_of_sample import add_split_flags, make_split

RESULTS = Path("bench/results/final_recipe.json")
TRIAL = {"loss": LossConfig(ce_weight=1.0, kd_weight=0.5, temperature=4.0, graph_weight=25.0, similarity="cosine", k=None,
                            layers=(1, 2, 3), reduction="sum"),
         "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False, "schedule": "cosine", "batch_size": 128}
"""The recipe of the trial that made the seed-0 champion of ``bench/champion.py`` (its spec.json)."""
ARMS = ("trial", "trial-losses", "kd+graph", "kd")
"""``rkd-search train``'s recipes (``search.recipes.RECIPES``), each changing one thing from the one before it."""
STEPS = (("trial-losses", "trial"), ("kd+graph", "trial-losses"), ("kd", "kd+graph"), ("kd+graph", "trial"), ("kd", "trial"))


def train_one(args, data, teacher, arm: str, seed: int) -> dict:
    trial = TrainConfig(student=ModelSpec.parse(args.student, data.input_shape[0], data.num_classes), epochs=args.epochs,
                        seed=seed, precision="fp32", compile="off", **TRIAL)
    config = RECIPES[arm].apply(trial)
    started = time.perf_counter()
    result = fit(config, data, teacher=teacher)
    return {"arm": arm, "seed": seed, "test_acc": result.test_acc, "val_acc": result.val_acc,
            "teacher_agreement": result.teacher_agreement, "val_curve": [h.val_acc for h in result.history],
            "seconds": time.perf_counter() - started}


def paired(stored: dict, a: str, b: str) -> tuple[list[float], float, float]:
    """``a`` minus ``b`` on every seed both were trained with."""
    by = {(r["arm"], r["seed"]): r["test_acc"] for r in stored["runs"]}
    diffs = [by[a, s] - by[b, s] for s in stored["settings"]["seeds"] if (a, s) in by and (b, s) in by]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return diffs, statistics.mean(diffs), se


def report(args, stored: dict) -> None:
    s = stored["settings"]
    runs = stored["runs"]
    seeds = s["seeds"]
    teacher = stored["teacher"]
    tested = int(s["sizes"].split("/")[-1])
    level = statistics.mean(r["test_acc"] for r in runs)
    lines = [
        "Commands (each adds its trainings to the work folder; the report reads them all): "
        + ", ".join(f"`{c}`" for c in stored.get("commands") or [stored["command"]]) + "  ",
        f"Run {stored['date']} on {platform.machine()} (CPU), torch {stored['torch']}, {stored['shards']} process(es) of "
        f"{stored['threads']} thread(s): student {s['student']}, {s['epochs']} epochs per training, batch 128, fp32; data "
        f"{s['data_name']} ({s['sizes']}), teacher WRN-28-1 trained on it (test acc {100 * teacher['test_acc']:.2f}%); seeds "
        f"{', '.join(map(str, seeds))}. Test accuracy on {tested} images: the standard error of one accuracy near "
        f"{100 * level:.0f}% is {100 * math.sqrt(level * (1 - level) / tested):.2f} points.",
        "",
        "| arm | what changes | " + " | ".join(f"test acc seed {x} (%)" for x in seeds) + " | mean (%) | val acc mean (%) |",
        "|---|---|" + "---|" * len(seeds) + "---|---|",
    ]
    what = {"trial": "the trial's recipe (what `train` did before `--recipe`)", "trial-losses": "the usual optimiser: weight decay "
            "5e-4, Nesterov", "kd+graph": "and KD weight 1", "kd": "and no graph term (the usual KD recipe)"}
    for arm in ARMS:
        mine = {r["seed"]: r for r in runs if r["arm"] == arm}
        tests = [100 * mine[x]["test_acc"] for x in seeds if x in mine]
        vals = [100 * mine[x]["val_acc"] for x in seeds if x in mine]
        lines.append(f"| {arm} | {what[arm]} | " + " | ".join(f"{100 * mine[x]['test_acc']:.2f}" if x in mine else "-" for x in seeds)
                     + f" | {statistics.mean(tests):.2f} ({len(tests)} seeds) | {statistics.mean(vals):.2f} |")
    lines += ["", "Paired differences in test accuracy (points; mean ± standard error over seeds):", ""]
    for a, b in STEPS:
        diffs, mean, se = paired(stored, a, b)
        lines.append(f"- {a} − {b}: " + ", ".join(f"{100 * d:+.2f}" for d in diffs)
                     + f" (mean {100 * mean:+.2f} ± {100 * se:.2f}, {len(diffs)} seeds)")
    write_section(Path(args.doc), "final_recipe", "The final training's recipe, out of sample", lines)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(parser)
    parser.add_argument("--student", default="mbv2-2-3-3_0.75_e6k3", help="the architecture (default: the seed-0 champion's)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                        help="the recipes trained (default all); the report pairs every arm on the seeds it shares with another")
    parser.add_argument("--shard", default="0/1", help="I/N: train every N-th (arm, seed) from the I-th (two processes split the work)")
    add_common_flags(parser, "/tmp/rkd-bench-final-recipe", RESULTS, data=False)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    flags = sys.argv[1:]
    if "--shard" in flags:
        del flags[flags.index("--shard"):flags.index("--shard") + 2]
    command = " ".join(["python bench/final_recipe.py", *flags])
    if args.report_only:
        if not args.results.exists():
            parser.error(f"--report-only: {args.results} does not exist; run the benchmark first")
        stored = json.loads(args.results.read_text())
        report(args, stored)
        return
    shard, shards = (int(x) for x in args.shard.split("/"))
    data_dir = make_split(args.source, args.work / f"data-{args.offset}-{args.per_class}", args.offset, args.per_class)
    data = load_dataset("imagefolder", str(data_dir), seed=0, cache_dir=args.cache_dir)
    teacher, _, meta, _ = train_teacher(data, defaults.TEACHER, epochs=args.teacher_epochs, seed=0, cache_dir=args.cache_dir)
    folder = args.work / f"runs-{args.student}-e{args.epochs}"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    for number, (arm, seed) in enumerate(jobs):
        path = folder / f"{arm}-s{seed}.json"
        if number % shards != shard or path.exists():
            continue
        result = train_one(args, data, teacher, arm, seed)
        path.write_text(json.dumps(result))
        print(f"[{number + 1}/{len(jobs)}] {arm} seed {seed}: test acc {result['test_acc']:.4f} ({result['seconds']:.0f} s)", flush=True)
    done = [job for job in jobs if (folder / f"{job[0]}-s{job[1]}.json").exists()]
    if len(done) < len(jobs):
        print(f"{len(done)} of {len(jobs)} trainings done (the other shard's remain)")
        return
    # every training of this student and schedule in the work folder: earlier runs with other --seeds or --arms too
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    runs = [r for r in runs if r["arm"] in ARMS]
    sizes = "/".join(str(len(x)) for x in (data.train_labels, data.val_labels, data.test_labels))
    seeds = sorted({r["seed"] for r in runs})
    earlier = json.loads(args.results.read_text()) if args.results.exists() else {}
    same = earlier.get("settings", {}).get("student") == args.student and earlier.get("settings", {}).get("epochs") == args.epochs
    commands = [c for c in (earlier.get("commands") or [earlier.get("command")]) if c] if same else []
    stored = {"settings": {"student": args.student, "epochs": args.epochs, "seeds": seeds, "offset": args.offset,
                           "per_class": args.per_class, "data_name": f"CIFAR-10 training images {args.offset}-"
                           f"{args.offset + 3 * args.per_class - 1} of each class", "sizes": sizes},
              "teacher": {k: meta[k] for k in ("val_acc", "test_acc")}, "date": str(date.today()), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "shards": shards,
              "commands": [*(c for c in commands if c != command), command], "runs": runs}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(stored, indent=1))
    report(args, stored)


if __name__ == "__main__":
    main()
