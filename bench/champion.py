"""The user's question: is the student rkd-search ships better than a known small model trained the usual way?

    python bench/champion.py [--data-dir ../shared/data/cifar10-small] [--budget 20MFLOPs] [--seeds 0 1 2]
                             [--epochs 30] [--curve 10 20 60]

On the CIFAR-10 subset (5,000 training images, its 5,000-image val/ split for selection, 5,000
test images), per paired seed:

- ``champion``: the default search (``--compute`` student-epochs of ``--search-epochs``-epoch
  trials), then its best student trained by ``rkd-search train --best --epochs N --recipe R``
  (``--recipe``, default train's own: ``kd+graph``; the seed-0 results were made with ``trial``), from the
  search's teacher;
- ``random-best``: random search with the same compute, its best student trained the same way;
- each hand-picked student of the default space at the budget (WRN-28-0.5, ResNet-20, MobileNetV2
  at the widest width that fits) and MLPerf Tiny's ResNet-8 (``resnet8_1``: 16-32-64 channels, one
  basic block per stage, 1x1 shortcuts), trained as users train them without rkd-search: plain
  cross-entropy (``ce``), SGD with Nesterov momentum 0.9, lr 0.1, cosine, weight decay 5e-4, batch
  128 (the champion's batch: the same number of steps; pytorch-cifar-models used 256), the same N
  epochs and augmentation (crop with padding 4, flip); and the same with Hinton KD from the same
  teacher (``kd``: CE + KL at T = 4, T^2-scaled, weight 1).

The teacher (WRN-28-1, 30 epochs) is trained once and shared. Reported: test accuracy mean ± std
over seeds, the champion's paired differences with each arm (mean ± standard error), the teacher's
accuracy, the champion's int8 accuracy (ONNX Runtime, and LiteRT fully integer), and the champion
trained for other numbers of epochs on seed 0 (``--curve``), to show where accuracy flattens.
Results go to bench/results/champion.json; finished arms are reused, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from _common import add_common_flags
from _docs import write_section
from rkd_search.search.budget import parse_budget
from rkd_search.search.cli import main as cli
from rkd_search.search.driver import run_search
from rkd_search.search.options import SearchOptions
from rkd_search.search.tracking import Tracker, TrackingSettings
from rkd_search.search.recipes import DEFAULT_RECIPE, RECIPES, USUAL_OPTIM
from rkd_search.spaces import TrialContext, load_space
from rkd_search.spaces._space import Architecture
from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig, count_spec_ops, defaults, fit, load_dataset, save_checkpoint, train_teacher

RESULTS = Path("bench/results/champion.json")
SEARCHES = {"default": {"sampler": "tpe"}, "random": {"sampler": "random", "enqueue": False}}
MLPERF_RESNET8 = "resnet8_1"
USUAL = dict(**USUAL_OPTIM, batch_size=128, precision="fp32")
"""The recipe a user trains a known small model with (pytorch-cifar-models), at the champion's batch size."""


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return head.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def handpicked(budget: float, data) -> list[ModelSpec]:
    """The default space's hand-picked students at the budget (the widest width that fits), and MLPerf Tiny's ResNet-8."""
    space = load_space("default")
    context = TrialContext(budget_macs=budget, in_channels=data.input_shape[0], num_classes=data.num_classes,
                           resolution=data.resolution, epochs=1)
    specs = []
    for seed in space.spec.enqueue:
        if seed.budget_share < 1.0:
            continue
        depths = tuple(seed.stage_depths) if seed.stage_depths else None
        arch = Architecture(seed.family, sum(depths) if depths else seed.depth, depths, None,
                            float(seed.expansion) if seed.expansion else None, seed.kernel)
        widths = space.feasible_widths(arch, context)
        width = widths[-1] if seed.width == "max" else seed.width
        if widths and width in widths:
            specs.append(arch.spec(width, context))
    return specs + [ModelSpec.parse(MLPERF_RESNET8, data.input_shape[0], data.num_classes)]


def run_cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(list(args))
    if code != 0:
        raise SystemExit(f"rkd-search {' '.join(args)} exited {code}:\n{out.getvalue()[-2000:]}")
    return out.getvalue()


def search(args, method: str, seed: int, teacher: Path) -> Path:
    out = args.work / f"{method}-s{seed}"
    options = SearchOptions(budget=parse_budget(args.budget), trials=100_000, dataset="imagefolder", data_dir=args.data_dir,
                            teacher=str(teacher), epochs=args.search_epochs, space="default", seed=seed, output=out,
                            tracking_uri=f"sqlite:///{out}/mlflow.db", cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                            progress=False, max_student_epochs=args.compute, **SEARCHES[method])
    run_search(options)
    return out


def train_best(args, out: Path, epochs: int, run_id: str | None = None) -> dict:
    """``rkd-search train`` on the search in ``out``: its best student (or ``run_id``), ``epochs`` epochs."""
    uri = f"sqlite:///{out}/mlflow.db"
    started = time.perf_counter()
    target = [run_id] if run_id else ["--best"]
    run_cli("train", *target, "--epochs", str(epochs), "--recipe", args.recipe, "--output", str(out), "--tracking-uri", uri,
            "--no-progress")
    tracker = Tracker(TrackingSettings(uri, "rkd-search"))
    runs = tracker.search("tags.`rkd.role` = 'train'", order_by=["attributes.start_time DESC"])
    run = next(r for r in runs if r.data.params.get("train.epochs") == str(epochs)
               and r.data.params.get("train.recipe", "trial") == args.recipe  # runs before --recipe trained the trial's
               and (run_id is None or r.data.tags.get("rkd.trial_run") == run_id))
    trial = tracker.client.get_run(run.data.tags["rkd.trial_run"])
    history = sorted(tracker.client.get_metric_history(run.info.run_id, "epoch.val_acc"), key=lambda m: m.step)
    return {"run_id": run.info.run_id, "trial_run": trial.info.run_id, "student": trial.data.params["student.name"],
            "trial_val_acc": trial.data.metrics.get("val_acc"), "trial_test_acc": trial.data.metrics.get("test_acc"),
            "recipe": {k: v for k, v in trial.data.params.items() if k.startswith(("student.", "graph.", "loss.", "optim."))},
            **{k: run.data.metrics.get(k) for k in ("test_acc", "val_acc", "teacher_agreement", "teacher_kl", "macs", "params",
                                                   "onnx_test_acc", "int8_test_acc")},
            "val_curve": [m.value for m in history], "seconds": time.perf_counter() - started}


def litert_int8(args, out: Path, run_id: str) -> dict:
    """The trained champion exported fully integer with LiteRT, its accuracy measured by the interpreter."""
    uri = f"sqlite:///{out}/mlflow.db"
    run_cli("export", run_id, "--format", "litert", "--int8", "--raw-input", "--output", str(out / "deploy"), "--tracking-uri", uri)
    tracker = Tracker(TrackingSettings(uri, "rkd-search"))
    metrics = tracker.client.get_run(run_id).data.metrics
    folder = next((out / "deploy" / "exports").iterdir())
    card = json.loads((folder / "student.json").read_text())
    return {"litert_test_acc": metrics.get("litert_test_acc"), "litert_int8_test_acc": metrics.get("litert_int8_test_acc"),
            "int8_bytes": card["litert"]["flash_bytes"], "fully_integer": card["litert"].get("fully_integer")}


def baseline(args, data, spec: ModelSpec, kd: bool, seed: int, teacher) -> dict:
    loss = LossConfig(ce_weight=1.0, kd_weight=1.0 if kd else 0.0, temperature=defaults.KD_TEMPERATURE)
    config = TrainConfig(student=spec, loss=loss, epochs=args.epochs, seed=seed, **USUAL)
    started = time.perf_counter()
    result = fit(config, data, teacher=teacher)
    ops = count_spec_ops(spec, data.resolution)
    return {"student": spec.name, "test_acc": result.test_acc, "val_acc": result.val_acc, "teacher_agreement": result.teacher_agreement,
            "macs": ops.macs, "params": ops.params, "val_curve": [h.val_acc for h in result.history],
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="20MFLOPs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="epochs of every final training (default: chosen from the curve)")
    parser.add_argument("--curve", type=int, nargs="+", default=[10, 20, 40],
                        help="epoch counts the first seed's champion is trained for first (the accuracy-against-epochs curve); "
                             "without --epochs, every arm then trains for the fewest of them whose validation accuracy is "
                             "within one standard error of the curve's best")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES), help=f"rkd-search train's --recipe (default {DEFAULT_RECIPE})")
    parser.add_argument("--search-epochs", type=int, default=4)
    parser.add_argument("--compute", type=int, default=32, help="student-epochs per search (default 32: 8 four-epoch trials)")
    add_common_flags(parser, "/tmp/rkd-bench-champion", RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    command = "python bench/champion.py " + " ".join(sys.argv[1:])
    settings = {"budget": args.budget, "search_epochs": args.search_epochs, "compute": args.compute,
                "data": str(Path(args.data_dir).resolve()), "recipe": args.recipe}
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.report_only:  # the results as they were made, whatever this command's settings
        if not stored.get("arms"):
            parser.error(f"--report-only: {args.results} holds no results; run the benchmark first")
        report(args, stored, stored.get("command", command))  # the command that made the results
        return
    if stored.get("settings") != settings:
        stored = {"settings": settings, "arms": {}, "curve": {}}

    def save() -> None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(stored, indent=1))

    data = load_dataset("imagefolder", args.data_dir, seed=0, cache_dir=args.cache_dir)
    model, spec, meta, _ = train_teacher(data, defaults.TEACHER, epochs=args.teacher_epochs, seed=0, cache_dir=args.cache_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = save_checkpoint(model, spec, args.work / "teacher.pt", meta)
    stored.update(teacher=meta, commit=stored.get("commit") or commit(), torch=torch.__version__, threads=torch.get_num_threads(),
                  command=command, date=str(date.today()))
    print(f"teacher {spec.name}: val acc {meta['val_acc']:.4f}, test acc {meta['test_acc']:.4f}", flush=True)
    budget = parse_budget(args.budget).macs
    students = handpicked(budget, data)
    searched = stored.setdefault("searched", {})

    def searched_once(method: str, seed: int) -> Path:
        out = args.work / f"{method}-s{seed}"
        if f"{method}-{seed}" not in searched:  # a search stopped half-way resumes in its folder
            started = time.perf_counter()
            search(args, method, seed, teacher)
            searched[f"{method}-{seed}"] = {"seconds": time.perf_counter() - started}
            save()
        return out

    # the curve first: the first seed's champion trained for each number of epochs, to choose N
    first = searched_once("default", args.seeds[0])
    for epochs in args.curve:
        if str(epochs) not in stored["curve"]:
            stored["curve"][str(epochs)] = train_best(args, first, epochs)
            save()
            print(f"curve: {epochs} epochs, val acc {stored['curve'][str(epochs)]['val_acc']:.4f}", flush=True)
    args.epochs = args.epochs or choose_epochs(stored["curve"], len(data.val_labels))
    if stored.get("epochs") not in (None, args.epochs):
        stored["arms"] = {}  # arms trained for another N: start them again
    stored["epochs"] = args.epochs
    save()
    print(f"every final training: {args.epochs} epochs", flush=True)
    arms = stored["arms"]
    for seed in args.seeds:
        key = str(seed)
        # the champion and the usual trainings first; random search (a search of its own) last
        for method, arm in (("default", "champion"), *((None, spec) for spec in students), ("random", "random-best")):
            if method is None:
                spec = arm
                for kd in (False, True):
                    arm = f"{spec.name} {'kd' if kd else 'ce'}"
                    if key in arms.get(arm, {}):
                        continue
                    arms.setdefault(arm, {})[key] = baseline(args, data, spec, kd, seed, model)
                    save()
                    print(f"seed {seed} {arm}: test acc {arms[arm][key]['test_acc']:.4f}", flush=True)
                continue
            if key in arms.get(arm, {}):
                continue
            out = searched_once(method, seed)
            result = train_best(args, out, args.epochs)  # the curve's run when N is on it (trained once)
            if arm == "champion":
                result.update(litert_int8(args, out, result["run_id"]))
            arms.setdefault(arm, {})[key] = result
            save()
            print(f"seed {seed} {arm}: {result['student']} test acc {result['test_acc']:.4f}", flush=True)
    report(args, stored, command)


def choose_epochs(curve: dict[str, dict], val_size: int) -> int:
    """The fewest epochs whose validation accuracy is within one standard error of the curve's best."""
    best = max(point["val_acc"] for point in curve.values())
    se = math.sqrt(best * (1 - best) / val_size)
    return min(int(epochs) for epochs, point in curve.items() if point["val_acc"] >= best - se)


def _se(se: float) -> str:
    return " (one seed: no standard error)" if math.isnan(se) else f" ± {100 * se:.2f}"


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (one seed)"
    spread = statistics.stdev(values)
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def report(args, stored: dict, command: str) -> None:
    arms, teacher = stored["arms"], stored.get("teacher", {})
    champion = arms.get("champion", {})
    seeds = sorted(champion, key=int)
    rows, goals = [], []
    best = {"ce": None, "kd": None}
    for arm, by_seed in arms.items():
        common = [s for s in seeds if s in by_seed]
        if not common:
            continue
        accuracies = [by_seed[s]["test_acc"] for s in common]
        differences = [champion[s]["test_acc"] - by_seed[s]["test_acc"] for s in common]
        se = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else float("nan")
        students = sorted({by_seed[s]["student"] for s in common})
        macs = statistics.mean(by_seed[s]["macs"] for s in common)
        rows.append(f"| {arm} | {', '.join(students)} | {macs / 1e6:.2f} M | {_mean_std(accuracies)} | "
                    + ("-" if arm == "champion" else f"{100 * statistics.mean(differences):+.2f}{_se(se)}") + " | "
                    + f"{100 * statistics.mean(by_seed[s]['teacher_agreement'] or 0 for s in common):.1f} |")
        kind = arm.rsplit(" ", 1)[-1]
        if kind in best and (best[kind] is None or statistics.mean(accuracies) > best[kind][1]):
            best[kind] = (arm, statistics.mean(accuracies), statistics.mean(differences), se)
    if champion:
        mean = statistics.mean(champion[s]["test_acc"] for s in seeds)
        for kind, need in (("ce", 0.03), ("kd", 0.01)):
            if best[kind]:
                arm, accuracy, difference, se = best[kind]
                goals.append(f"champion - best {kind.upper()} student ({arm}): {100 * difference:+.2f}{_se(se)} points "
                             f"(goal at least +{100 * need:.0f}: {'met' if difference >= need else 'not met'})")
        int8 = [champion[s]["test_acc"] - champion[s]["int8_test_acc"] for s in seeds if champion[s].get("int8_test_acc") is not None]
        litert = [champion[s]["test_acc"] - champion[s]["litert_int8_test_acc"] for s in seeds
                  if champion[s].get("litert_int8_test_acc") is not None]
        if int8:
            goals.append(f"int8 drop (fp32 - int8): ONNX Runtime {100 * statistics.mean(int8):+.2f}, LiteRT fully integer "
                         f"{100 * statistics.mean(litert) if litert else float('nan'):+.2f} points (goal within 0.5: "
                         f"{'met' if int8 and max(map(abs, int8 + litert)) <= 0.005 else 'not met'})")
        teacher_gap = 100 * (teacher.get("test_acc", float("nan")) - mean)
        goals.append(f"the teacher scores {100 * teacher.get('test_acc', float('nan')):.2f}%, {teacher_gap:+.2f} points above the champion")
    curve = stored.get("curve", {})
    if curve:
        longest = max(curve, key=int)
        if curve[longest]["val_acc"] >= max(point["val_acc"] for point in curve.values()) and int(longest) == stored.get("epochs"):
            goals.append(f"accuracy had not flattened by {longest} epochs (the curve's last point is its best): every arm is "
                         "compared at that schedule, not at convergence")
    curve_rows = [f"| {epochs} | {100 * curve[epochs]['val_acc']:.2f} | {100 * curve[epochs]['test_acc']:.2f} | "
                  f"{'chosen' if int(epochs) == stored.get('epochs') else ''} |" for epochs in sorted(curve, key=int)]
    plot(args, stored)
    champions = ", ".join(f"seed {s}: {champion[s]['student']}" for s in seeds)
    litert_rows = [f"| {s} | {champion[s]['student']} | {100 * champion[s]['test_acc']:.2f} | "
                   f"{100 * (champion[s].get('int8_test_acc') or float('nan')):.2f} | "
                   f"{100 * (champion[s].get('litert_int8_test_acc') or float('nan')):.2f} | {champion[s].get('int8_bytes', '-')} | "
                   f"{champion[s].get('fully_integer', '-')} |" for s in seeds]
    settings = stored["settings"]
    write_section(Path(args.doc), "champion", "The champion against what a user trains without rkd-search", [
        f"Command: `{command.strip()}`  ",
        f"Run {stored.get('date', date.today())} on {platform.machine()} (CPU), torch {stored.get('torch')}, {stored.get('threads')} threads, code "
        f"`{stored.get('commit')}`: CIFAR-10 subset (5,000 training images, 5,000 val/ for selection, 5,000 test), budget "
        f"{settings['budget']}, teacher WRN-28-1 ({args.teacher_epochs} epochs, test acc {100 * teacher.get('test_acc', float('nan')):.2f}%), "
        f"searches of {settings['compute']} student-epochs ({settings['search_epochs']}-epoch trials), every final training "
        f"{stored.get('epochs')} epochs (chosen from the curve below), the champion and random-best trained by `rkd-search train "
        f"--recipe {settings.get('recipe', 'trial')}`, paired seeds {', '.join(seeds)}. Champions: {champions}.",
        "",
        "| arm | student | MACs | test acc (%), mean ± std | champion minus this arm (points, mean ± se) | teacher agreement (%) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *[f"- {goal}" for goal in goals],
        "",
        "The champion deployed (test accuracy, %):",
        "",
        "| seed | student | fp32 (PyTorch) | int8, ONNX Runtime | int8, LiteRT fully integer | LiteRT int8 file (bytes) | fully integer |",
        "|---|---|---|---|---|---|---|",
        *litert_rows,
        "",
        "The first seed's champion trained for each number of epochs (the schedule stretched to each); N is the fewest "
        "whose validation accuracy is within one standard error of the best:",
        "",
        "| epochs | val acc (%) | test acc (%) | |",
        "|---|---|---|---|",
        *curve_rows,
        "",
        "![validation accuracy against epochs](champion.png)",
    ])
    print("\n".join(rows + goals + curve_rows))


def plot(args, stored: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for arm, by_seed in stored["arms"].items():
        curves = [r["val_curve"] for r in by_seed.values() if r.get("val_curve")]
        if not curves:
            continue
        length = min(map(len, curves))
        mean = [statistics.mean(c[i] for c in curves) for i in range(length)]
        axes.plot(range(1, length + 1), mean, label=arm, linewidth=2.2 if arm == "champion" else 1.0)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (mean over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(Path(args.doc).parent / "champion.png")
    plt.close(figure)


if __name__ == "__main__":
    main()
