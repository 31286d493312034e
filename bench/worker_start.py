"""What a trial worker costs to start: forked from the fresh `rkd-search` process, or spawned.

    python bench/worker_start.py [--repeats 3]

Each repeat runs, in a new Python process each way, what a search does: start the worker pool
first (forked when the process calls ``fresh_process``, as the command's entry point does; spawned
otherwise), load scikit-learn's digits, and train one job of one epoch in the worker. It prints the
worker's CPU seconds when the job is done (its imports, if it spawned, plus the same training) and

    spawned/forked worker CPU = R

measured in this run (medians over the repeats, the two ways alternating). Appends the result, with
this command, to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from _docs import write_section

ONE_JOB = """
import json, os, sys
from rkd_search.search.backends.workers import Done, Job, WorkerFiles, WorkerPool, fresh_process
if sys.argv[1] == "forked":
    fresh_process()
pool = WorkerPool(capacity=1).prewarm()  # first, as run_search does: before this process computes
from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig, load_dataset
data = load_dataset("digits", None, val_fraction=0.1, seed=0, cache_dir=sys.argv[2])
path = os.path.join(sys.argv[2], "digits.pt")
data.save(path)
pool.configure(WorkerFiles(path, None, 1, "cpu", 1))
config = TrainConfig(student=ModelSpec("wrn", 10, 0.5, in_channels=data.input_shape[0], num_classes=data.num_classes),
                     loss=LossConfig(), epochs=1, batch_size=64)
pool.submit(Job(0, config.to_dict(), 1))
events = []
while pool.running:
    pool.wait(events.append)
with open(f"/proc/{pool.workers[0].process.pid}/stat") as stat:
    fields = stat.read().rsplit(")", 1)[1].split()
seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
pool.close()
assert isinstance(events[-1], Done), events[-1]
print(json.dumps({"worker_cpu_s": seconds}))
"""


def one(mode: str, folder: str) -> float:
    result = subprocess.run([sys.executable, "-c", ONE_JOB, mode, folder], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["worker_cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"forked": [], "spawned": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for mode in seconds:
                seconds[mode].append(one(mode, folder))
                print(f"{mode}: worker CPU {seconds[mode][-1]:.2f} s", flush=True)
    forked, spawned = (statistics.median(seconds[m]) for m in ("forked", "spawned"))
    lines = [
        f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores ({platform.machine()}), with",
        f"`python bench/worker_start.py --repeats {args.repeats}`: the worker's CPU seconds after one 1-epoch job on",
        "scikit-learn's digits (a WRN-10-0.5), median of the repeats.",
        "",
        "| worker | CPU seconds, each repeat | median |",
        "|---|---|---|",
        *(f"| {m} | {', '.join(f'{s:.2f}' for s in seconds[m])} | {statistics.median(seconds[m]):.2f} |" for m in seconds),
        "",
        f"spawned/forked worker CPU = {spawned / forked:.2f} (the spawned worker's extra {spawned - forked:.2f} CPU-s is its imports)",
    ]
    print("\n".join(lines))
    write_section(args.doc, "worker_start", "What a trial worker costs to start", lines)


if __name__ == "__main__":
    main()
