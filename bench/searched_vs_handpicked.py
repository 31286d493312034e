"""The proof: does the default search find a student better than the hand-picked ones, at the same budget?

    python bench/searched_vs_handpicked.py [--compute 120] [--epochs 15] [--retrain-epochs 30] [--seeds 0 1 2]

On a GPU, where several trainings share the card: ``--jobs N`` (search trials at once, the CLI's
``--jobs``), ``--retrain-jobs N`` (retrainings at once, each in its own process with the teacher
live), ``--teacher-epochs``, ``--timeout`` (seconds before the search stops starting trials) and
``--section`` (the docs section the table goes to, so that a second dataset's proof sits beside
the first's). ``--report-only`` rewrites the section from the results file.

1. The default search (the CLI's defaults: default space, TPE, its hand-picked students first) on
   the CIFAR-10 subset at 20 M MACs, selecting on the subset's 5,000-image val/ split, stopped
   after ``--compute`` student-epochs.
2. Its best fully trained student by validation accuracy.
3. That student with the recipe the search found for it, and each hand-picked student of the space
   with its own recipe (the paper's WRN-28-0.5 with the authors' graph-RKD settings and step
   schedule; a ResNet-20 and a MobileNetV2 at the widest width that fits), each retrained for
   ``--retrain-epochs`` epochs with graph-RKD from the same teacher (WRN-28-1, ``--teacher-epochs``),
   ``--seeds`` seeds each (seed: batches and initialisation).
4. Test accuracy (mean +- std), MACs, parameters and teacher agreement, to docs/benchmarks.md.

Results accumulate in bench/results/searched_vs_handpicked.json, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch
import torch.multiprocessing

from _common import add_common_flags
from _docs import write_section
from rkd_search.search.budget import parse_budget
from rkd_search.search.driver import run_search
from rkd_search.search.options import SearchOptions
from rkd_search.search.tracking import Tracker, TrackingSettings
from rkd_search.trainer import TeacherTargets, TrainConfig, defaults, fit, load_checkpoint, load_dataset, save_checkpoint, train_teacher
from rkd_search.trainer.config import COMPILE_MODES

RESULTS = Path("bench/results/searched_vs_handpicked.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="20MFLOPs")
    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS, help="epochs of a search trial (the CLI's default)")
    parser.add_argument("--compute", type=int, default=120, help="student-epochs the search may train (default 120: 8 trials of 15 epochs)")
    parser.add_argument("--retrain-epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="search trials training at once (the CLI's --jobs)")
    parser.add_argument("--retrain-jobs", type=int, default=1, help="retrainings at once, each in its own process, teacher live")
    parser.add_argument("--compile", default="auto", choices=COMPILE_MODES, help="the training step through torch.compile (the CLI's)")
    parser.add_argument("--timeout", type=float, help="seconds after which the search starts no more trials")
    parser.add_argument("--section", default="searched_vs_handpicked", help="the docs section to write")
    add_common_flags(parser, "/tmp/rkd-bench-searched-vs-handpicked", RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    command = "python bench/searched_vs_handpicked.py " + " ".join(sys.argv[1:])
    settings = {"budget": args.budget, "epochs": args.epochs, "compute": args.compute, "retrain_epochs": args.retrain_epochs,
                "teacher_epochs": args.teacher_epochs, "data": str(Path(args.data_dir).resolve())}
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.report_only:
        report(args, stored, stored["command"])
        return
    results = stored if stored.get("settings") == settings else {"settings": settings}
    results["command"] = command
    results["date"] = str(date.today())
    results["parallel"] = {"jobs": args.jobs, "retrain_jobs": args.retrain_jobs, "compile": args.compile}

    def save() -> None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))

    data = load_dataset("imagefolder", args.data_dir, seed=0, cache_dir=args.cache_dir)
    started = time.perf_counter()
    teacher, teacher_spec, teacher_meta, _ = train_teacher(data, "wrn28_1", epochs=args.teacher_epochs, seed=0, cache_dir=args.cache_dir,
                                                           compile=args.compile)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher_file = save_checkpoint(teacher, teacher_spec, work / "teacher.pt", teacher_meta)
    results.setdefault("machine", _machine())
    results.setdefault("data_sizes", {"train": len(data.train_labels), "val": len(data.val_labels), "test": len(data.test_labels),
                                      "val_source": data.val_source})
    results.setdefault("teacher", {"test_acc": teacher_meta["test_acc"], "minutes": (time.perf_counter() - started) / 60})
    print(f"teacher: test {teacher_meta['test_acc']:.4f} ({results['teacher']['minutes']:.1f} min)", flush=True)

    if "search" not in results:
        out = work / "search"
        options = SearchOptions(budget=parse_budget(args.budget), trials=100_000, dataset="imagefolder", data_dir=args.data_dir,
                                teacher=str(teacher_file), epochs=args.epochs, seed=0, output=out,
                                tracking_uri=f"sqlite:///{out}/mlflow.db", cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                                progress=False, max_student_epochs=args.compute, jobs=args.jobs, compile=args.compile,
                                timeout=args.timeout)
        started = time.perf_counter()
        run_search(options)
        tracker = Tracker(TrackingSettings(f"sqlite:///{out}/mlflow.db", "rkd-search"))
        parent = tracker.latest_search(str(out.resolve()))
        records = tracker.trial_records(parent)
        complete = [r for r in records if r.full_fidelity]

        def config_of(record) -> dict:
            spec_file = Path(tracker.client.download_artifacts(record.run_id, "student/spec.json", str(work / record.run_id)))
            return json.loads(spec_file.read_text())["config"]

        def row(record) -> dict:
            return {"student": record.params["student.name"], "val_acc": record.metrics["val_acc"],
                    "test_acc": record.metrics["test_acc"], "macs": record.metrics["macs"], "config": config_of(record)}

        best = max(complete, key=lambda r: r.metrics["val_acc"])
        enqueued = len(options_enqueued(tracker, parent))
        handpicked = {r.params["student.name"]: row(r) for r in complete if r.number < enqueued}
        results["search"] = {"minutes": (time.perf_counter() - started) / 60, "trials": len(records), "complete": len(complete),
                             "student_epochs": sum(r.epochs for r in records), "best": row(best),
                             "best_is_handpicked": best.number < enqueued, "handpicked": handpicked}
        save()
        print(f"search: {len(records)} trials, best {best.params['student.name']} val {best.metrics['val_acc']:.4f}", flush=True)

    search = results["search"]
    best = search["best"]["student"]
    candidates = {} if search["best_is_handpicked"] else {f"searched: {best}": TrainConfig.from_dict(search["best"]["config"])}
    for name, entry in search["handpicked"].items():
        candidates[f"hand-picked: {name}"] = TrainConfig.from_dict(entry["config"])
    retrained = results.setdefault("retrained", {})
    if search["best_is_handpicked"]:  # the same trial, the same config: one retraining per seed serves both
        for key in [k for k in retrained if k.startswith(f"searched: {best}|")]:
            retrained.setdefault(f"hand-picked: {best}|{key.split('|')[1]}", retrained.pop(key))
    jobs = [(name, seed, replace(config, epochs=args.retrain_epochs, seed=seed, compile=args.compile))
            for seed in args.seeds for name, config in candidates.items() if f"{name}|{seed}" not in retrained]

    def record(name: str, seed: int, config: TrainConfig, entry: dict) -> None:
        retrained[f"{name}|{seed}"] = entry
        save()
        print(f"{name:40s} seed {seed}: test {entry['test_acc']:.4f}, agreement {entry['agreement']:.4f} "
              f"({entry['minutes']:.1f} min)", flush=True)

    if args.retrain_jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.retrain_jobs)
        context = torch.multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.retrain_jobs, mp_context=context) as pool:
            futures = {pool.submit(_retrain, config.to_dict(), args.data_dir, args.cache_dir, str(teacher_file), threads): (name, seed, config)
                       for name, seed, config in jobs}
            for future in concurrent.futures.as_completed(futures):
                record(*futures[future], future.result())
    else:
        targets: dict[int, TeacherTargets] = {}
        for name, seed, config in jobs:
            if seed not in targets:
                targets.clear()
                targets[seed] = TeacherTargets.compute(teacher, data, epochs=args.retrain_epochs, batch_size=config.batch_size, seed=seed,
                                                       cache_dir=args.cache_dir)
            started = time.perf_counter()
            record(name, seed, config, _entry(fit(config, data, teacher=targets[seed]), config, started))
    report(args, results, command)


def _entry(result, config: TrainConfig, started: float) -> dict:
    return {"test_acc": result.test_acc, "val_acc": result.val_acc, "agreement": result.teacher_agreement, "kl": result.teacher_kl,
            "macs": result.macs, "params": result.params, "student": result.spec.name, "schedule": config.schedule,
            "minutes": (time.perf_counter() - started) / 60}


def _retrain(config: dict, data_dir: str, cache_dir: str | None, teacher_file: str, threads: int) -> dict:
    """One retraining in a worker process: the decoded data from the cache, the teacher run live."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    data = load_dataset("imagefolder", data_dir, seed=0, cache_dir=cache_dir)
    teacher, _, _ = load_checkpoint(teacher_file)
    config = TrainConfig.from_dict(config)
    return _entry(fit(config, data, teacher=teacher), config, started)


def _machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def options_enqueued(tracker: Tracker, parent: str) -> list:
    """The search's hand-picked trials: numbered first, as the study enqueued them."""
    from rkd_search.spaces import TrialContext, load_space

    params = tracker.client.get_run(parent).data.params
    context = TrialContext(budget_macs=float(params["budget.macs"]), in_channels=3, num_classes=10, resolution=32,
                           epochs=int(params["epochs"]), batch_size=int(params["batch_size"]))
    return load_space(params["space"]).enqueued_params(context)


def _shown(command: str) -> str:
    """The command without the options that only say where files go (results, docs, work folder)."""
    words, kept = command.split(), []
    for i, word in enumerate(words):
        if word in ("--results", "--doc", "--work", "--section") or (i and words[i - 1] in ("--results", "--doc", "--work", "--section")):
            continue
        kept.append(word)
    return " ".join(kept)


def _parallel(results: dict) -> str:
    run = results.get("parallel", {})
    parts = [f"{run['jobs']} trials at once"] if run.get("jobs", 1) > 1 else []
    if run.get("retrain_jobs", 1) > 1:
        parts.append(f"{run['retrain_jobs']} retrainings at once, teacher live")
    if run.get("compile", "auto") != "auto":
        parts.append(f"compile {run['compile']}")
    return "; " + ", ".join(parts) if parts else ""


def _mean_std(values: list[float], scale: float = 100) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.2f} ± {scale * spread:.2f}"


def report(args, results: dict, command: str) -> None:
    search = results["search"]
    rows, means = [], {}
    alias = f"hand-picked: {search['best']['student']}" if search["best_is_handpicked"] else None
    names = sorted({k.split("|")[0] for k in results["retrained"]}, key=lambda n: (not n.startswith("searched") and n != alias, n))
    for name in names:
        runs = [v for k, v in results["retrained"].items() if k.startswith(name + "|")]
        means[name] = statistics.mean(r["test_acc"] for r in runs)
        rows.append(f"| {'searched = ' + name if name == alias else name} | {runs[0]['macs'] / 1e6:.1f} M | {runs[0]['params'] / 1e3:.0f} k | {runs[0]['schedule']} | "
                    f"{_mean_std([r['test_acc'] for r in runs])} | {_mean_std([r['agreement'] for r in runs])} | {len(runs)} |")
    handpicked = [n for n in names if n.startswith("hand-picked")]
    searched = next((n for n in names if n.startswith("searched")), f"hand-picked: {search['best']['student']}")
    wrn = next((n for n in handpicked if "wrn28_0.5" in n), None)
    best_hand = max(handpicked, key=means.get) if handpicked else None
    lines = []
    if wrn:
        lines.append(f"Searched minus WRN-28-0.5 (the paper's recipe): **{100 * (means[searched] - means[wrn]):+.2f} points** "
                     "(goal: at least +1).")
    if best_hand:
        lines.append(f"Searched minus the best hand-picked student ({best_hand.split(': ')[1]}): "
                     f"**{100 * (means[searched] - means[best_hand]):+.2f} points** (goal: above 0).")
    if search["best_is_handpicked"]:
        lines.append(f"The search's best student by validation accuracy was the hand-picked {search['best']['student']} itself, with "
                     "its own recipe: its row is the searched student's too (one retraining per seed), and the searched student "
                     "cannot beat the best hand-picked one.")
    config = search["best"]["config"]
    loss = config["loss"]
    sizes, settings = results["data_sizes"], results["settings"]
    val_source = "its own val/ folder" if sizes["val_source"].startswith("val") else sizes["val_source"]
    write_section(Path(args.doc), args.section, "The proof: the searched student against the hand-picked ones", [
        f"Command: `{_shown(command)}`  ",
        f"Run {results.get('date', date.today())} on {results['machine']}: {Path(settings['data']).name} ({sizes['train']:,} training "
        f"images; selection on {sizes['val']:,} validation images from {val_source}; test on {sizes['test']:,} test images), budget "
        f"{settings['budget']}, teacher WRN-28-1 ({settings['teacher_epochs']} epochs, test acc {results['teacher']['test_acc']:.4f}). "
        f"The default search ({settings['epochs']} epochs per "
        f"trial, its hand-picked students first) ran for {search['student_epochs']} student-epochs ({search['trials']} trials, "
        f"{search['complete']} fully trained; {search['minutes']:.1f} min{_parallel(results)}). Its best student by validation accuracy, "
        f"{search['best']['student']} (val {100 * search['best']['val_acc']:.2f}%; found with graph weight "
        f"{loss['graph_weight']:.3g}, {loss['similarity']} graph, k {loss['k'] if loss['k'] else 'dense'}, stages {loss['layers']}, "
        f"KD weight {loss['kd_weight']:.3g}, lr {config['lr']:.3g}, {config['schedule']} schedule), and each hand-picked student "
        f"with its own recipe, retrained for {settings['retrain_epochs']} epochs with graph-RKD from the same teacher:",
        "",
        "| student | MACs | params | schedule | test acc (%) | teacher agreement (%) | seeds |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *lines,
    ])


if __name__ == "__main__":
    main()
