"""Bring your own teacher: graph-RKD from a torchvision ResNet-18 against the default WRN-28-1 teacher.

    python bench/foreign_teacher.py [--data-dir ../shared/data/cifar10-small] [--epochs 15] [--seeds 0 1 2]

On the CIFAR-10 subset, a torchvision ResNet-18 (ImageNet architecture, random init, 10 classes) is
trained on the subset's training images as a user would train their own model (SGD, cosine,
``--teacher-epochs``, the trainer's augmented batches), saved as a ``state_dict`` and loaded the way
the CLI loads ``--teacher torchvision:resnet18=FILE`` (taps found: layer2, layer3, layer4; fed at
the data's 32 px). The default teacher is rkd-search's WRN-28-1 trained for the same epochs. The
same student, WRN-28-0.5 with the authors' graph-RKD recipe (cosine similarity, dense graph, all
three stages, weight 25, step schedule), is distilled from each for ``--epochs`` epochs, one run
per seed; reported: each teacher's test accuracy and MACs, the student's test accuracy (mean and
spread over seeds) and its agreement with its teacher.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import add_common_flags
from _docs import write_section
from rkd_search.trainer import LossConfig, ModelSpec, TrainConfig, defaults, find_teacher, fit, load_dataset, prepare_teacher
from rkd_search.trainer.batches import eval_batches, train_batches


def train_resnet18(data, epochs: int, path: Path, seed: int = 0) -> float:
    """A user's own teacher: torchvision's ResNet-18 trained on ``data`` with plain PyTorch; its test accuracy."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (len(data.train_labels) // 128)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for epoch in range(epochs):
        model.train()
        for images, labels in train_batches(data, 128, seed, epoch):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in eval_batches(data, data.test_images, data.test_labels))
    torch.save(model.state_dict(), path)
    return correct / len(data.test_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS, help="student epochs (the search's default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_common_flags(parser, "/tmp/rkd-bench-foreign-teacher", report_only=False)
    args = parser.parse_args()
    command = "python bench/foreign_teacher.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    data = load_dataset("imagefolder", args.data_dir, seed=0, cache_dir=args.cache_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    weights = args.work / f"resnet18-e{args.teacher_epochs}.pt"
    if not weights.exists():
        acc = train_resnet18(data, args.teacher_epochs, weights)
        print(f"ResNet-18 trained: test acc {acc:.4f}", flush=True)
    teachers = {
        "WRN-28-1 (rkd-search's default)": prepare_teacher("wrn28_1", data, epochs=args.teacher_epochs, cache_dir=args.cache_dir),
        "torchvision ResNet-18 (state_dict)": prepare_teacher(find_teacher(f"torchvision:resnet18={weights}", data, normalization="data"), data),
    }
    loss = LossConfig(graph_weight=25.0, similarity="cosine", k=None, layers=(1, 2, 3))
    rows = []
    for label, teacher in teachers.items():
        with torch.no_grad():
            logits = torch.cat([teacher.model(x) for x, _ in eval_batches(data, data.test_images, data.test_labels)])
        teacher_acc = float((logits.argmax(1) == data.test_labels).float().mean())
        results = []
        for seed in args.seeds:
            config = TrainConfig(student=ModelSpec("wrn", 28, 0.5), loss=loss, epochs=args.epochs, lr=0.1, weight_decay=5e-4,
                                 schedule="step", seed=seed)
            result = fit(config, data, teacher=teacher.model)
            results.append(result)
            print(f"{label}, seed {seed}: student test acc {result.test_acc:.4f}", flush=True)
        accs = [r.test_acc for r in results]
        rows.append(f"| {label} | {teacher.meta.get('taps', '1, 2, 3 (its stages)')} | {100 * teacher_acc:.2f} | "
                    f"{teacher.ops.macs / 1e6:.1f} | {100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f} | "
                    f"{', '.join(f'{100 * a:.2f}' for a in accs)} | "
                    f"{100 * statistics.mean(r.teacher_agreement for r in results):.1f} |")
    minutes = (time.perf_counter() - started) / 60
    write_section(Path(args.doc), "foreign_teacher", "Bring your own teacher: torchvision ResNet-18 against WRN-28-1", [
        f"Command: `{command.strip()}`  ",
        f"Run {date.today()} on {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{minutes:.0f} minutes: CIFAR-10 subset ({len(data.train_labels)} training images, test on {len(data.test_labels)}). "
        f"Both teachers trained {args.teacher_epochs} epochs on the training images (the ResNet-18 with plain PyTorch, saved "
        "as a state_dict and loaded as `--teacher torchvision:resnet18=FILE --teacher-norm data` loads it: it was trained on the data's normalisation); the student WRN-28-0.5 with the "
        f"authors' graph-RKD recipe, {args.epochs} epochs, seeds {', '.join(map(str, args.seeds))} (same batches per seed "
        "for both teachers). Teacher MACs at the data's 32 px, as the teacher run records them.",
        "",
        "| teacher | taps | teacher test acc (%) | teacher M MACs | student test acc (%), mean ± std | per seed | student-teacher agreement (%) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    main()
