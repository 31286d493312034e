"""The Pareto front as the user sees it: a table, a CSV file and a plot."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .budget import format_ops
from .records import TrialRecord, TrialState

# The front is accuracy against MACs; the other limits' figures stand beside it.
COLUMNS = ("trial", "student", "val_acc", "test_acc", "macs", "params", "activation_bytes", "latency_ms",
           "teacher_agreement", "run_id")


def _row(record: TrialRecord) -> dict[str, str]:
    m = record.metrics
    return {
        "trial": str(record.number),
        "student": record.params.get("student.name", ""),
        "val_acc": f"{m.get('val_acc', float('nan')):.4f}",
        "test_acc": f"{m.get('test_acc', float('nan')):.4f}",
        "macs": str(int(m.get("macs", 0))),
        "params": str(int(m.get("params", 0))),
        "activation_bytes": str(int(m.get("activation_bytes", 0))),
        "latency_ms": f"{m['latency_ms']:.3f}" if "latency_ms" in m else "",
        "teacher_agreement": f"{m['teacher_agreement']:.4f}" if "teacher_agreement" in m else "",
        "run_id": record.run_id,
    }


def front_table(front: Sequence[TrialRecord]) -> str:
    """A fixed-width text table (MACs in human units) of the front, in increasing MACs."""
    if not front:
        return "(the front is empty: no feasible trial finished all its epochs)"
    rows = []
    for record in front:
        row = _row(record)
        row["macs"] = format_ops(float(row["macs"]))
        row["params"] = format_ops(float(row["params"]))
        row["activation_bytes"] = format_ops(float(row["activation_bytes"])) + "B"
        rows.append(row)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def write_csv(front: Sequence[TrialRecord], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for record in front:
            writer.writerow(_row(record))
    return path


def plot_front(records: Sequence[TrialRecord], front: Sequence[TrialRecord], budget_macs: float, path: Path, title: str) -> Path:
    """Every trial (trained, stopped early, over budget), the front highlighted, the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    trained = [r for r in records if "val_acc" in r.metrics and r.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.PAUSED)]
    full = [r for r in trained if r.full_fidelity]
    partial = [r for r in trained if not r.full_fidelity]
    infeasible = [r for r in records if r.state is TrialState.INFEASIBLE and "macs" in r.metrics]
    if full:
        axes.scatter([r.metrics["macs"] / 1e6 for r in full], [r.metrics["val_acc"] for r in full], c="tab:blue", s=22, alpha=0.6, label="trained")
    if partial:
        axes.scatter([r.metrics["macs"] / 1e6 for r in partial], [r.metrics["val_acc"] for r in partial], c="tab:gray", s=18, marker="v", alpha=0.6, label="stopped early or paused (fewer epochs)")
    if infeasible:
        floor = min([r.metrics["val_acc"] for r in trained], default=0.0)
        axes.scatter([r.metrics["macs"] / 1e6 for r in infeasible], [floor] * len(infeasible), c="tab:red", marker="x", s=22, label="over budget (not trained)")
    if front:
        xs = [r.metrics["macs"] / 1e6 for r in front]
        ys = [r.metrics["val_acc"] for r in front]
        axes.step(xs, ys, where="post", c="tab:orange", lw=1.5)
        axes.scatter(xs, ys, c="tab:orange", s=60, edgecolors="black", zorder=3, label="Pareto front")
        for record, x, y in zip(front, xs, ys):
            axes.annotate(f"t{record.number} {record.params.get('student.name', '')}", (x, y), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
    axes.axvline(budget_macs / 1e6, c="tab:red", ls="--", lw=1, label=f"budget {format_ops(budget_macs)} MACs")
    axes.set_xlabel("MACs per image (millions, thop)")
    axes.set_ylabel("validation accuracy")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
