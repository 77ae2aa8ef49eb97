"""Few-shot segmentation episodes from the standard benchmark folders: PASCAL-5i, COCO-20i and FSS-1000.

Each dataset reads the folder layout the official HSNet code uses (``root`` is the folder holding ``VOC2012``,
``COCO2014`` or ``FSS-1000``) and returns the same episode dicts as
:class:`relzoo.data.segmentation.FashionMNISTComposites`: ``query_pixel_values (3, S, S)``, ``support_pixel_values
(K, 3, S, S)``, ``support_masks (K, S, S)`` (float, {0, 1}), ``labels (S, S)`` (int64, {0, 1}, 255 = ignore) and
``class_id``. Images are resized to ``S x S`` (bilinear, antialiased, as PIL's resize) and normalised (``mean``/``std``,
ImageNet's by default); masks are resized with nearest neighbour.

Splits:

* **PASCAL-5i** (``VOC2012/JPEGImages/*.jpg``, ``VOC2012/SegmentationClassAug/*.png``; mask value = VOC class id 1..20,
  255 = object boundary). Fold ``i`` tests classes ``5i .. 5i+4`` (0-based ids, mask values ``5i+1 .. 5i+5``).
  With ``split_dir`` (the official ``data/splits/pascal`` folder: ``{trn,val}/fold{i}.txt``, lines ``name__NN`` with a
  1-based class), training uses the ``trn`` lists of the other three folds and testing the fold's ``val`` list.
  Without it, the (image, class) pairs are read off the masks: test = the images of
  ``VOC2012/ImageSets/Segmentation/val.txt`` holding a test class, train = every other mask holding a training class.
  Boundary pixels are ignored in ``labels`` (255) and are background in support masks.
* **COCO-20i** (``COCO2014/{train2014,val2014}/*.jpg``, ``COCO2014/annotations/{train2014,val2014}/*.png``; mask value =
  class id + 1). Fold ``i`` tests classes ``{i, i+4, ..., i+76}``. ``split_dir`` = the official ``data/splits/coco``
  folder (``{trn,val}/fold{i}.pkl``: class -> list of ``train2014/....jpg`` paths, read with an unpickler that refuses
  every object other than dicts, lists, strings and numbers); without it the masks of ``annotations/train2014`` (train)
  or ``annotations/val2014`` (test) are scanned. Each episode draws its class uniformly, then the query and supports
  within the class, as the official loader does (classes without images are not drawn).
* **FSS-1000** (``FSS-1000/<class>/<n>.jpg`` + ``<n>.png``; foreground = grey >= 128). ``split_dir`` = the official
  ``data/splits/fss`` folder (``trn.txt``, ``val.txt``, ``test.txt``: class names; class ids count through the three
  lists in that order). Without it the sorted class folders are split 52 / 24 / 24 % (the official 520 / 240 / 240
  proportions, not the official lists). Every image of the split is a query once per epoch.

Episodes are deterministic: episode ``i`` of epoch ``e`` depends only on ``(seed, e, i)`` (training queries are
visited in a per-epoch permutation), so runs resume exactly. They do not reproduce the official numpy call order, so
official test episodes are matched in distribution, not one by one.
"""
from __future__ import annotations

import os
import pickle
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .segmentation import _stat
from .transforms import _DECODE_ERRORS, IMAGENET_MEAN, IMAGENET_STD, UnreadableImageError, to_8bit

__all__ = ["PASCAL_CLASSES", "FolderEpisodes", "Pascal5i", "Coco20i", "FSS1000", "SEGMENTATION_FOLDER_DATASETS",
           "safe_load_split_pickle"]

PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
                  "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IGNORE = 255


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"`{name}` must be an int {bound}, got {value!r}")


def _open(path: Path, mode: str) -> np.ndarray:
    """The file as an array (``mode`` "RGB" or "L"; ``None`` keeps palette indices; RGB images of more than 8 bits
    are scaled to 8, see :func:`relzoo.data.transforms.to_8bit`); a missing or undecodable file raises
    :class:`UnreadableImageError` naming it."""
    try:
        with PIL.Image.open(path) as img:
            return np.array((to_8bit(img) if mode == "RGB" else img).convert(mode) if mode else img)
    except _DECODE_ERRORS as err:
        raise UnreadableImageError(f"unreadable file {path}: {type(err).__name__}: {err}", str(path)) from err


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # dicts, lists, strings and numbers need no class lookup
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: split files hold only dicts, lists and "
                                     "strings")


def safe_load_split_pickle(path: str | os.PathLike):
    """Read an official COCO-20i split pickle without ever constructing an arbitrary object."""
    with open(path, "rb") as fh:
        try:
            return _RestrictedUnpickler(fh).load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"split file {path} is not a plain split pickle: {err}") from err


class FolderEpisodes(torch.utils.data.Dataset, ABC):
    """Shared logic of the folder datasets: the subclasses fill ``queries`` (a list of ``(key, class_id)``),
    ``by_class`` (class id -> keys) and ``classes`` (the class ids of the split), and say how a key maps to files."""

    name = "folder"
    folds = (0,)

    def __init__(self, root, split: str = "test", fold: int = 0, shots: int = 1, episodes: int | None = None,
                 image_size: int = 400, seed: int = 0, split_dir=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if split not in ("train", "val", "test"):
            raise ValueError(f"`split` must be 'train', 'val' or 'test', got {split!r}")
        if fold not in self.folds:
            raise ValueError(f"`fold` must be one of {list(self.folds)} for {self.name}, got {fold!r}")
        _check_int("shots", shots, 1)
        _check_int("image_size", image_size, 32)
        if episodes is not None:
            _check_int("episodes", episodes, 1)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"`root` {str(root)!r} of {self.name} is not a folder")
        if split_dir is not None and not Path(split_dir).is_dir():
            raise ValueError(f"`split_dir` {str(split_dir)!r} of {self.name} is not a folder")
        self.split, self.fold, self.shots, self.image_size, self.seed, self.epoch = split, fold, shots, image_size, \
            seed, 0
        self.split_dir = Path(split_dir) if split_dir is not None else None
        self.mean, self.std = _stat("mean", mean), _stat("std", std)
        self.queries: list[tuple[str, int]] = []
        self.by_class: dict[int, list[str]] = {}
        self.classes: list[int] = []
        self._build()
        self.by_class = {c: sorted(set(keys)) for c, keys in self.by_class.items() if c in self.classes}
        if not self.queries:
            raise ValueError(f"{self.name} fold {fold} {split}: no (image, class) pair found under {self.root}")
        # a class without images is never drawn (it still counts in the fold's mIoU, as in the official metric); one
        # with too few for an episode is an error
        short = {c: len(self.by_class[c]) for c in self.classes if 0 < len(self.by_class.get(c, [])) <= shots}
        if short:
            raise ValueError(f"{self.name} fold {fold} {split}: {shots}-shot episodes need at least {shots + 1} images "
                             f"per class; class id -> images: {short}")
        self.drawable = [c for c in self.classes if self.by_class.get(c)]
        self.episodes = episodes if episodes is not None else self._default_episodes()
        self._order_epoch, self._order = None, None

    # subclasses ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def _build(self) -> None:
        """Fill ``queries``, ``by_class`` and ``classes``."""

    def _default_episodes(self) -> int:
        return len(self.queries)

    @abstractmethod
    def image_path(self, key: str) -> Path:
        """The image file of ``key``."""

    @abstractmethod
    def mask_of(self, key: str, class_id: int) -> np.ndarray:
        """``(H, W)`` uint8 mask of ``class_id`` in image ``key``: 1 = class, 0 = other, 255 = ignore."""

    # episodes -----------------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.episodes

    def _query(self, rng: np.random.Generator, index: int) -> tuple[str, int]:
        if self.split == "train":  # a fresh order every epoch, from (seed, epoch) only
            if self._order_epoch != self.epoch:
                order = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 2 ** 31]))
                self._order, self._order_epoch = order.permutation(len(self.queries)), self.epoch
            return self.queries[int(self._order[index % len(self.queries)])]
        return self.queries[index % len(self.queries)]

    def _image(self, key: str) -> torch.Tensor:
        pixels = torch.from_numpy(_open(self.image_path(key), "RGB")).permute(2, 0, 1)
        pixels = TF.resize(pixels, [self.image_size, self.image_size], antialias=True).float() / 255.0
        return (pixels - self.mean) / self.std

    def _mask(self, key: str, class_id: int) -> torch.Tensor:
        mask = torch.from_numpy(self.mask_of(key, class_id).astype(np.uint8))
        size = [self.image_size, self.image_size]
        return F.interpolate(mask[None, None].float(), size, mode="nearest")[0, 0].long()

    def __getitem__(self, index: int) -> dict:
        if not 0 <= int(index) < self.episodes:
            raise IndexError(f"episode {index} out of range 0..{self.episodes - 1}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index)]))
        key, class_id = self._query(rng, int(index))
        others = [k for k in self.by_class[class_id] if k != key]
        chosen = [others[i] for i in rng.choice(len(others), size=self.shots, replace=False)]
        label = self._mask(key, class_id)
        supports = [self._mask(k, class_id) for k in chosen]
        return {"query_pixel_values": self._image(key),
                "support_pixel_values": torch.stack([self._image(k) for k in chosen]),
                "support_masks": torch.stack([(m == 1).float() for m in supports]),
                "labels": label, "class_id": class_id, "query_name": key, "support_names": chosen}


def _present(mask: np.ndarray) -> set[int]:
    return {int(v) for v in np.unique(mask)} - {0, IGNORE}


class Pascal5i(FolderEpisodes):
    """PASCAL-5i episodes (see the module doc). ``split`` "val" and "test" are the same (the official protocol tests
    on the VOC val images of the fold's classes); test episodes: 1000 by default, query ``i`` = pair ``i mod n``."""

    name, folds = "pascal5i", (0, 1, 2, 3)

    def _fold_classes(self, fold: int) -> list[int]:
        return list(range(5 * fold, 5 * fold + 5))

    def _build(self) -> None:
        voc = self.root / "VOC2012"
        for sub in ("JPEGImages", "SegmentationClassAug"):
            if not (voc / sub).is_dir():
                raise ValueError(f"pascal5i: {voc / sub} is missing (root must hold VOC2012/JPEGImages and "
                                 "VOC2012/SegmentationClassAug)")
        test = self._fold_classes(self.fold)
        self.classes = test if self.split != "train" else [c for c in range(20) if c not in test]
        if self.split_dir is not None:
            folds = [self.fold] if self.split != "train" else [f for f in self.folds if f != self.fold]
            part = "val" if self.split != "train" else "trn"
            for f in folds:
                path = self.split_dir / part / f"fold{f}.txt"
                if not path.is_file():
                    raise ValueError(f"pascal5i: split file {path} is missing")
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if not line.strip():
                        continue
                    name, sep, number = line.strip().rpartition("__")
                    if not sep or not number.isdigit() or not 1 <= int(number) <= 20:
                        raise ValueError(f"pascal5i: {path} line {n} should be 'imagename__NN' with NN in 1..20, "
                                         f"got {line!r}")
                    self.queries.append((name, int(number) - 1))
        else:
            val_list = voc / "ImageSets" / "Segmentation" / "val.txt"
            if not val_list.is_file():
                raise ValueError(f"pascal5i: without `split_dir`, {val_list} is needed to tell test images from "
                                 "training images")
            val = {s.strip() for s in val_list.read_text().split() if s.strip()}
            names = sorted(p.stem for p in (voc / "SegmentationClassAug").glob("*.png"))
            names = [n for n in names if (n in val) == (self.split != "train")]
            for name in names:
                for value in sorted(_present(self._raw_mask(name))):
                    if value - 1 in self.classes:
                        self.queries.append((name, value - 1))
        self.queries = [(k, c) for k, c in self.queries if c in self.classes]
        for key, c in self.queries:
            self.by_class.setdefault(c, []).append(key)

    def _default_episodes(self) -> int:
        return len(self.queries) if self.split == "train" else 1000

    def image_path(self, key: str) -> Path:
        return self.root / "VOC2012" / "JPEGImages" / f"{key}.jpg"

    def _raw_mask(self, key: str) -> np.ndarray:
        return _open(self.root / "VOC2012" / "SegmentationClassAug" / f"{key}.png", None)

    def mask_of(self, key: str, class_id: int) -> np.ndarray:
        raw = self._raw_mask(key)
        return np.where(raw == class_id + 1, 1, np.where(raw == IGNORE, IGNORE, 0))


class Coco20i(FolderEpisodes):
    """COCO-20i episodes (see the module doc): each episode draws a class, then the query and supports within it.
    Test episodes: 1000 by default; training: as many as the split's (image, class) pairs."""

    name, folds = "coco20i", (0, 1, 2, 3)

    def _build(self) -> None:
        coco = self.root / "COCO2014"
        part = "train2014" if self.split == "train" else "val2014"
        test = list(range(self.fold, 80, 4))
        self.classes = test if self.split != "train" else [c for c in range(80) if c not in test]
        if self.split_dir is not None:
            path = self.split_dir / ("trn" if self.split == "train" else "val") / f"fold{self.fold}.pkl"
            if not path.is_file():
                raise ValueError(f"coco20i: split file {path} is missing")
            table = safe_load_split_pickle(path)
            if not isinstance(table, dict):
                raise ValueError(f"coco20i: {path} should hold a dict class -> list of image paths, got "
                                 f"{type(table).__name__}")
            for c, keys in table.items():
                for key in keys:
                    self.by_class.setdefault(int(c), []).append(str(key))
        else:
            folder = coco / "annotations" / part
            if not folder.is_dir():
                raise ValueError(f"coco20i: {folder} is missing (root must hold COCO2014/{part} and "
                                 f"COCO2014/annotations/{part})")
            for mask_path in sorted(folder.glob("*.png")):
                for value in _present(_open(mask_path, None)):
                    self.by_class.setdefault(value - 1, []).append(f"{part}/{mask_path.stem}.jpg")
        self.queries = [(k, c) for c in sorted(self.by_class) if c in self.classes for k in self.by_class[c]]

    def _default_episodes(self) -> int:
        return len(self.queries) if self.split == "train" else 1000

    def _query(self, rng: np.random.Generator, index: int) -> tuple[str, int]:
        class_id = self.drawable[int(rng.integers(len(self.drawable)))]
        keys = self.by_class[class_id]
        return keys[int(rng.integers(len(keys)))], class_id

    def image_path(self, key: str) -> Path:
        return self.root / "COCO2014" / key

    def mask_of(self, key: str, class_id: int) -> np.ndarray:
        raw = _open(self.root / "COCO2014" / "annotations" / Path(key).with_suffix(".png"), None)
        return (raw == class_id + 1).astype(np.uint8)


class FSS1000(FolderEpisodes):
    """FSS-1000 episodes (see the module doc): every image of the split's classes is a query once per epoch, with
    supports drawn among the other images of its class."""

    name, folds = "fss1000", (0,)

    def _build(self) -> None:
        fss = self.root / "FSS-1000"
        if not fss.is_dir():
            raise ValueError(f"fss1000: {fss} is missing (root must hold FSS-1000/<class>/<n>.jpg and <n>.png)")
        parts = ("trn", "val", "test")
        if self.split_dir is not None:
            lists = []
            for part in parts:
                path = self.split_dir / f"{part}.txt"
                if not path.is_file():
                    raise ValueError(f"fss1000: split file {path} is missing")
                lists.append([s.strip() for s in path.read_text().splitlines() if s.strip()])
        else:
            names = sorted(p.name for p in fss.iterdir() if p.is_dir())
            a, b = round(len(names) * 0.52), round(len(names) * 0.76)
            lists = [names[:a], names[a:b], names[b:]]
        self.class_names = [n for names in lists for n in names]
        mine = lists[{"train": 0, "val": 1, "test": 2}[self.split]]
        start = sum(len(lists[i]) for i in range({"train": 0, "val": 1, "test": 2}[self.split]))
        self.classes = list(range(start, start + len(mine)))
        for class_id, name in zip(self.classes, mine):
            folder = fss / name
            if not folder.is_dir():
                raise ValueError(f"fss1000: class folder {folder} is missing")
            for image in sorted(folder.glob("*.jpg"), key=lambda p: (len(p.stem), p.stem)):
                key = f"{name}/{image.stem}"
                self.by_class.setdefault(class_id, []).append(key)
                self.queries.append((key, class_id))

    def image_path(self, key: str) -> Path:
        return self.root / "FSS-1000" / f"{key}.jpg"

    def mask_of(self, key: str, class_id: int) -> np.ndarray:
        return (_open(self.root / "FSS-1000" / f"{key}.png", "L") >= 128).astype(np.uint8)


SEGMENTATION_FOLDER_DATASETS = {"pascal5i": Pascal5i, "coco20i": Coco20i, "fss1000": FSS1000}
