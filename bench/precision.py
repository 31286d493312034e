"""Does bf16 autocast keep accuracy on this CPU? The same student, seeds and epochs in fp32 and bf16.

    python bench/precision.py [--data-dir ../shared/data/cifar10-small] [--student wrn28_0.5] [--epochs 10] [--seeds 2]

Trains the student with cross-entropy (the part of every trial that precision touches) in both
precisions, seed by seed, and prints mean validation and test accuracy of each and the ratio of
their epoch times, measured in this run. This is the check behind `precision="auto"` (the default
of `fit` and of rkd-search) meaning fp32 on the CPU: bf16 autocast was faster but less accurate.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

from _docs import write_section
from rkd_search.trainer import ModelSpec, TrainConfig, fit, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data-dir", default=os.environ.get("RKD_DATA_DIR", "../shared/data/cifar10-small"))
    parser.add_argument("--student", default="wrn28_0.5")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    command = "python bench/precision.py " + " ".join(sys.argv[1:])

    data = load_dataset(args.dataset, args.data_dir)
    results: dict[str, list] = {"fp32": [], "bf16": []}
    for seed in range(args.seeds):
        for precision in results:
            result = fit(TrainConfig(student=ModelSpec.parse(args.student), epochs=args.epochs, seed=seed, precision=precision), data)
            seconds = statistics.median(h.seconds for h in result.history)
            results[precision].append((result.val_acc, result.test_acc, seconds))
            print(f"{precision} seed {seed}: val {result.val_acc:.4f} test {result.test_acc:.4f} {seconds:.2f} s/epoch", flush=True)
    mean = {p: [statistics.mean(r[i] for r in runs) for i in range(3)] for p, runs in results.items()}
    speedup = mean["fp32"][2] / mean["bf16"][2]
    print(f"test accuracy fp32 {mean['fp32'][1]:.4f}  bf16 {mean['bf16'][1]:.4f}  fp32/bf16 epoch time = {speedup:.2f}")
    write_section(Path(args.doc), "precision", "bf16 autocast on the CPU", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}: {args.student}, cross-entropy, {args.epochs} epochs, "
        f"seeds 0..{args.seeds - 1}, {data.name} ({len(data.train_labels)} training images).",
        "",
        "| precision | val acc (%) | test acc (%) | epoch time, ratio to bf16 |",
        "|---|---|---|---|",
        *[f"| {p} | {100 * m[0]:.2f} | {100 * m[1]:.2f} | {m[2] / mean['bf16'][2]:.2f} |" for p, m in mean.items()],
        "",
        f"`fp32/bf16 epoch time = {speedup:.2f}`, test accuracy {100 * (mean['bf16'][1] - mean['fp32'][1]):+.2f} points "
        "with bf16. `precision=\"auto\"` means fp32 on the CPU because of this accuracy cost (bf16 stays available "
        "with `--precision bf16`); on CUDA it means bf16.",
    ])


if __name__ == "__main__":
    main()
