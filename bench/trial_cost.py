"""Per-epoch cost of one trial: plain CE, graph-RKD with the teacher run live, graph-RKD reading the cache.

    python bench/trial_cost.py [--data-dir ../shared/data/cifar10-small] [--student wrn28_0.5] [--teacher wrn28_1]

Trains the same student in the three modes, interleaved round by round so machine noise hits all
three alike, and prints the median epoch wall time of each and the ratios, measured in this run:

    cached/plain = R1  live/cached = R2  fit/bare images per second = R3

R3 compares ``fit``'s training steps (validation left out) with a bare PyTorch loop training the
same student on the same batches with the same cached targets and loss (``bench/_bare.py``): the
cost of fit's bookkeeping (goal: at least 0.95).

The teacher is the default architecture with random weights: the cost of a step does not depend
on the teacher's weights, and training one first would only lengthen the benchmark. The one-off
cost of computing the cache is printed separately (it is paid once per search, not per trial).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from _bare import bare_loop
from _docs import write_section
from rkd_search.trainer import LossConfig, ModelSpec, TeacherTargets, TrainConfig, build_model, fit, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data-dir", default=os.environ.get("RKD_DATA_DIR", "../shared/data/cifar10-small"))
    parser.add_argument("--student", default="wrn28_0.5")
    parser.add_argument("--teacher", default="wrn28_1")
    parser.add_argument("--rounds", type=int, default=4, help="epochs measured per mode (default 4)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    command = "python bench/trial_cost.py " + " ".join(sys.argv[1:])

    data = load_dataset(args.dataset, args.data_dir)
    torch.manual_seed(0)
    teacher = build_model(args.teacher, data.input_shape[0], data.num_classes)
    student = ModelSpec.parse(args.student)
    graph = LossConfig(graph_weight=25.0)
    print(f"{data.name}: {len(data.train_labels)} training images; student {args.student}, teacher {args.teacher}, "
          f"precision {args.precision}, torch threads {torch.get_num_threads()}")

    start = time.perf_counter()
    targets = TeacherTargets.compute(teacher, data, epochs=1, precision=args.precision)
    print(f"teacher cache for one epoch: {time.perf_counter() - start:.2f} s, {targets.nbytes / 1e6:.1f} MB (once per search)")

    modes = {
        "plain CE": (LossConfig(), None),
        "graph-RKD, teacher live": (graph, teacher),
        "graph-RKD, teacher cached": (graph, targets),
        "graph-RKD, teacher cached, compiled": (graph, targets),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    steps: dict[str, list[float]] = {"fit": [], "bare": []}
    compile_seconds: list[float] = []
    for _ in range(args.rounds + 1):  # the first round warms up and is not counted
        for name, (loss, source) in modes.items():
            compiled = name.endswith("compiled")
            config = TrainConfig(student=student, loss=loss, epochs=1, precision=args.precision, compile="on" if compiled else "off")
            result = fit(config, data, teacher=source)
            times[name].append(result.history[0].seconds)
            if compiled:
                compile_seconds.append(result.compile_seconds)
                times.setdefault("compiled, compile time left out", []).append(result.history[0].seconds - result.compile_seconds)
            elif source is targets:
                steps["fit"].append(result.history[0].seconds - result.history[0].eval_seconds)
                steps["bare"].append(bare_loop(config, data, targets)[0])
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:28s} {value:6.2f} s/epoch (median of {args.rounds})")
    plain, live, cached, compiled_epoch, compiled_steady = medians.values()
    fit_over_bare = statistics.median(steps["bare"][1:]) / statistics.median(steps["fit"][1:])
    print(f"cached/plain = {cached / plain:.2f}  live/cached = {live / cached:.2f}  fit/bare images per second = {fit_over_bare:.2f}")

    rows = [f"| {name} | {value / plain:.2f} |" for name, value in medians.items()]
    write_section(Path(args.doc), "trial_cost", "Cost of one trial: the teacher cache", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads: student "
        f"{args.student}, teacher {args.teacher}, {data.name} ({len(data.train_labels)} training images), precision "
        f"{args.precision}; median epoch time of {args.rounds} interleaved rounds, as a ratio to plain CE.",
        "",
        "| mode | epoch time / plain CE |",
        "|---|---|",
        *rows,
        "",
        f"`cached/plain = {cached / plain:.2f}  live/cached = {live / cached:.2f}` (goal: cached/plain <= 1.15). "
        f"Computing the cache costs about one teacher forward pass per batch, once per search.",
        "",
        f"Compiled (`--compile on`, torch.compile of the step's forward and loss mix, Inductor on the CPU) against eager, "
        f"both reading the cache: {compiled_epoch / cached:.2f} of eager's epoch time with compiling included (each round is a "
        f"new trial of the same architecture: {compile_seconds[0]:.1f} s to compile the first time, a median "
        f"{statistics.median(compile_seconds[1:]):.1f} s later from Inductor's cache), {compiled_steady / cached:.2f} with it "
        "left out. `--compile auto` (the default) keeps the CPU eager.",
        "",
        f"`fit/bare images per second = {fit_over_bare:.2f}` (goal: at least 0.95): `fit`'s training steps (graph-RKD, "
        "cached targets) against a bare PyTorch loop training the same student on the same batches with the same loss "
        "(`bench/_bare.py`), both timed without the validation pass. The step keeps the loss and its parts on the device "
        "and reads them once per epoch.",
    ])



if __name__ == "__main__":
    main()
