"""A teacher the user already has (a torchvision ResNet-18 as a state_dict, as TorchScript, as a
pickled module) drives a whole search on CIFAR-10 images, and its run says where it came from."""

from __future__ import annotations

import pytest
import torch

from .helpers import imagefolder_subset, mlflow_runs, run_here, search_args

FORMS = ("state_dict", "torchscript", "pickled")


def save_teacher(form: str, folder) -> tuple[str, list[str]]:
    """A 10-class torchvision ResNet-18 (random weights: the search must run, not learn from it),
    saved as ``form``; the --teacher reference and any flag it needs."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    if form == "state_dict":
        torch.save(model.state_dict(), folder / "resnet18.pt")
        return f"torchvision:resnet18={folder / 'resnet18.pt'}", []
    if form == "torchscript":
        torch.jit.script(model).save(str(folder / "resnet18.ts"))
        return str(folder / "resnet18.ts"), []
    torch.save(model, folder / "resnet18.pkl")
    return str(folder / "resnet18.pkl"), ["--trust-teacher-code"]


@pytest.fixture(scope="module")
def cifar_tiny_dir(tmp_path_factory, cifar_lite_dir):
    """40 training, 10 validation and 10 test images per class (links into ``cifar_lite_dir``): each
    form's teacher is run once over every image, and a ResNet-18 is the cost of these tests."""
    return imagefolder_subset(cifar_lite_dir, tmp_path_factory.mktemp("cifar-tiny"), {"train": 40, "val": 10, "test": 10})


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_a_torchvision_teacher_in_each_form_drives_a_search(form, cifar_tiny_dir, tmp_path):
    reference, flags = save_teacher(form, tmp_path)
    out = tmp_path / "out"
    result = run_here(*search_args(out, 1), "--dataset", "imagefolder", "--data-dir", str(cifar_tiny_dir), "--teacher", reference,
                     *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, (parent,), (teacher,), (trial,) = mlflow_runs(out)
    assert parent.info.status == "FINISHED" and parent.data.params["teacher.run_id"] == teacher.info.run_id
    params = teacher.data.params
    assert params["teacher.taps"] == "layer2,layer3,layer4"
    assert params["teacher.source"] in {"torchvision", "torchscript", "pickled module"}, params["teacher.source"]
    assert "resnet18" in params["teacher.arch"].lower() or form != "state_dict"
    assert teacher.data.metrics["macs"] > 30e6 and 0 <= teacher.data.metrics["test_acc"] <= 1
    assert trial.info.status == "FINISHED" and trial.data.tags["rkd.state"] == "complete" and "test_acc" in trial.data.metrics
