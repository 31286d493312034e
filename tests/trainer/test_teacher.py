"""Teacher checkpoints load without running pickled code; trained teachers are cached."""

from __future__ import annotations

import pytest
import torch

import rkd_search.trainer.teacher
from rkd_search.trainer import ModelSpec, TeacherError, build_model, check_teacher_fits, load_checkpoint, save_checkpoint, train_teacher


def test_checkpoint_round_trip(tmp_path):
    spec = ModelSpec("wrn", 10, 0.5, num_classes=4)
    model = build_model(spec)
    path = save_checkpoint(model, spec, tmp_path / "t.pt", {"val_acc": 0.5})
    loaded, loaded_spec, meta = load_checkpoint(path)
    assert loaded_spec == spec and meta["val_acc"] == 0.5
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_pickled_modules_are_refused_unless_trusted(tmp_path):
    spec = ModelSpec("wrn", 10, 0.5)
    model = build_model(spec)
    model.spec = spec
    path = tmp_path / "pickled.pt"
    torch.save(model, path)
    with pytest.raises(TeacherError, match="--trust-teacher-code"):
        load_checkpoint(path)
    loaded, loaded_spec, _ = load_checkpoint(path, trust_code=True)
    assert loaded_spec == spec


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"not a checkpoint", "not a readable PyTorch file")])
def test_missing_or_corrupt_files_raise_teacher_errors(tmp_path, content, message):
    path = tmp_path / "teacher.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TeacherError, match=message):
        load_checkpoint(path)


def test_plain_state_dicts_are_not_mistaken_for_checkpoints(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(build_model("wrn10_1").state_dict(), path)
    with pytest.raises(TeacherError, match="not an rkd-search model checkpoint"):
        load_checkpoint(path)


def test_teacher_for_another_class_count_is_rejected(synthetic):
    with pytest.raises(TeacherError, match="predicts 100 classes"):
        check_teacher_fits(ModelSpec("wrn", 10, 1, num_classes=100), synthetic, "t.pt")


def test_trained_teacher_is_cached_by_dataset_architecture_epochs_seed(synthetic, tmp_path, monkeypatch):
    model, spec, meta, path = train_teacher(synthetic, "wrn10_1", epochs=1, seed=0, cache_dir=tmp_path)
    assert path.exists() and spec.num_classes == 4 and 0.0 <= meta["test_acc"] <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(rkd_search.trainer.teacher, "fit", no_training)
    again, _, _, again_path = train_teacher(synthetic, "wrn10_1", epochs=1, seed=0, cache_dir=tmp_path)
    assert again_path == path
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
