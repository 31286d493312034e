"""Export a trained student from MLflow: TorchScript, and ONNX where the onnx package is installed."""

from __future__ import annotations

import importlib.util
import json
import tempfile
import warnings
from pathlib import Path

import torch

from trainer import ModelSpec, build_model

from .errors import UsageError
from .tracking import Tracker


def export_student(tracker: Tracker, run_id: str, folder: Path, formats: tuple[str, ...] = ("torchscript", "onnx")) -> dict[str, Path]:
    """Write the student of child run ``run_id`` into ``folder``; returns the files written.

    The weights are read with ``weights_only=True`` (no pickled code runs). ``student.json`` records
    the architecture, MACs (thop), FLOPs, parameters and accuracies next to the exported files.
    """
    try:
        run = tracker.client.get_run(run_id)
    except Exception:
        raise UsageError(f"no MLflow run {run_id!r} at {tracker.settings.tracking_uri}: pass a run id from `rkd-search pareto`") from None
    state = run.data.tags.get("rkd.state")
    if state not in ("complete", "pruned"):
        what = "a search's parent run" if run.data.tags.get("rkd.role") == "search" else f"a trial in state {state}"
        raise UsageError(f"run {run_id} is {what}, with no trained student: pick a run tagged rkd.pareto=true (rkd-search pareto)")
    with tempfile.TemporaryDirectory() as download:
        try:
            local = Path(tracker.client.download_artifacts(run_id, "student", download))
        except Exception as error:
            raise UsageError(f"cannot download the student of run {run_id} ({type(error).__name__}): is the artifact store reachable?") from None
        meta = json.loads((local / "spec.json").read_text())
        state_dict = torch.load(local / "weights.pt", map_location="cpu", weights_only=True)
    spec = ModelSpec.from_dict(meta["spec"])
    model = build_model(spec).eval()
    model.load_state_dict(state_dict)
    example = torch.zeros(1, *meta.get("input_shape", (spec.in_channels, 32, 32)))

    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "torchscript" in formats:
        path = folder / "student.torchscript.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still the portable format
            torch.jit.trace(model, example).save(str(path))
        written["torchscript"] = path
    if "onnx" in formats and importlib.util.find_spec("onnx") is not None:
        path = folder / "student.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        written["onnx"] = path
    summary = {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "student": spec.name,
        "spec": spec.to_dict(),
        "input_shape": list(example.shape[1:]),
        "macs": meta["macs"],
        "macs_unit": "multiply-accumulates per image, thop (what NAS papers call FLOPs)",
        "flops": meta["flops"],
        "params": meta["params"],
        "val_acc": run.data.metrics.get("val_acc"),
        "test_acc": run.data.metrics.get("test_acc"),
        "files": {k: v.name for k, v in written.items()},
    }
    (folder / "student.json").write_text(json.dumps(summary, indent=2))
    written["json"] = folder / "student.json"
    tracker.set_tags(run_id, {"rkd.exported": str(folder)})
    return written
