"""Graph-RKD against its baselines on one fixed teacher/student pair, several seeds, equal epochs.

    python bench/compare_methods.py [--data-dir ../shared/data/cifar10-small] [--epochs 30] [--seeds 3]

The authors' second pair: WRN-28-1 teacher -> WRN-28-0.5 student (about 15M MACs). Methods, each
added to cross-entropy with the papers' weights: none (CE only), Hinton KD (T = 4, T^2 scaling),
RKD-D (25) and RKD-A (50) on the pooled last stage, graph-RKD with the cosine graph (lambda = 25,
three stages, dense, sum reduction) and with the Gaussian kernel (bandwidth 1 x median distance) at
lambda = 25 and at lambda = 1.
Every run of one seed reads the same teacher targets (same batches). Writes the table, with this
command, between the markers of docs/benchmarks.md. Finished runs are kept in a JSON file and
skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from _docs import write_section
from rkd_search.trainer import LossConfig, ModelSpec, TeacherTargets, TrainConfig, defaults, fit, load_dataset, train_teacher
from rkd_search.trainer.data import default_cache_dir

METHODS = {
    "CE only": LossConfig(),
    "Hinton KD": LossConfig(kd_weight=1.0, temperature=defaults.KD_TEMPERATURE),
    "RKD-D": LossConfig(rkd_distance_weight=25.0),
    "RKD-A": LossConfig(rkd_angle_weight=50.0),
    "graph-RKD (cosine)": LossConfig(graph_weight=25.0, similarity="cosine"),
    "graph-RKD (Gaussian)": LossConfig(graph_weight=25.0, similarity="gaussian", bandwidth=1.0),
    # The Gaussian graph of the pooled stage is far steeper than the cosine one (initial gradient
    # norm 6.7 against 0.03 per unit weight, bench/graph_gradients.py): at lambda = 25 training collapses. lambda = 1
    # gives it about the cosine graph's initial gradient scale at lambda = 25 (chosen before any run).
    "graph-RKD (Gaussian, λ=1)": LossConfig(graph_weight=1.0, similarity="gaussian", bandwidth=1.0),
}


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def ordering(methods: list[tuple[str, list[float]]]) -> str:
    """Methods from best to worst mean, joined by '>' or, where the gap is within noise, '≈'."""
    stats = sorted(((statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, m) for m, v in methods), reverse=True)
    text = stats[0][2]
    for (mean_a, std_a, _), (mean_b, std_b, name) in zip(stats, stats[1:]):
        text += (" ≈ " if mean_a - mean_b < max(std_a, std_b) else " > ") + name
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data-dir", default=os.environ.get("RKD_DATA_DIR", "../shared/data/cifar10-small"))
    parser.add_argument("--teacher", default="wrn28_1")
    parser.add_argument("--student", default="wrn28_0.5")
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"),
                        help="bf16 autocast (default: the table in docs/benchmarks.md was run so) or fp32")
    parser.add_argument("--cache-dir", default=None, help="teacher and targets cache (default $RKD_CACHE_DIR or ~/.cache/rkd-search)")
    parser.add_argument("--results", default="bench/results/compare_methods.json")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    command = "python bench/compare_methods.py " + " ".join(sys.argv[1:])
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()

    data = load_dataset(args.dataset, args.data_dir, cache_dir=cache_dir)
    start = time.perf_counter()
    teacher, teacher_spec, teacher_meta, _ = train_teacher(
        data, args.teacher, epochs=args.teacher_epochs, seed=0, cache_dir=cache_dir
    )
    print(f"teacher {teacher_spec.name}: test acc {teacher_meta['test_acc']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    student = ModelSpec.parse(args.student)
    for seed in range(args.seeds):
        targets = TeacherTargets.compute(teacher, data, epochs=args.epochs, seed=seed, precision=args.precision, cache_dir=cache_dir)
        for method, loss in METHODS.items():
            key = f"{method}|{seed}|{args.epochs}|{teacher_spec.name}-e{args.teacher_epochs}|{student.name}|{data.fingerprint}|{args.precision}"
            if key in results:
                continue
            config = TrainConfig(student=student, loss=loss, epochs=args.epochs, seed=seed, precision=args.precision)
            result = fit(config, data, teacher=targets)
            results[key] = {
                "method": method,
                "seed": seed,
                **result.metrics(),
            }
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1))
            print(f"{method:22s} seed {seed}: test {result.test_acc:.4f} val {result.val_acc:.4f} "
                  f"agree {result.teacher_agreement:.4f} ({result.train_seconds:.0f} s)", flush=True)

    suffix = f"|{args.epochs}|{teacher_spec.name}-e{args.teacher_epochs}|{student.name}|{data.fingerprint}|{args.precision}"
    rows = []
    for method in METHODS:
        runs = [r for k, r in results.items() if k.startswith(method + "|") and k.endswith(suffix)]
        runs = [r for r in runs if r["seed"] < args.seeds]
        rows.append((method, runs))
    macs = rows[0][1][0]["macs"]
    lines = [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"dataset `{data.name}` ({len(data.train_labels)} train / {len(data.val_labels)} val / {len(data.test_labels)} test images).  ",
        f"Teacher {teacher_spec.name} ({teacher_meta['macs'] / 1e6:.1f} M MACs, {args.teacher_epochs} epochs): "
        f"test accuracy **{100 * teacher_meta['test_acc']:.2f}%**. Student {student.name} ({macs / 1e6:.1f} M MACs, thop), "
        f"{args.epochs} epochs, SGD lr 0.1 cosine, batch 128, {args.seeds} seeds (mean ± std); students and teacher targets "
        f"in {args.precision}{' autocast (the CPU default when this table was made; see the bf16 section for its cost)' if args.precision == 'bf16' else ''}.",
        "",
        "| method | test acc (%) | val acc (%) | teacher agreement (%) | KL(teacher ‖ student) |",
        "|---|---|---|---|---|",
    ]
    for method, runs in rows:
        if not runs:
            continue
        lines.append(
            f"| {method} | {mean_std([r['test_acc'] for r in runs])} | {mean_std([r['val_acc'] for r in runs])} | "
            f"{mean_std([r['teacher_agreement'] for r in runs])} | "
            f"{statistics.mean(r['teacher_kl'] for r in runs):.3f} |"
        )
    lines += ["", "Ordering by mean test accuracy (≈: the means differ by less than the larger std): "
              + ordering([(m, [r["test_acc"] for r in runs]) for m, runs in rows if runs]) + "."]
    print("\n".join(lines))
    write_section(Path(args.doc), "compare_methods", "Graph-RKD against its baselines", lines)


if __name__ == "__main__":
    main()
