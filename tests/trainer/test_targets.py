"""The teacher's outputs computed once per search give the same losses as the teacher run live."""

from __future__ import annotations

import pytest
import torch

from rkd_search.trainer import LiveTeacher, LossConfig, ModelSpec, TeacherTargets, TrainConfig, build_model, fit
from rkd_search.trainer.batches import train_batches
from rkd_search.trainer.step import distillation_loss

LOSSES = [
    LossConfig(graph_weight=25.0),
    LossConfig(graph_weight=25.0, similarity="gaussian", k=8, bandwidth=0.5, layers=(2, 3)),
    LossConfig(kd_weight=1.0, rkd_distance_weight=25.0, rkd_angle_weight=50.0),
]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model(ModelSpec("wrn", 10, 1, num_classes=4))


@pytest.mark.parametrize("loss", LOSSES)
def test_cached_and_live_teacher_give_the_same_loss_on_every_batch(synthetic, teacher, loss):
    targets = TeacherTargets.compute(teacher, synthetic, epochs=2, batch_size=32, precision="fp32")
    live = LiveTeacher(teacher, "fp32")
    torch.manual_seed(1)
    student = build_model(ModelSpec("wrn", 10, 0.5, num_classes=4))
    for epoch in range(2):
        for index, (images, labels) in enumerate(train_batches(synthetic, 32, 0, epoch)):
            logits, features = student.forward_with_features(images)
            values = []
            for source in (live, targets):
                teacher_logits, grams = source.batch(epoch, index, images, loss.relational_stages)
                values.append(distillation_loss(loss, logits, labels, features, teacher_logits, grams)[0].item())
            assert values[0] == pytest.approx(values[1], rel=1e-6, abs=1e-9)


def test_fit_with_cached_targets_equals_fit_with_live_teacher(synthetic, teacher):
    config = TrainConfig(student=ModelSpec("wrn", 10, 0.5), loss=LOSSES[0], epochs=2, batch_size=32, precision="fp32")
    targets = TeacherTargets.compute(teacher, synthetic, epochs=2, batch_size=32, precision="fp32")
    live, cached = fit(config, synthetic, teacher=teacher), fit(config, synthetic, teacher=targets)
    assert [h.loss_parts for h in live.history] == [h.loss_parts for h in cached.history]
    assert (live.val_acc, live.teacher_agreement, live.teacher_kl) == (cached.val_acc, cached.teacher_agreement, cached.teacher_kl)


def test_disk_cache_is_reused_and_memory_mapped(synthetic, teacher, tmp_path):
    first = TeacherTargets.compute(teacher, synthetic, epochs=2, batch_size=32, precision="fp32", cache_dir=tmp_path)
    files = sorted((tmp_path / "targets").rglob("epoch_*.pt"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    more = TeacherTargets.compute(teacher, synthetic, epochs=3, batch_size=32, precision="fp32", cache_dir=tmp_path)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # existing epochs were read, not recomputed
    assert more.num_epochs == 3 and len(list((tmp_path / "targets").rglob("epoch_*.pt"))) == 3
    assert torch.equal(first.epochs[1].grams, more.epochs[1].grams)
    assert more.key == first.key


def test_targets_for_other_batches_are_refused(synthetic, teacher):
    targets = TeacherTargets.compute(teacher, synthetic, epochs=1, batch_size=32, precision="fp32")
    config = TrainConfig(student=ModelSpec("wrn", 10, 0.5), loss=LOSSES[0], epochs=1, batch_size=32, precision="fp32", seed=9)
    with pytest.raises(ValueError, match="other batches"):
        fit(config, synthetic, teacher=targets)
    longer = TrainConfig(student=ModelSpec("wrn", 10, 0.5), loss=LOSSES[0], epochs=2, batch_size=32, precision="fp32")
    with pytest.raises(ValueError, match="cover 1 epochs"):
        fit(longer, synthetic, teacher=targets)


def test_targets_in_another_precision_are_refused(synthetic, teacher):
    targets = TeacherTargets.compute(teacher, synthetic, epochs=1, batch_size=32, precision="bf16")
    config = TrainConfig(student=ModelSpec("wrn", 10, 0.5), loss=LOSSES[0], epochs=1, batch_size=32, precision="fp32")
    with pytest.raises(ValueError, match="precision bf16 vs fp32"):
        fit(config, synthetic, teacher=targets)


def test_the_data_fingerprint_covers_every_image(synthetic):
    """Changed validation or test images with unchanged labels must not reuse stale teacher outputs."""
    from dataclasses import replace

    base = synthetic.fingerprint
    for name in ("train_images", "val_images", "test_images"):
        images = getattr(synthetic, name).clone()
        images[0] = 255 - images[0]
        assert replace(synthetic, **{name: images}).fingerprint != base, name


@pytest.mark.parametrize("damage", [b"", b"\x00torn file"])
def test_a_damaged_cache_file_is_computed_again(synthetic, teacher, tmp_path, damage):
    first = TeacherTargets.compute(teacher, synthetic, epochs=2, batch_size=32, precision="fp32")
    TeacherTargets.compute(teacher, synthetic, epochs=2, batch_size=32, precision="fp32", cache_dir=tmp_path)
    files = sorted((tmp_path / "targets").rglob("*.pt"))
    for path in files:  # replaced, as a crash of another writer would leave them (never torn under a reader's mmap)
        path.unlink()
        path.write_bytes(damage)
    again = TeacherTargets.compute(teacher, synthetic, epochs=2, batch_size=32, precision="fp32", cache_dir=tmp_path)
    assert torch.equal(first.epochs[1].grams, again.epochs[1].grams)
    assert torch.equal(first.test_logits(synthetic), again.test_logits(synthetic))
    assert all(path.stat().st_size > 100 for path in files)  # rewritten
