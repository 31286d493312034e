"""What the user sees: the console (progress bars and messages) and the front as a table, a CSV
file and a plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from . import names
from .budget import format_ops
from .pareto import standard_error
from .records import TrialRecord, TrialState

# The front is accuracy against MACs; the other limits' figures stand beside it.
COLUMNS = ("trial", "student", "val_acc", "val_acc_se", "test_acc", "macs", "params", "activation_bytes", "flash_bytes",
           "sram_bytes", "latency_ms", "teacher_agreement", "run_id")


class Progress:
    """Progress bars (teacher, targets, trials) and messages; silent bars when progress is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def bar_for(self, total: int, initial: int, desc: str, unit: str):
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochBar:
    """One bar for a long training (the teacher, a final training), in epochs advanced batch by batch.

    It is made when the first batch ends, starting at the epoch the training resumed from, and
    estimates the time left from the average rate since then (tqdm's ``smoothing=0``): a true ETA
    from the first batches on, and one line for the whole training, not one per epoch."""

    def __init__(self, progress: Progress, total: int, desc: str) -> None:
        self.progress, self.total, self.desc = progress, total, desc
        self.start = 0
        self.bar = None
        self.done = 0

    def resumed(self, epoch: int) -> None:
        self.start = self.done = epoch

    def batch(self, done: int, total: int) -> None:
        if self.bar is None and self.progress.enabled:
            self.bar = self.progress.bar_for(self.total, self.start, self.desc, "epoch")
            self.bar.smoothing = 0
        if self.bar is not None:  # update() redraws at most every 0.1 s
            self.bar.update(self.done + done / total - self.bar.n)

    def epoch(self, epoch: int, val_acc: float) -> None:
        self.done = epoch
        if self.bar is not None:
            self.bar.update(epoch - self.bar.n)
            self.bar.set_postfix({"val_acc": f"{val_acc:.3f}"} if math.isfinite(val_acc) else {}, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def noise_note(images: int, accuracy: float, source: str = "") -> str:
    """One line: how far apart two validation accuracies near ``accuracy`` must be to mean anything."""
    se = standard_error(accuracy, images)
    where = f" ({source})" if source else ""
    return (f"validation split: {images:,} images{where}; an accuracy near {100 * accuracy:.0f}% has a standard error of "
            f"{100 * se:.1f} points, so differences below about {200 * se:.1f} points are noise")


def _row(record: TrialRecord, val_size: int | None = None) -> dict[str, str]:
    m = record.metrics
    val = m.get("val_acc", float("nan"))
    return {
        "trial": str(record.number),
        "student": record.params.get("student.name", ""),
        "val_acc": f"{val:.4f}",
        "val_acc_se": f"{standard_error(val, val_size):.4f}" if val_size and math.isfinite(val) else "",
        "test_acc": f"{m.get('test_acc', float('nan')):.4f}",
        "macs": str(int(m.get("macs", 0))),
        "params": str(int(m.get("params", 0))),
        "activation_bytes": str(int(m.get("activation_bytes", 0))),
        "flash_bytes": str(int(m["flash_bytes"])) if "flash_bytes" in m else "",
        "sram_bytes": str(int(m["sram_bytes"])) if "sram_bytes" in m else "",
        "latency_ms": f"{m['latency_ms']:.3f}" if "latency_ms" in m else "",
        "teacher_agreement": f"{m['teacher_agreement']:.4f}" if "teacher_agreement" in m else "",
        "run_id": record.run_id,
    }


def empty_front_reason(records: Sequence[TrialRecord]) -> str:
    """Why no trial is on the front, in the search's terms."""
    full = [r for r in records if r.full_fidelity]
    if not full:
        return "no feasible trial finished all its epochs"
    return (f"all {len(full)} fully trained student{'s' if len(full) != 1 else ''} scored no better than guessing the majority "
            f"class (tagged {names.LEARNED}=false): lower the learning rate or loss weights, or train longer (--epochs)")


def front_table(front: Sequence[TrialRecord], val_size: int | None = None, records: Sequence[TrialRecord] = ()) -> str:
    """A fixed-width text table (MACs in human units) of the front, in increasing MACs; when it is
    empty, why (from ``records``, every trial of the search)."""
    if not front:
        return f"(the front is empty: {empty_front_reason(records)})"
    rows = []
    for record in front:
        row = _row(record, val_size)
        row["macs"] = format_ops(float(row["macs"]))
        row["params"] = format_ops(float(row["params"]))
        for key in ("activation_bytes", "flash_bytes", "sram_bytes"):
            row[key] = format_ops(float(row[key])) + "B" if row[key] else ""
        rows.append(row)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def write_csv(front: Sequence[TrialRecord], path: Path, val_size: int | None = None) -> Path:
    """The front as CSV, one row per student; ``val_acc_se`` is each validation accuracy's standard error."""
    import io

    from rkd_search.trainer.files import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in front:
        writer.writerow(_row(record, val_size))
    return atomic_write_text(path, buffer.getvalue())


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
