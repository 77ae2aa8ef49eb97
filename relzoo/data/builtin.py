"""Built-in image-classification datasets as Hugging Face ``datasets.Dataset`` objects.

Every loader returns a ``Dataset`` with columns ``image`` (``datasets.Image``) and ``label``
(``datasets.ClassLabel`` carrying the class names), so scripts treat built-in data, an ``imagefolder`` and a
dataset saved with ``save_to_disk`` the same way. Generated datasets are cached by ``datasets`` (under
``HF_HOME``), so only the first load pays for encoding.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian package `dataset-fashion-mnist`
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
BUILTIN_DATASETS = ("fashion_mnist", "fashion_mnist_lt", "digits")
#: Fashion-MNIST-LT: the training split cut to CIFAR-LT's exponential profile with this imbalance (6,000 -> 60 images
#: per class, classes in id order from head to tail); the test split stays balanced (1,000 per class)
FASHION_MNIST_LT_IMBALANCE = 100


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST container; ``.gz`` or raw) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {arr.size} elements")
    return arr.reshape(shape).astype(dtypes[data[2]].replace(">", "="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``), the inverse of
    :func:`read_idx`; e.g. to lay out other images in Fashion-MNIST's file format."""
    import struct

    path, array = Path(path), np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _features(names: list[str]):
    from datasets import ClassLabel, Features, Image

    return Features({"image": Image(), "label": ClassLabel(names=names)})


def _array_dataset(images: np.ndarray, labels: np.ndarray, names: list[str], fingerprint: str):
    """``Dataset`` from uint8 images ``(N, H, W)`` and labels, cached by ``datasets`` under ``fingerprint``."""
    from datasets import Dataset

    def gen(images, labels):
        for img, lab in zip(images, labels):
            yield {"image": img, "label": int(lab)}

    return Dataset.from_generator(gen, features=_features(names), gen_kwargs=dict(images=images, labels=labels),
                                  fingerprint=fingerprint)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None):
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images, 10 classes).

    Looks in ``data_dir``, then ``$RELZOO_FASHION_MNIST_DIR``, then the Debian package's folder; when none holds
    the idx files and the Hub is reachable, downloads ``zalando-datasets/fashion_mnist``.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"`split` for fashion_mnist must be one of {tuple(_FASHION_FILES)}, got {split!r}")
    dirs = [d for d in (data_dir, os.environ.get("RELZOO_FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS) if d]
    for d in map(Path, dirs):
        img_path, lab_path = (_find_idx(d, stem) for stem in _FASHION_FILES[split])
        if img_path and lab_path:
            images, labels = read_idx(img_path), read_idx(lab_path)
            if images.shape[0] != labels.shape[0]:
                raise ValueError(f"{img_path} holds {images.shape[0]} images but {lab_path} {labels.shape[0]} labels")
            stat = img_path.stat()
            fingerprint = f"relzoo-fashion-mnist-{split}-{stat.st_size}-{int(stat.st_mtime)}"
            return _array_dataset(images, labels, FASHION_MNIST_CLASSES, fingerprint)
    from huggingface_hub import constants

    how = ("Fashion-MNIST not found. Install the Debian package (`apt-get install -y dataset-fashion-mnist`, files in "
           f"{FASHION_MNIST_DIRS[0]}), or set RELZOO_FASHION_MNIST_DIR to a folder holding "
           f"{_FASHION_FILES[split][0]}.gz and {_FASHION_FILES[split][1]}.gz, or go online so that "
           f"{FASHION_MNIST_HUB_ID!r} can be downloaded from the Hub. Looked in: {[str(d) for d in dirs]}.")
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(how + " (HF_HUB_OFFLINE is set)")
    try:
        from datasets import load_dataset

        ds = load_dataset(FASHION_MNIST_HUB_ID, split=split)
    except Exception as err:  # no network, no such repo: the same advice applies
        raise FileNotFoundError(f"{how} ({type(err).__name__}: {err})") from err
    return ds.cast(_features(FASHION_MNIST_CLASSES))


def load_fashion_mnist_lt(split: str = "train", imbalance: float = FASHION_MNIST_LT_IMBALANCE, seed: int = 0,
                          data_dir: str | os.PathLike | None = None):
    """Fashion-MNIST-LT: the training split long-tailed as CIFAR-10/100-LT are (class ``k`` keeps
    ``round(6000 * imbalance ** (-k / 9))`` images, drawn with ``seed``: 6000, 3597, 2156, ..., 100, 60 at imbalance
    100, 14,888 in all), the test split the balanced Fashion-MNIST test set. See
    :func:`relzoo.data.sampling.long_tailed_indices`."""
    from .sampling import long_tailed_indices

    ds = load_fashion_mnist(split, data_dir)
    if split != "train":
        return ds
    keep = long_tailed_indices(ds["label"], imbalance=imbalance, seed=seed)
    return ds.select(keep)


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's bundled digits (1,797 8x8 images, 10 classes), split deterministically and stratified.

    Pixel values 0..16 are scaled to 0..255 uint8 grey images.
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` for digits must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=test_fraction, random_state=seed,
                                           stratify=bunch.target)
    idx = np.sort(idx_train if split == "train" else idx_test)
    names = [str(i) for i in range(10)]
    return _array_dataset(images[idx], bunch.target[idx], names, f"relzoo-digits-{split}-{test_fraction}-{seed}")


def load_image_dataset(name_or_path: str, split: str = "train"):
    """A classification dataset by name or path, as a ``Dataset`` with ``image`` and ``label`` columns.

    Args:
        name_or_path: ``"fashion_mnist"``, ``"fashion_mnist_lt"`` (long-tailed training split), ``"digits"``, a folder written by ``Dataset(Dict).save_to_disk``, or an
            ``imagefolder`` root (``root/<split>/<class>/*.png`` or ``root/<class>/*.png``).
        split: split name (``"train"``, ``"test"``, ...).
    """
    if name_or_path in BUILTIN_DATASETS:
        loader = {"fashion_mnist": load_fashion_mnist, "fashion_mnist_lt": load_fashion_mnist_lt,
                  "digits": load_digits}[name_or_path]
        return loader(split)
    path = Path(name_or_path)
    if not path.is_dir():
        raise ValueError(f"`dataset` must be one of {BUILTIN_DATASETS} or an existing folder (imagefolder root or "
                         f"save_to_disk output), got {name_or_path!r}")
    from datasets import DatasetDict, load_dataset, load_from_disk

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        ds = load_from_disk(str(path))
    else:
        _check_imagefolder(path)
        ds = load_dataset("imagefolder", data_dir=str(path))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise ValueError(f"split {split!r} not in {name_or_path!r}; available: {sorted(ds)}")
        ds = ds[split]
    missing = {"image", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(f"dataset {name_or_path!r} must have columns 'image' and 'label'; missing {sorted(missing)} "
                         f"(columns: {ds.column_names})")
    return ds


def _check_imagefolder(path: Path) -> None:
    """An imagefolder root must hold image files somewhere below it; say so plainly when it does not."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {e.lower() for e in ImageFolder.EXTENSIONS}
    if not any(p.suffix.lower() in extensions and p.is_file() for p in path.rglob("*")):
        raise ValueError(f"`dataset` folder {str(path)!r} holds no image files (expected an imagefolder: "
                         "root/<split>/<class>/*.png|jpg|... or root/<class>/*.png|jpg|..., or a save_to_disk folder)")


def class_names(ds) -> list[str]:
    """Class names of a dataset's ``label`` column (``ClassLabel``), or ``["0", "1", ...]``."""
    feature = ds.features["label"]
    if hasattr(feature, "names"):
        return list(feature.names)
    return [str(i) for i in range(int(max(ds["label"])) + 1)]


def load_split(name: str, split: str):
    """A dataset split by name or path (see :func:`load_image_dataset`); ``split="all"`` joins ``train`` and
    ``test``."""
    if split == "all":
        from datasets import concatenate_datasets

        return concatenate_datasets([load_image_dataset(name, "train"), load_image_dataset(name, "test")])
    return load_image_dataset(name, split)
