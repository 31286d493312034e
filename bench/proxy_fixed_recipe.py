"""The zero-cost scores, decided: students of the default space in the budget band, each trained
with one fixed recipe, ranked by each score before training.

    python bench/proxy_fixed_recipe.py [--students 60] [--repeats 20] [--budget 20MFLOPs] [--band 0.25] [--epochs 4]

``bench/proxy_rank.py`` judged the scores against random-search trials, whose recipes (learning
rate, loss weights, graph) were drawn too: part of what the scores failed to predict was the
recipe, which no score of an untrained network sees. Here every student trains with the same
recipe (the default space's hand-picked MobileNetV2 recipe: cosine dense graph-RKD on stages 1-3,
weight 25, Hinton KD 0.5 at T = 4, SGD lr 0.1, weight decay 1e-4, cosine schedule), so only the
architecture differs. Students are drawn uniformly from the default space's architectures (family,
depths, expansion, kernel, width among those that fit) and kept when their MACs fall in the band
[band x budget, budget]: the students a search at that budget chooses among.

The first ``--repeats`` students are trained again with another seed (another initialisation and
batch order): the Kendall tau between the two seeds' accuracies is how well the labels rank
themselves, the ceiling any score can reach. Reported: Kendall's tau (tau-b) between each score and
the trained validation accuracy, with a 95% bootstrap confidence interval over students
(``scipy.stats.bootstrap``, percentile, 2,000 resamples): ``graph`` (the relation term on stages
1-3, logged by every trial), ``diswot`` (both of DisWOT's terms, ``trainer.proxies.diswot``) and its
two terms, ``naswot``, ``synflow``, ``params`` and ``macs``. Each student's result is kept in the
work folder as it finishes: an interrupted run continues, and two processes with ``--shard 0/2`` and
``--shard 1/2`` split the students.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import optuna
import torch
from scipy.stats import bootstrap, kendalltau

from _common import add_common_flags
from _docs import write_section
from rkd_search.search.budget import parse_budget
from rkd_search.spaces import TrialContext, load_space
from rkd_search.trainer import LossConfig, TeacherTargets, TrainConfig, build_model, defaults, fit, load_dataset, train_teacher
from rkd_search.trainer.batches import train_batches
from rkd_search.trainer.proxies import ZeroCostScorer, diswot

RESULTS = Path("bench/results/proxy_fixed_recipe.json")
RECIPE = dict(loss=LossConfig(ce_weight=1.0, graph_weight=25.0, similarity="cosine", k=None, layers=(1, 2, 3), reduction="sum",
                              kd_weight=0.5, temperature=4.0),
              lr=0.1, weight_decay=1e-4, schedule="cosine", batch_size=128, precision="fp32", compile="off")
SCORES = ("graph", "diswot", "diswot.semantic", "diswot.relation", "naswot", "synflow", "params", "macs")


def draw_students(count: int, budget: float, band: float, data, seed: int) -> list[dict]:
    """``count`` distinct architectures of the default space with MACs in [band x budget, budget], in draw order."""
    space = load_space("default")
    context = TrialContext(budget_macs=budget, in_channels=data.input_shape[0], num_classes=data.num_classes,
                           resolution=data.resolution, epochs=1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    students, seen = [], set()
    for _ in range(100 * count):
        plan = space.suggest(study.ask(), context)
        spec = plan.config.student
        if plan.within_budget and plan.ops.macs >= band * budget and spec.name not in seen:
            seen.add(spec.name)
            students.append({"index": len(students), "name": spec.name, "spec": spec, "macs": plan.ops.macs, "params": plan.ops.params})
            if len(students) == count:
                return students
    raise SystemExit(f"only {len(students)} distinct students of the default space fall in the band: lower --band")


def train_one(student: dict, seed: int, args, data, teacher_model, targets: dict) -> dict:
    config = TrainConfig(student=student["spec"], epochs=args.epochs, seed=seed, **RECIPE)
    if seed not in targets:
        targets[seed] = TeacherTargets.compute(teacher_model, data, epochs=args.epochs, batch_size=config.batch_size, seed=seed,
                                               precision="fp32", cache_dir=args.cache_dir)
    scores = ZeroCostScorer(data, targets[seed])(config)
    torch.manual_seed(seed)  # the student's own initialisation, as fit draws it
    model = build_model(config.student.with_data(data.input_shape[0], data.num_classes))
    images, labels = next(iter(train_batches(data, config.batch_size, seed, 0)))
    scores.update({f"diswot.{k}" if k != "diswot" else k: v for k, v in diswot(model, teacher_model, images, labels).items()})
    started = time.perf_counter()
    result = fit(config, data, teacher=targets[seed])
    return {"name": student["name"], "seed": seed, "macs": student["macs"], "params": student["params"], "scores": scores,
            "val_acc": result.val_acc, "test_acc": result.test_acc, "val_curve": [h.val_acc for h in result.history],
            "seconds": time.perf_counter() - started}


def tau_with_interval(score: np.ndarray, accuracy: np.ndarray) -> tuple[float, float, float]:
    def statistic(x, y):
        return kendalltau(x, y).statistic

    tau = statistic(score, accuracy)
    interval = bootstrap((score, accuracy), statistic, paired=True, vectorized=False, n_resamples=2000, method="percentile",
                         random_state=np.random.default_rng(0)).confidence_interval
    return float(tau), float(interval.low), float(interval.high)


def report(args, stored: dict, command: str) -> None:
    runs = stored["runs"]
    first = {r["name"]: r for r in runs if r["seed"] == 0}
    second = {r["name"]: r for r in runs if r["seed"] == 1}
    names = sorted(first, key=lambda n: first[n]["index"])
    accuracy = np.array([first[n]["val_acc"] for n in names])
    values = {"macs": np.array([first[n]["macs"] for n in names], dtype=float)}
    for score in SCORES:
        if score != "macs":
            values[score] = np.array([first[n]["scores"][score] for n in names], dtype=float)
    rows = []
    for score in SCORES:
        tau, low, high = tau_with_interval(values[score], accuracy)
        rows.append((score, tau, low, high))
        print(f"{score:16s} tau {tau:+.3f} [{low:+.3f}, {high:+.3f}]", flush=True)
    repeated = [n for n in names if n in second]
    ceiling = None
    if len(repeated) >= 5:
        ceiling = tau_with_interval(np.array([second[n]["val_acc"] for n in repeated]), np.array([first[n]["val_acc"] for n in repeated]))
        print(f"two seeds' accuracies ({len(repeated)} students): tau {ceiling[0]:+.3f} [{ceiling[1]:+.3f}, {ceiling[2]:+.3f}]")
        subset_macs = np.array([first[n]["macs"] for n in repeated], dtype=float)
        on_subset = {"seed-0": tau_with_interval(subset_macs, np.array([first[n]["val_acc"] for n in repeated])),
                     "two seeds' mean": tau_with_interval(
                         subset_macs, np.array([(first[n]["val_acc"] + second[n]["val_acc"]) / 2 for n in repeated]))}
    best = max((r for r in rows if r[0] not in ("macs", "params")), key=lambda r: r[1])
    params = next(r for r in rows if r[0] == "params")
    macs = next(r for r in rows if r[0] == "macs")
    settings = stored["settings"]
    lines = [
        f"Command: `{command}`. Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {stored['shards']} process(es) of {stored['threads']} thread(s). "
        f"{len(names)} students of the default space with {settings['band']:g} to 1 x the {settings['budget']} budget "
        f"({min(values['macs']) / 1e6:.1f} to {max(values['macs']) / 1e6:.1f} M MACs), drawn uniformly (family, depths, expansion, "
        f"kernel, width), each trained {settings['epochs']} epoch(s) on `{settings['data']}` with one recipe (cosine dense graph-RKD "
        f"on stages 1-3 at 25, KD 0.5 at T = 4, SGD lr 0.1, weight decay 1e-4, cosine); teacher {stored['teacher']['name']} "
        f"(validation accuracy {stored['teacher']['val_acc']:.4f}). Validation accuracy of the students: "
        f"{accuracy.min():.4f} to {accuracy.max():.4f} (median {np.median(accuracy):.4f}; 5,000 images: one accuracy's standard "
        f"error about 0.7 points).",
        "",
        "| score | Kendall tau with validation accuracy | 95% interval |",
        "|---|---|---|",
        *[f"| {name} | {tau:+.3f} | [{low:+.3f}, {high:+.3f}] |" for name, tau, low, high in rows],
    ]
    if ceiling:
        lines.append(f"| *two seeds of the same students ({len(repeated)}): the labels' own ranking, the ceiling* | "
                     f"{ceiling[0]:+.3f} | [{ceiling[1]:+.3f}, {ceiling[2]:+.3f}] |")
    verdict = (f"the best zero-cost score, {best[0]} ({best[1]:+.3f}), is above MACs ({macs[1]:+.3f})" if best[1] > macs[1] else
               f"no zero-cost score beats MACs ({macs[1]:+.3f}; parameters {params[1]:+.3f}; the best zero-cost score, "
               f"{best[0]}, {best[1]:+.3f})")
    lines += ["", f"Result: {verdict}."]
    if ceiling:
        lines[-1] += (f" The labels rank themselves at {ceiling[0]:+.3f} (seed 0 against seed 1, {len(repeated)} students); on "
                      "those students MACs reach " + ", ".join(f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}] against the {k} accuracy"
                                                                for k, t in on_subset.items()) + ".")
    write_section(Path(args.doc), "proxy_fixed_recipe", "Zero-cost scores against one fixed recipe (bench/proxy_fixed_recipe.py)", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=20, help="the first N students trained with a second seed too")
    parser.add_argument("--budget", default="20MFLOPs")
    parser.add_argument("--band", type=float, default=0.25, help="students from band x budget to the budget")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every training (default 4: the search benchmarks' trials)")
    parser.add_argument("--shard", default="0/1", help="I/N: train every N-th student from the I-th (two processes split the work)")
    add_common_flags(parser, "/tmp/rkd-bench-proxy-fixed", RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    flags = sys.argv[1:]
    if "--shard" in flags:  # the command that makes the results, either shard's
        del flags[flags.index("--shard"):flags.index("--shard") + 2]
    command = " ".join(["python bench/proxy_fixed_recipe.py", *(f for f in flags if not f.startswith("--shard="))])
    if args.report_only:
        if not args.results.exists():
            parser.error(f"--report-only: {args.results} does not exist; run the benchmark first")
        stored = json.loads(args.results.read_text())
        report(args, stored, stored["command"])
        return
    shard, shards = (int(x) for x in args.shard.split("/"))
    data = load_dataset("imagefolder", args.data_dir, seed=0, cache_dir=args.cache_dir)
    teacher_model, teacher_spec, meta, _ = train_teacher(data, defaults.TEACHER, epochs=args.teacher_epochs, seed=0, cache_dir=args.cache_dir)
    budget = parse_budget(args.budget).macs
    students = draw_students(args.students, budget, args.band, data, seed=0)
    folder = args.work / "students"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(s, 0) for s in students] + [(s, 1) for s in students[:args.repeats]]
    targets: dict = {}
    for number, (student, seed) in enumerate(jobs):
        path = folder / f"{student['index']:03d}-s{seed}.json"
        if number % shards != shard or path.exists():
            continue
        result = train_one(student, seed, args, data, teacher_model, targets)
        path.write_text(json.dumps({**result, "index": student["index"]}))
        print(f"[{number + 1}/{len(jobs)}] {student['name']} seed {seed}: {result['macs'] / 1e6:.1f} M MACs, "
              f"val acc {result['val_acc']:.4f} ({result['seconds']:.0f} s)", flush=True)
    paths = [folder / f"{student['index']:03d}-s{seed}.json" for student, seed in jobs]
    runs = [json.loads(p.read_text()) for p in paths if p.exists()]
    if len(runs) < len(jobs):
        print(f"{len(runs)} of {len(jobs)} trainings done (the other shard's remain)")
        return
    stored = {"settings": {"budget": args.budget, "band": args.band, "epochs": args.epochs, "data": str(Path(args.data_dir)),
                           "students": args.students, "repeats": args.repeats},
              "teacher": {"name": teacher_spec.name, **{k: meta[k] for k in ("val_acc", "test_acc") if k in meta}},
              "threads": torch.get_num_threads(), "shards": shards, "command": command, "runs": runs}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(stored, indent=1))
    report(args, stored, command)


if __name__ == "__main__":
    main()
