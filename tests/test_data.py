"""Built-in datasets, folders and seeded transforms."""

import numpy as np
import pytest
import torch
from PIL import Image

from relzoo.data import (
    FASHION_MNIST_CLASSES,
    TransformedImageDataset,
    build_transform,
    class_names,
    load_digits,
    load_fashion_mnist,
    load_image_dataset,
    read_idx,
    write_idx,
)


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_read_idx_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr) and np.array_equal(read_idx(tmp_path / "b"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_idx_folder(fake_fashion):
    ds = load_fashion_mnist("train", data_dir=fake_fashion)
    assert len(ds) == 12 and ds.column_names == ["image", "label"]
    assert class_names(ds) == FASHION_MNIST_CLASSES
    assert ds[3]["label"] == 3 and ds[3]["image"].size == (28, 28)
    assert len(load_fashion_mnist("test", data_dir=fake_fashion)) == 5
    with pytest.raises(ValueError, match="`split`"):
        load_fashion_mnist("validation", data_dir=fake_fashion)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("relzoo.data.builtin.FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"),))
    monkeypatch.delenv("RELZOO_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train")


def test_digits_split_is_deterministic_and_stratified():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert class_names(train) == [str(i) for i in range(10)]
    assert np.bincount(test["label"]).min() >= 35
    assert load_digits("test")[0]["label"] == test[0]["label"]
    img = np.asarray(train[0]["image"])
    assert img.shape == (8, 8) and img.dtype == np.uint8 and img.max() > 100


def test_imagefolder_and_saved_dataset(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / "folder" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (10, 12), (i * 50, 0, 0)).save(d / f"{i}.png")
    ds = load_image_dataset(str(tmp_path / "folder"), "train")
    assert len(ds) == 4 and class_names(ds) == ["cat", "dog"]
    ds.save_to_disk(str(tmp_path / "saved"))
    again = load_image_dataset(str(tmp_path / "saved"), "train")
    assert len(again) == 4 and class_names(again) == ["cat", "dog"]
    with pytest.raises(ValueError, match="split 'val' not in"):
        load_image_dataset(str(tmp_path / "folder"), "val")
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        load_image_dataset("no_such_dataset")


def test_seeded_transforms_are_reproducible_per_sample_and_epoch():
    ds = load_digits("test").select(range(4))
    tds = TransformedImageDataset(ds, build_transform(32, train=True), in_chans=3, seed=7)
    a, b = tds[2]["pixel_values"], tds[2]["pixel_values"]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(tds[1]["pixel_values"], tds[2]["pixel_values"])
    tds.set_epoch(1)
    assert not torch.equal(tds[2]["pixel_values"], a)
    grey = TransformedImageDataset(ds, build_transform(16, train=False, mean=(0.5,), std=(0.5,)), in_chans=1)
    item = grey[0]
    assert item["pixel_values"].shape == (1, 16, 16) and item["labels"] == ds[0]["label"]
    with pytest.raises(ValueError, match="`in_chans`"):
        TransformedImageDataset(ds, build_transform(16, train=False), in_chans=2)
    with pytest.raises(ValueError, match="`crop_pct`"):
        build_transform(16, train=False, crop_pct=1.5)


def test_no_test_reads_the_debian_data_sets_here_or_in_a_subprocess(tmp_path):
    """tests/conftest.py guards every test process: a fresh machine has no /usr/share/datasets, so a test that reads
    it passes here and fails there (it did: issue 20)."""
    import subprocess
    import sys

    from relzoo.data.builtin import FASHION_MNIST_DIRS

    target = f"{FASHION_MNIST_DIRS[0]}/train-images-idx3-ubyte.gz"
    with pytest.raises(PermissionError, match="tests must not use Debian's data sets"):
        open(target, "rb")
    with pytest.raises((PermissionError, FileNotFoundError)):   # refused here; absent on a fresh machine
        load_fashion_mnist("train")
    code = f"open({target!r}, 'rb')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode != 0 and "tests must not use Debian's data sets" in proc.stderr


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path):
    """16-bit PNGs and float TIFFs were read as almost binary images (PIL's convert clips: 97.5 % white). They are
    scaled to 8 bits; values that fit no known range are refused, naming the file."""
    from relzoo.data import UnreadableImageError, read_image

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)           # 0 .. 65472
    floats = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    for split in ("train",):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / split / "b").mkdir(parents=True)
        Image.fromarray(ramp).save(tmp_path / split / "a" / "ramp16.png")
        Image.fromarray(floats).save(tmp_path / split / "b" / "float.tiff")
    ds = load_image_dataset(str(tmp_path), "train")
    got = {ds[i]["label"]: np.asarray(read_image(ds, i, "L")[0]) for i in range(len(ds))}
    np.testing.assert_array_equal(got[0], np.rint(ramp / 257).astype(np.uint8))
    np.testing.assert_array_equal(got[1], np.rint(floats * 255).astype(np.uint8))
    assert (got[0] == 255).mean() < 0.01                                            # not the clipped picture
    rgb = np.asarray(read_image(ds, 0, "RGB")[0])
    assert rgb.shape == (32, 32, 3) and (rgb[..., 0] == got[0]).all()
    bad = tmp_path / "bad"
    (bad / "train" / "a").mkdir(parents=True)
    (bad / "train" / "b").mkdir(parents=True)
    Image.fromarray(floats * 1000).save(bad / "train" / "a" / "x.tiff")
    Image.fromarray(ramp).save(bad / "train" / "b" / "y.png")
    bad_ds = load_image_dataset(str(bad), "train")
    with pytest.raises(UnreadableImageError, match=r"x.tiff.*float image with samples in \[0, 1000\]"):
        read_image(bad_ds, bad_ds["label"].index(0))
