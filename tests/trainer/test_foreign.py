"""Teachers a user brings: torchvision and timm classifiers, TorchScript, pickled modules; their taps
found or named; fed at their own size and normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rkd_search.trainer import LossConfig, ModelSpec, TeacherError, TrainConfig, find_teacher, fit, prepare_teacher
from rkd_search.trainer.foreign import IMAGENET_MEAN, IMAGENET_STD
from rkd_search.trainer.taps import Preprocessing, TappedTeacher, choose_taps


def torchvision_model(name: str, classes: int = 4):
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=classes).eval()


@pytest.mark.parametrize("name, taps", [
    ("resnet18", ["layer2", "layer3", "layer4"]),
    ("mobilenet_v3_small", ["features.3", "features.8", "features"]),  # features ends with features.12, at 2x2
])
def test_taps_are_the_ends_of_the_last_three_resolution_stages(name, taps):
    model = torchvision_model(name)
    assert choose_taps(model, torch.zeros(1, 3, 64, 64), None, replay=False) == taps


def test_taps_are_found_on_a_timm_model():
    timm = pytest.importorskip("timm")  # the [timm] extra; CI installs it
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    assert choose_taps(model, torch.zeros(1, 3, 64, 64), None, replay=False) == ["layer2", "layer3", "layer4"]


def test_a_named_tap_that_does_not_exist_is_refused_with_the_candidates():
    model = torchvision_model("resnet18")
    with pytest.raises(TeacherError) as error:
        choose_taps(model, torch.zeros(1, 3, 64, 64), "layer2,layer3,layer9", replay=False)
    message = str(error.value)
    assert "'layer9' is not a module with a feature-map output" in message and "layer4 (2x2)" in message
    assert "\n" not in message
    assert choose_taps(model, torch.zeros(1, 3, 64, 64), "layer4,layer1,layer3", replay=False) == ["layer1", "layer3", "layer4"]


def test_a_teacher_at_64_px_with_imagenet_normalisation_feeds_a_student_at_the_data_size(synthetic, tmp_path):
    """The data's normalised batches (16 px here, 32 px on CIFAR-10) are undone, resized to 64 px and
    normalised with ImageNet's statistics before the teacher sees them; the student trains at the data's size."""
    model = torchvision_model("resnet18")
    teacher = TappedTeacher(model, ["layer2", "layer3", "layer4"], Preprocessing(64, IMAGENET_MEAN, IMAGENET_STD),
                            synthetic.mean, synthetic.std)
    pixels = synthetic.train_images[:4].float() / 255
    batch = (pixels - torch.tensor(synthetic.mean).view(1, 3, 1, 1)) / torch.tensor(synthetic.std).view(1, 3, 1, 1)
    expected = F.interpolate(pixels, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    expected = (expected - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(teacher.prepare(batch), expected, atol=1e-5, rtol=1e-5)
    logits, features = teacher.forward_with_features(batch)
    assert logits.shape == (4, 4) and [f.shape[-1] for f in features[:2]] == [8, 4] and features[2].shape == (4, 512)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    source = find_teacher(f"torchvision:resnet18={tmp_path / 'weights.pt'}", synthetic, size=64, normalization="imagenet")
    prepared = prepare_teacher(source, synthetic)
    assert prepared.meta["input_size"] == 64 and prepared.meta["taps"] == "layer2,layer3,layer4" and prepared.ops.macs > 0
    config = TrainConfig(student=ModelSpec("wrn", 10, 0.25), epochs=1, batch_size=32, loss=LossConfig(graph_weight=25.0))
    result = fit(config, synthetic, teacher=prepared.model)
    assert result.input_shape == (3, 16, 16) and result.teacher_agreement is not None


def test_each_form_a_user_has_loads_with_the_same_outputs(synthetic, tmp_path):
    model = torchvision_model("resnet18")
    x = torch.zeros(2, 3, 16, 16)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    torch.save(model, tmp_path / "module.pt")
    outputs = {}
    for reference, trust in ((f"torchvision:resnet18={tmp_path / 'state.pt'}", False), (str(tmp_path / "scripted.pt"), False),
                             (str(tmp_path / "module.pt"), True)):
        source = find_teacher(reference, synthetic, trust_code=trust, size=64)  # at 16 px layer3 and layer4 are both 1 x 1
        logits, features = source.model.forward_with_features(x)
        outputs[source.name] = (logits, [f.shape for f in features])
        assert source.meta["taps"] == "layer2,layer3,layer4"
    first = next(iter(outputs.values()))
    for logits, shapes in outputs.values():
        torch.testing.assert_close(logits, first[0])
        assert shapes == first[1]
    with pytest.raises(TeacherError, match="holds pickled code"):
        find_teacher(str(tmp_path / "module.pt"), synthetic)
    with pytest.raises(TeacherError, match="a state_dict needs its architecture|torchvision:NAME"):
        find_teacher(str(tmp_path / "state.pt"), synthetic)


@pytest.mark.parametrize("reference, message", [
    ("torchvision:resnet18", "name the weights"),
    ("torchvision:resnet999=w.pt", "do not exist"),
    ("timm:nonexistent=w.pt", "do not exist"),
])
def test_bad_foreign_references_say_what_to_do(synthetic, reference, message):
    with pytest.raises(TeacherError, match=message):
        find_teacher(reference, synthetic)


def test_a_teacher_for_other_classes_or_channels_is_refused(synthetic, tmp_path):
    torch.save(torchvision_model("resnet18", classes=7).state_dict(), tmp_path / "seven.pt")
    with pytest.raises(TeacherError, match="predicts 7 classes but synthetic has 4"):
        find_teacher(f"torchvision:resnet18={tmp_path / 'seven.pt'}", synthetic)


def test_a_teacher_that_is_a_folder_empty_or_returns_a_tuple_is_told_so(synthetic, tmp_path):
    from rkd_search.trainer import TeacherError, find_teacher

    with pytest.raises(TeacherError, match="--teacher is empty"):
        find_teacher("", synthetic)
    with pytest.raises(TeacherError, match=f"--teacher {tmp_path} is a folder"):
        find_teacher(str(tmp_path), synthetic)

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            features = self.conv(x).mean((2, 3))
            return features, features

    torch.jit.script(Pair()).save(str(tmp_path / "pair.ts"))
    with pytest.raises(TeacherError, match="returns a tuple, not a tensor of logits"):
        find_teacher(str(tmp_path / "pair.ts"), synthetic)
