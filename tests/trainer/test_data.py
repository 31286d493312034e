"""Datasets in memory, the validation split, and deterministic batches."""

from __future__ import annotations


import pytest
import torch

from rkd_search.trainer import DataError, load_dataset
from rkd_search.trainer.batches import augment_batch, train_batches
from rkd_search.trainer.data import Augmentation


def test_synthetic_dataset_shapes_and_split(synthetic):
    assert synthetic.train_images.dtype == torch.uint8
    assert synthetic.num_classes == 4
    total = len(synthetic.train_labels) + len(synthetic.val_labels)
    assert len(synthetic.val_labels) == pytest.approx(0.1 * total, abs=4)
    # stratified: every class is in the validation split
    assert set(synthetic.val_labels.tolist()) == set(range(4))


def test_split_is_seeded_and_disjoint():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.val_images, b.val_images)
    assert not torch.equal(a.val_images, c.val_images)
    train = {bytes(x.numpy()) for x in a.train_images}
    assert not any(bytes(x.numpy()) in train for x in a.val_images[:50])


def test_digits_ship_offline_and_are_upscaled():
    data = load_dataset("digits")
    assert data.input_shape == (1, 32, 32)
    assert len(data.train_labels) + len(data.val_labels) + len(data.test_labels) == 1797
    assert data.augmentation.flip is False


def test_digits_read_from_scikit_learns_file_equal_load_digits():
    from sklearn.datasets import load_digits

    from rkd_search.trainer.data import _digits_arrays

    pixels, labels = _digits_arrays()
    reference = load_digits()
    assert (pixels == reference.data).all() and (labels == reference.target).all()


def test_batches_depend_only_on_seed_and_epoch(synthetic):
    first = list(train_batches(synthetic, 32, seed=3, epoch=2))
    again = list(train_batches(synthetic, 32, seed=3, epoch=2))
    other = list(train_batches(synthetic, 32, seed=3, epoch=3))
    assert all(torch.equal(x, y) and torch.equal(l, m) for (x, l), (y, m) in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    assert all(len(labels) == 32 for _, labels in first)  # full batches only


def test_crop_shifts_content_and_flip_mirrors():
    image = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).reshape(2, 1, 6, 6)
    generator = torch.Generator().manual_seed(0)
    out = augment_batch(image, Augmentation(crop_padding=0, flip=True), generator)
    for original, augmented in zip(image, out):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(2))
    cropped = augment_batch(image, Augmentation(crop_padding=2, flip=False), torch.Generator().manual_seed(1))
    assert cropped.shape == image.shape
    # every non-zero pixel of a crop comes from its own image
    for original, augmented in zip(image, cropped):
        assert set(augmented[augmented > 0].tolist()) <= set(original.flatten().tolist())


def test_imagefolder_is_decoded_once_then_cached(cifar_dir, tmp_path, monkeypatch):
    import rkd_search.trainer.imagefolder

    first = load_dataset("imagefolder", cifar_dir, cache_dir=tmp_path)
    assert list((tmp_path / "datasets").glob("imagefolder-*.pt"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached dataset was decoded again")

    monkeypatch.setattr(rkd_search.trainer.imagefolder, "decode_images", no_decoding)
    second = load_dataset("imagefolder", cifar_dir, cache_dir=tmp_path)
    assert (len(first.train_labels), len(first.val_labels), len(first.test_labels)) == (5000, 5000, 5000)
    assert first.val_source == second.val_source == "val/ folder"
    assert first.input_shape == (3, 32, 32) and first.num_classes == 10
    assert torch.equal(first.train_images, second.train_images) and torch.equal(first.val_images, second.val_images)
    assert torch.equal(first.test_labels, second.test_labels)


def write_tree(root, splits=("train", "test"), classes=("cat", "dog"), per_class=20, size=8, empty=()):
    """A small ImageFolder tree of PNG files; ``empty``: (split, class) folders left without images."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in splits:
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            if (split, name) in empty:
                continue
            for number in range(per_class):
                pixels = (torch.rand(size, size, 3, generator=generator) * 80 + 120 * index).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{number:03d}.png")
    return root


def test_a_val_folder_is_the_validation_split_and_without_one_a_stratified_share_of_train(tmp_path):
    with_val = load_dataset("imagefolder", write_tree(tmp_path / "a", ("train", "val", "test"), per_class=10),
                            cache_dir=tmp_path / "cache")
    assert (len(with_val.train_labels), len(with_val.val_labels)) == (20, 20) and with_val.val_source == "val/ folder"
    without = load_dataset("imagefolder", write_tree(tmp_path / "b", per_class=20), val_fraction=0.25, cache_dir=tmp_path / "cache")
    assert (len(without.train_labels), len(without.val_labels)) == (30, 10)
    assert without.val_labels.bincount().tolist() == [5, 5]  # stratified: a quarter of each class
    assert "25% of train/" in without.val_source


@pytest.mark.parametrize("empty, named", [((("train", "dog"), ("test", "dog")), "train/dog"), ((("val", "cat"),), "val/cat")])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, empty, named):
    root = write_tree(tmp_path / "tree", ("train", "val", "test"), empty=empty)
    with pytest.raises(DataError, match=f"{named} holds no images"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")


def test_a_val_folder_with_other_classes_is_refused(tmp_path):
    root = write_tree(tmp_path / "tree")
    write_tree(root, ("val",), classes=("cat", "cow"))
    with pytest.raises(DataError, match="val/ and train/ hold different class folders"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")


def test_decoding_reports_progress(tmp_path):
    seen = []
    load_dataset("imagefolder", write_tree(tmp_path / "tree", per_class=300), cache_dir=tmp_path / "cache",
                 progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (1200, 1200) and len(seen) >= 3 and all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))


def test_a_dataset_saved_for_the_workers_loads_memory_mapped_and_equal(tmp_path, synthetic):
    from rkd_search.trainer import ImageDataset

    path = synthetic.save(tmp_path / "data.pt")
    loaded = ImageDataset.load(path)
    assert loaded.fingerprint == synthetic.fingerprint and loaded.classes == synthetic.classes
    assert torch.equal(loaded.val_images, synthetic.val_images) and loaded.augmentation == synthetic.augmentation


def test_data_dir_comes_from_the_environment(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RKD_DATA_DIR", str(cifar_dir))
    assert load_dataset("imagefolder", cache_dir=tmp_path).num_classes == 10


@pytest.mark.parametrize(
    "name, data_dir, message",
    [
        ("mnist", None, "unknown dataset 'mnist'"),
        ("imagefolder", None, "needs --data-dir"),
        ("imagefolder", "/nonexistent/folder", "is not a folder"),
        ("cifar10", None, "--data-dir"),
    ],
)
def test_bad_datasets_raise_errors_that_say_what_to_do(name, data_dir, message, monkeypatch):
    monkeypatch.delenv("RKD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=message):
        load_dataset(name, data_dir)


def test_cifar_without_files_or_network_names_the_offline_options(tmp_path):
    with pytest.raises(DataError, match="could not be downloaded.*--dataset imagefolder"):
        load_dataset("cifar10", tmp_path, download=False)


def write_png16(path, pixels) -> None:
    """A 16-bit RGB PNG (H, W, 3 uint16) written by hand: Pillow cannot write one."""
    import struct
    import zlib

    import numpy as np

    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + np.asarray(pixels[row], dtype=">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_pngs_are_scaled_to_8_bit_also_mixed_with_8_bit_ones(tmp_path):
    import numpy as np

    root = write_tree(tmp_path / "tree", per_class=4)
    for split in ("train", "test"):
        for number in range(3):
            write_png16(root / split / "cat" / f"deep{number}.png", np.full((8, 8, 3), 51400, dtype=np.uint16))
    data = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert data.train_images.dtype == torch.uint8
    deep = data.test_images[data.test_labels == 0][-3:]  # the class's files sort "deep*" last
    assert deep.unique().tolist() == [200]  # 51400 / 65535 * 255 = 200.0, not 51400 wrapped or truncated


def test_images_of_mixed_sizes_take_the_most_common_size_said_at_load_or_the_size_asked_for(tmp_path):
    from PIL import Image

    root = write_tree(tmp_path / "tree", per_class=6, size=8)
    Image.new("RGB", (2000, 2000), (250, 10, 10)).save(root / "train" / "cat" / "000-huge.png")  # sorts first
    Image.new("RGB", (16, 12), (10, 250, 10)).save(root / "test" / "dog" / "wide.png")
    data = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert data.resolution == (8, 8) and data.input_shape == (3, 8, 8)
    assert "resized to 8x8, the most common" in data.note and "2000x2000 (1)" in data.note
    cached = sum(p.stat().st_size for p in (tmp_path / "cache" / "datasets").iterdir())
    assert cached < 200_000, "the huge image was decoded at its own size"
    asked = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache", image_size=(12, 16))
    assert asked.resolution == (12, 16) and "--image-size" in asked.note
    with pytest.raises(DataError, match="an image size is for --dataset imagefolder"):
        load_dataset("digits", image_size=(8, 8))


def test_an_unreadable_image_is_refused_naming_it(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=3)
    (root / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read .*broken.png"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")


def test_linked_split_and_class_folders_are_followed_and_broken_or_looping_links_refused(tmp_path):
    source = write_tree(tmp_path / "source", per_class=5)
    root = tmp_path / "linked"
    (root / "test").mkdir(parents=True)
    (root / "train").symlink_to(source / "train")  # a linked split
    for name in ("cat", "dog"):
        (root / "test" / name).symlink_to(source / "test" / name)  # linked class folders
    data = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert len(data.train_labels) + len(data.val_labels) == 10 and len(data.test_labels) == 10
    (source / "test" / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="gone.png is a broken link"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    (source / "test" / "dog" / "gone.png").unlink()
    (source / "test" / "dog" / "loop.png").symlink_to(source / "test" / "dog" / "loop.png")
    with pytest.raises(DataError, match="loop.png is a broken link \\(or a loop of links\\)"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")


def test_a_single_class_is_refused(tmp_path):
    with pytest.raises(DataError, match="one class folder \\(cat\\): a classifier needs at least two"):
        load_dataset("imagefolder", write_tree(tmp_path / "tree", classes=("cat",)), cache_dir=tmp_path / "cache")
    from rkd_search.trainer import dataset_from_tensors

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(DataError, match="1 class: a classifier needs at least two"):
        dataset_from_tensors("one", (images, torch.zeros(4, dtype=torch.int64)), (images, torch.zeros(4, dtype=torch.int64)), ["a"])
