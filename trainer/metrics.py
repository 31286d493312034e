"""Top-1 accuracy, written once for every place that measures it (validation, test, teacher
agreement, the exported models run by ONNX Runtime and LiteRT)."""

from __future__ import annotations

from typing import Any


def accuracy(logits: Any, labels: Any) -> float:
    """The share of rows of ``logits`` (N, classes) whose largest entry is at ``labels`` (N,): torch
    tensors or NumPy arrays (teacher agreement: the teacher's predicted classes as ``labels``)."""
    hits = logits.argmax(1) == labels
    return float(hits.float().mean()) if hasattr(hits, "float") else float(hits.mean())
