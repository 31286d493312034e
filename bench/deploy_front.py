"""Deployed accuracy of a search's front: PyTorch, ONNX int8 and LiteRT int8, with flash and SRAM.

    python bench/deploy_front.py --output /tmp/rkd-bench-search-efficiency/random-s0

Every Pareto-optimal student of the search in ``--output`` (its MLflow store and ``pareto.csv``) is
exported as a user would, ``rkd-search export RUN_ID --format onnx,litert --int8 --raw-input``, and
checked on the run's test images: ONNX Runtime runs the int8 ONNX model, the LiteRT interpreter the
fully-integer ``.tflite`` (uint8 pixels in, int8 logits out). Reported per student: the PyTorch test
accuracy the search logged, the ONNX int8 and LiteRT int8 accuracy, the flash (the ``.tflite``
size, and weights and biases at one byte each as the search counts them before training) and the
peak int8 SRAM of activations. Needs the LiteRT extra: ``pip install -e '.[litert]'``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

from _docs import write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="a finished search's output folder")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    command = "python bench/deploy_front.py " + " ".join(sys.argv[1:])
    tracking = f"sqlite:///{args.output.resolve()}/mlflow.db"
    rows = list(csv.DictReader((args.output / "pareto.csv").open()))
    if not rows:
        sys.exit(f"{args.output}/pareto.csv lists no student: run a search first")
    table = []
    with tempfile.TemporaryDirectory() as work:
        for row in rows:
            folder = Path(work) / row["run_id"]
            subprocess.run([sys.executable, "-m", "rkd_search.search.cli", "export", row["run_id"], "--tracking-uri", tracking,
                            "--output", str(folder), "--format", "onnx,litert", "--int8", "--raw-input"], check=True)
            summary = json.loads(next(folder.glob("exports/*/student.json")).read_text())
            litert = summary["litert"]
            table.append(
                f"| {row['student']} | {int(row['macs']) / 1e6:.1f} | {100 * float(row['test_acc']):.2f} | "
                f"{100 * summary['onnx_int8_test_acc']:.2f} | {100 * summary['litert_int8_test_acc']:.2f} | "
                f"{litert['flash_bytes'] / 1024:.1f} | {int(row['flash_bytes']) / 1024:.1f} | {litert['sram_bytes'] / 1024:.1f} | "
                f"{', '.join(litert['float_ops']) or 'none'} |")
            print(table[-1], flush=True)
    write_section(Path(args.doc), "deploy_front", "Deployed front: PyTorch, ONNX int8 and LiteRT int8", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}: every Pareto-optimal student of the search in "
        f"`{args.output}` exported with `rkd-search export RUN_ID --format onnx,litert --int8 --raw-input` (512 training images "
        "calibrate both int8 models; uint8 pixels in) and run on the search's test images by ONNX Runtime and by the LiteRT "
        "interpreter. Flash: the int8 `.tflite` file, and the weights and biases at one byte each (int32 biases counted as "
        "four) that the search counts before training and `--max-flash` limits; SRAM: the peak int8 activations alive at once "
        "at batch 1, input and output included, which `--max-sram` limits (TFLite Micro's arena adds scratch buffers and "
        "alignment).",
        "",
        "| student | M MACs | PyTorch test acc (%) | ONNX int8 (%) | LiteRT int8 (%) | .tflite (KiB) | counted flash (KiB) | SRAM (KiB) "
        "| LiteRT operators left in float |",
        "|---|---|---|---|---|---|---|---|---|",
        *table,
    ])


if __name__ == "__main__":
    main()
