"""channels_last against the default (contiguous) memory format for one training step on the CPU.

    python bench/channels_last.py [--steps 12] [--resolution 32]

One student per family (WRN-28-0.5, a CIFAR ResNet-20, a MobileNetV2-style student), batch 128,
a search trial's step (forward with the three stage features, cross-entropy plus the cosine
graph-RKD loss against fixed teacher Gram matrices, backward, SGD): the median time of a step in
each memory format, interleaved, as a ratio. The trainer uses channels_last on the CPU only for the families where it measured faster
(``channels_last_on_cpu``) and only where it is safe (``trainer/_device.py``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from _docs import write_section
from rkd_search.trainer import ModelSpec, build_model
from rkd_search.trainer.losses import gram_matrix, graph_rkd_loss

STUDENTS = ("wrn28_0.5", "resnet20_0.6875", "mbv2-2-3-3_0.75_e6k3")


def step_seconds(name: str, channels_last: bool, resolution: int, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model(ModelSpec.parse(name))
    images = torch.randn(128, 3, resolution, resolution)
    labels = torch.randint(0, 10, (128,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    teacher = [gram_matrix(torch.rand(128, 64, generator=generator)) for _ in range(3)]
    times = []
    for index in range(steps + 2):
        start = time.perf_counter()
        logits, features = model.forward_with_features(images)
        graph = graph_rkd_loss([gram_matrix(f) for f in features], teacher)
        loss = F.cross_entropy(logits, labels) + 25.0 * graph
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index >= 2:  # warm-up steps left out
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    rows, ratios = [], {}
    for name in STUDENTS:
        timed = {True: [], False: []}
        for _ in range(2):  # interleaved rounds
            for channels_last in (False, True):
                timed[channels_last] += step_seconds(name, channels_last, args.resolution, args.steps)
        ratio = statistics.median(timed[True]) / statistics.median(timed[False])
        ratios[name] = ratio
        rows.append(f"| {name} | {ratio:.2f} |")
        print(f"{name:24s} channels_last / contiguous step time = {ratio:.2f}", flush=True)
    write_section(Path(args.doc), "channels_last", "channels_last on the CPU", [
        f"Command: `python bench/channels_last.py {' '.join(sys.argv[1:])}`".replace(" `", " `").rstrip() + "  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads: one training "
        f"step (batch 128, {args.resolution} px, cross-entropy + cosine graph-RKD on three stages, SGD), median of "
        f"{2 * args.steps} steps per format, interleaved.",
        "",
        "| student | channels_last / contiguous step time |",
        "|---|---|",
        *rows,
        "",
        "Below 1: channels_last is faster. The trainer uses it on the CPU for the residual families only (where it measured "
        "faster), and not where oneDNN crashes (a 1x1 stride-2 convolution with fewer than 16 input channels at 40 px or "
        "more: `tests/trainer/test_memory_format.py`).",
    ])


if __name__ == "__main__":
    main()
