"""How steep is each graph? Gradient norm of graph-RKD per tapped stage at a student's initialisation.

    python bench/graph_gradients.py [--data-dir ../shared/data/cifar10-small] [--teacher-epochs 60]

One training batch (128 images), the teacher of bench/compare_methods.py (WRN-28-1, trained once and
cached), a freshly initialised WRN-28-0.5 student, fp32. For the cosine and the Gaussian graph
(bandwidth 1 x median distance) and each stage alone, prints the graph loss and the norm of its
gradient on the student's parameters at weight 1, beside the cross-entropy gradient norm. This is
the measurement behind the Gaussian graph's lower weight in the search space and the benchmarks.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from _docs import write_section
from rkd_search.trainer import ModelSpec, build_model, load_dataset, train_teacher
from rkd_search.trainer.batches import train_batches
from rkd_search.trainer.losses import gram_matrix, graph_rkd_loss


def gradient_norm(model: torch.nn.Module) -> float:
    return float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data-dir", default=os.environ.get("RKD_DATA_DIR", "../shared/data/cifar10-small"))
    parser.add_argument("--teacher", default="wrn28_1")
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--student", default="wrn28_0.5")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args()
    command = "python bench/graph_gradients.py " + " ".join(sys.argv[1:])

    data = load_dataset(args.dataset, args.data_dir)
    teacher, teacher_spec, _, _ = train_teacher(data, args.teacher, epochs=args.teacher_epochs, seed=0)
    images, labels = next(train_batches(data, 128, seed=0, epoch=0))
    with torch.no_grad():
        _, teacher_features = teacher.eval().forward_with_features(images)
    teacher_grams = [gram_matrix(f) for f in teacher_features]

    rows = []
    for similarity in ("cosine", "gaussian"):
        for stage in (1, 2, 3):
            torch.manual_seed(0)
            student = build_model(ModelSpec.parse(args.student))
            _, features = student.forward_with_features(images)
            loss = graph_rkd_loss([gram_matrix(features[stage - 1])], [teacher_grams[stage - 1]], similarity=similarity)
            loss.backward()
            rows.append((similarity, stage, loss.item(), gradient_norm(student)))
            print(f"{similarity:8s} stage {stage}: loss {rows[-1][2]:.4f}  gradient norm {rows[-1][3]:.3g}", flush=True)
    torch.manual_seed(0)
    student = build_model(ModelSpec.parse(args.student))
    F.cross_entropy(student(images), labels).backward()
    ce = gradient_norm(student)
    print(f"cross-entropy gradient norm {ce:.3g}")
    cosine3 = next(r[3] for r in rows if r[:2] == ("cosine", 3))
    gaussian3 = next(r[3] for r in rows if r[:2] == ("gaussian", 3))
    print(f"gaussian/cosine stage 3 = {gaussian3 / cosine3:.0f}")

    write_section(Path(args.doc), "graph_gradients", "How steep each graph is at initialisation", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()}: teacher {teacher_spec.name} ({args.teacher_epochs} epochs, cached), student {args.student} "
        "freshly initialised (seed 0), one batch of 128 training images, fp32, graph weight 1, each stage alone.",
        "",
        "| graph | stage | loss | gradient norm |",
        "|---|---|---|---|",
        *[f"| {s} | {stage} | {loss:.4f} | {norm:.3g} |" for s, stage, loss, norm in rows],
        f"| cross-entropy | | | {ce:.3g} |",
        "",
        f"`gaussian/cosine stage 3 = {gaussian3 / cosine3:.0f}`: on the pooled last stage, where a new student's "
        "points sit close together, the Gaussian graph is far steeper than the cosine one.",
    ])


if __name__ == "__main__":
    main()
