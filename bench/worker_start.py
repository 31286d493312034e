"""What a trial worker costs to start: forked from the fresh `rkd-search` process, from the fork server, or spawned.

    python bench/worker_start.py [--repeats 3]

Each repeat runs, in a new Python process each way, what a search does: start the worker pool
first, load scikit-learn's digits, and train one job of one epoch in the worker; then, in the same
process, a second pool trains the same job. It prints the CPU seconds of the worker's start and job:

- forked: the process called ``fresh_process`` (as the command's entry point does), so its first
  worker is forked from it;
- fork server: a process that has computed (a library user's, a benchmark's, a test's), whose
  workers come from the fork server: the first pool pays for the server (its imports, counted here
  with the worker), the second pool's worker is forked from the running server;
- spawned: the same process with a spawning pool (what such a process did before the fork server):
  every pool's worker imports afresh.

Appends the medians over the repeats (the ways alternating), with this command, to docs/benchmarks.md.
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

TWO_POOLS = """
import json, multiprocessing, os, sys
import torch
from rkd_search.search.backends.local.jobs import Done, Job
from rkd_search.search.backends.local.pool import WorkerPool
from rkd_search.search.backends.local.worker import fresh_process
from rkd_search.search.trial_loop import SharedFiles
mode, folder = sys.argv[1], sys.argv[2]
if mode == "forked":
    fresh_process()
else:
    torch.randn(64, 64) @ torch.randn(64, 64)  # a process that has computed


def cpu(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1])  # utime + stime, ppid


def pool():
    made = WorkerPool(capacity=1)
    if mode == "spawned":
        made.context = multiprocessing.get_context("spawn")
    return made.prewarm()  # first, as run_search does: before this process computes


def train(made, path, config, server_before):
    made.configure(SharedFiles(path, None, 1, "cpu", 1))
    made.submit(Job(0, config.to_dict(), 1))
    events = []
    while made.running:
        made.wait(events.append)
    seconds, parent = cpu(made.workers[0].process.pid)
    server = 0.0
    if parent != os.getpid():  # the fork server's child: the server's CPU since the last look is this pool's too
        server = cpu(parent)[0] - server_before.get(parent, 0.0)
        server_before[parent] = cpu(parent)[0]
    made.close()
    assert isinstance(events[-1], Done), events[-1]
    return seconds + server


first = pool()
from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig, load_dataset
data = load_dataset("digits", None, val_fraction=0.1, seed=0, cache_dir=folder)
path = os.path.join(folder, "digits.pt")
data.save(path)
config = TrainConfig(student=ModelSpec("wrn", 10, 0.5, in_channels=data.input_shape[0], num_classes=data.num_classes),
                     loss=LossConfig(), epochs=1, batch_size=64)
servers = {}
seconds = [train(first, path, config, servers)]
seconds.append(train(pool(), path, config, servers))
print(json.dumps({"worker_cpu_s": seconds}))
"""

MODES = ("forked", "fork server", "spawned")


def one(mode: str, folder: str) -> list[float]:
    """The CPU seconds of the first and the second pool's worker (with the fork server's share)."""
    result = subprocess.run([sys.executable, "-c", TWO_POOLS, mode, folder], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["worker_cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    args = parser.parse_args()
    seconds: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for mode in MODES:
                seconds[mode].append(one(mode, folder))
                print(f"{mode}: worker CPU {seconds[mode][-1][0]:.2f} s, then {seconds[mode][-1][1]:.2f} s", flush=True)
    first = {m: statistics.median(s[0] for s in seconds[m]) for m in MODES}
    second = {m: statistics.median(s[1] for s in seconds[m]) for m in MODES}
    lines = [
        f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores ({platform.machine()}), with",
        f"`python bench/worker_start.py --repeats {args.repeats}`: the CPU seconds of a worker's start and one 1-epoch",
        "job on scikit-learn's digits (a WRN-10-0.5), with the fork server's own CPU where it started the worker;",
        "the first pool of a process, then a second pool in the same process; medians of the repeats.",
        "",
        "| worker | first pool, each repeat | median | second pool, each repeat | median |",
        "|---|---|---|---|---|",
        *(f"| {m} | {', '.join(f'{s[0]:.2f}' for s in seconds[m])} | {first[m]:.2f} "
          f"| {', '.join(f'{s[1]:.2f}' for s in seconds[m])} | {second[m]:.2f} |" for m in MODES),
        "",
        "(forked: the command's first workers; its second pool comes from the fork server, as every later worker does.)",
        f"spawned/fork server worker CPU, second pool = {second['spawned'] / second['fork server']:.2f}; "
        f"first pool = {first['spawned'] / first['fork server']:.2f}",
    ]
    print("\n".join(lines))
    write_section(args.doc, "worker_start", "What a trial worker costs to start", lines)


if __name__ == "__main__":
    main()
