"""Per-epoch cost of one trial: plain CE, graph-RKD with the teacher run live, reading the cache, compiled.

    python bench/trial_cost.py [--data-dir ../shared/data/cifar10-small] [--student wrn28_0.5] [--teacher wrn28_1]

Trains the same student in four modes with ``fit`` and once with a newcomer's loop, interleaved
round by round so machine noise hits all alike, and prints the median epoch wall time of each and
the ratios, measured in this run:

    cached/plain = R1  live/cached = R2  compiled/eager = R3  fit/newcomer images per second = R4 (live), R5 (cached)

R4 and R5 compare ``fit``'s training steps (validation left out) with a loop a newcomer would write
from the PyTorch tutorials (``bench/_bare.py``: a DataLoader with torchvision's per-image
transforms, the teacher run live, the loss written out, the same math, checked on a batch first):
R4 against ``fit`` with the teacher live too (the cost of fit's bookkeeping, goal: at least 0.95),
R5 against ``fit`` reading the cache (what a trial of the search gains over the newcomer's loop).

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
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from _bare import bare_loop, check_same_math
from _docs import write_section
from rkd_search.trainer import LossConfig, ModelSpec, TeacherTargets, TrainConfig, build_model, fit, load_dataset
from rkd_search.trainer import loop
from rkd_search.trainer.batches import num_train_batches
from rkd_search.trainer.defaults import EPOCHS


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

    # The first compile is cold (an empty Inductor cache, as for an architecture a machine never
    # compiled); each later round starts Dynamo afresh, as a new worker process would, and finds
    # Inductor's disk cache warm.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="trial-cost-inductor-")
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

    config_of = lambda loss, compiled: TrainConfig(student=student, loss=loss, epochs=1, precision=args.precision,  # noqa: E731
                                                   compile="on" if compiled else "off")
    print(f"newcomer's loss against fit's on one batch: difference {check_same_math(config_of(graph, False), data, teacher):.1e}")
    modes = {
        "plain CE": (LossConfig(), None),
        "graph-RKD, teacher live": (graph, teacher),
        "graph-RKD, teacher cached": (graph, targets),
        "graph-RKD, teacher cached, compiled": (graph, targets),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    steps: dict[str, list[float]] = {"live": [], "cached": [], "newcomer": []}
    compile_seconds: list[float] = []
    for _ in range(args.rounds + 1):  # the first round warms up and is not counted
        for name, (loss, source) in modes.items():
            compiled = name.endswith("compiled")
            if compiled:
                torch._dynamo.reset()
                loop._COMPILED_FOR.clear()
            result = fit(config_of(loss, compiled), data, teacher=source)
            times[name].append(result.history[0].seconds)
            if compiled:
                compile_seconds.append(result.compile_seconds)
                times.setdefault("compiled, compile time left out", []).append(result.history[0].seconds - result.compile_seconds)
            elif source is not None:
                steps["live" if source is teacher else "cached"].append(result.history[0].seconds - result.history[0].eval_seconds)
        steps["newcomer"].append(bare_loop(config_of(graph, False), data, teacher, "cpu")[0])
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:36s} {value:6.2f} s/epoch (median of {args.rounds})")
    plain, live, cached, compiled_epoch, compiled_steady = medians.values()
    step_medians = {name: statistics.median(values[1:]) for name, values in steps.items()}
    print(f"{'newcomer loop, teacher live':36s} {step_medians['newcomer']:6.2f} s/epoch of training steps (median of {args.rounds})")
    fit_live_over_newcomer = step_medians["newcomer"] / step_medians["live"]
    fit_cached_over_newcomer = step_medians["newcomer"] / step_medians["cached"]
    print(f"cached/plain = {cached / plain:.2f}  live/cached = {live / cached:.2f}  compiled/eager = {compiled_steady / cached:.2f}  "
          f"fit/newcomer images per second = {fit_live_over_newcomer:.2f} (live), {fit_cached_over_newcomer:.2f} (cached)")

    first_compile, later_compile = compile_seconds[0], statistics.median(compile_seconds[1:])
    steps_per_epoch = num_train_batches(data, config_of(graph, False).batch_size)
    # A trial of the default length: an architecture never compiled on the machine (cold), or one
    # whose kernels Inductor's disk cache holds (a repeat, in a new worker process).
    new_architecture = (first_compile + EPOCHS * compiled_steady) / (EPOCHS * cached)
    same_architecture = (later_compile + EPOCHS * compiled_steady) / (EPOCHS * cached)
    saved_per_epoch = cached - compiled_steady
    break_even = first_compile / saved_per_epoch * steps_per_epoch if saved_per_epoch > 0 else float("inf")
    print(f"a {EPOCHS}-epoch trial compiled / eager = {new_architecture:.2f} (cold compile, {first_compile:.1f} s), "
          f"{same_architecture:.2f} (Inductor's disk cache warm, {later_compile:.1f} s); a cold compile pays after "
          f"{break_even:.0f} training steps")

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
        f"both reading the cache: {compiled_epoch / cached:.2f} of eager's epoch time with each round's compile included, "
        f"{compiled_steady / cached:.2f} with it left out. Compiling took {first_compile:.1f} s cold (an empty Inductor cache: the "
        f"warm-up round, not counted above) and a median {later_compile:.1f} s in the later rounds, each starting Dynamo afresh "
        f"as a new worker process does, with Inductor's disk cache warm. A trial of the default {EPOCHS} epochs on these "
        f"{len(data.train_labels)} images would take {new_architecture:.2f} of its eager time compiled cold (an architecture "
        f"the machine never compiled: most of a search's), {same_architecture:.2f} with the cache warm: "
        f"a cold compile pays for itself after about {break_even:.0f} training steps ({steps_per_epoch} per "
        "epoch here). `--compile auto` (the default) therefore keeps the CPU eager; for trials much longer than that "
        "(the full CIFAR-10 has 9 times the steps per epoch), pass `--compile on`.",
        "",
        f"`fit/newcomer images per second = {fit_live_over_newcomer:.2f}` with the teacher live in both (goal: at least "
        f"0.95), **{fit_cached_over_newcomer:.2f}** for `fit` reading the cache: `fit`'s training steps against a loop a "
        "newcomer would write from the PyTorch tutorials (`bench/_bare.py`: a DataLoader applying torchvision's per-image "
        "crop and flip, the teacher run live under no_grad, CE and the cosine graph-RKD loss written out, the same math, "
        "checked against `fit`'s loss on a batch before timing), both timed without the validation pass.",
    ])



if __name__ == "__main__":
    main()
