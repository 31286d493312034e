"""Ray's overhead on one machine: the same search through `--backend ray` and `--backend optuna`.

    python bench/ray_overhead.py [--trials 8] [--epochs 2] [--dataset digits]

Runs the installed `rkd-search` as a user does, first once to train and cache the teacher and its
targets (not timed), then the same search with each back-end into fresh output folders, and prints
the wall time of each and

    ray/optuna = R

measured in this run. Both searches use the same seed, space and trials; the Ray one starts a
local Ray (one trial at a time: a trial takes all the machine's CPUs). Appends the result, with
this command, to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from _docs import write_section

RKD_SEARCH = str(Path(sys.executable).parent / "rkd-search")


def search(folder: Path, backend: str, args: argparse.Namespace, cache: Path, trials: int) -> float:
    command = [RKD_SEARCH, "--budget", args.budget, "--trials", str(trials), "--epochs", str(args.epochs),
               "--teacher-epochs", str(args.teacher_epochs), "--dataset", args.dataset, "--seed", "0",
               "--output", str(folder / "out"), "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
               "--backend", backend, "--no-progress"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RKD_CACHE_DIR": str(cache)})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{backend} search failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--budget", default="20MFLOPs")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    command = "python bench/ray_overhead.py " + " ".join(sys.argv[1:])

    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        cache = root / "cache"
        search(root / "warmup", "optuna", args, cache, trials=1)  # teacher and its targets, cached
        optuna_seconds = search(root / "optuna", "optuna", args, cache, args.trials)
        ray_seconds = search(root / "ray", "ray", args, cache, args.trials)
    ratio = ray_seconds / optuna_seconds
    print(f"optuna back-end: {optuna_seconds:.1f} s for {args.trials} trials")
    print(f"ray back-end:    {ray_seconds:.1f} s for {args.trials} trials (local Ray, started by the search)")
    print(f"ray/optuna = {ratio:.2f}")

    write_section(Path(args.doc), "ray_overhead", "Ray's overhead on one machine", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, {os.cpu_count()} CPUs: the same {args.trials}-trial search "
        f"({args.dataset}, {args.epochs} epochs per trial, budget {args.budget}) through each back-end, "
        "teacher cached beforehand, each a fresh `rkd-search` process.",
        "",
        "| back-end | wall time, ratio to optuna |",
        "|---|---|",
        "| optuna (embedded: one worker process trains the trials in turn) | 1.00 |",
        f"| ray (a local Ray started by the search; Tune reuses a trial's actor for the next) | {ratio:.2f} |",
        "",
        f"`ray/optuna = {ratio:.2f}`: on one machine Ray adds its start-up (a local cluster) and Tune's "
        "bookkeeping; it pays off on a cluster.",
    ])


if __name__ == "__main__":
    main()
