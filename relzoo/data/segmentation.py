"""Few-shot segmentation episodes.

:class:`FashionMNISTComposites` is the built-in benchmark made of real images: Fashion-MNIST items composited onto
larger canvases (several items per canvas at random positions and sizes, each tinted, over a smooth cluttered
background); the mask of class ``c`` is the visible silhouette of its items. Folds split the classes, so the test
classes never appear in training canvases, not even as background.

An episode is a dict: ``query_pixel_values (3, S, S)``, ``support_pixel_values (K, 3, S, S)``, ``support_masks
(K, S, S)`` (float, {0, 1}), ``labels (S, S)`` (int64, {0, 1}) and ``class_id``; ``torch.utils.data.default_collate``
batches them. Episode ``i`` of epoch ``e`` depends only on ``(seed, e, i)``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["FOLD_CLASSES", "CompositeSegmentation", "FashionMNISTComposites"]

# fold -> test classes (the other five are the training classes): odd / even, as the few-shot classification split
FOLD_CLASSES = {0: (1, 3, 5, 7, 9), 1: (0, 2, 4, 6, 8)}


def _stat(name: str, value) -> torch.Tensor:
    values = tuple(float(v) for v in value)
    if len(values) != 3 or (name == "std" and min(values) <= 0):
        raise ValueError(f"`{name}` must be three numbers{' > 0' if name == 'std' else ''} (R, G, B), got {value!r}")
    return torch.tensor(values)[:, None, None]


class FashionMNISTComposites(torch.utils.data.Dataset):
    """Built-in few-shot segmentation episodes from Fashion-MNIST (see the module doc).

    Args:
        split: ``"train"`` (items of the fold's training classes, from Fashion-MNIST's train split) or ``"test"``
            (the fold's test classes, from its test split).
        fold: 0 (test classes 1, 3, 5, 7, 9) or 1 (test classes 0, 2, 4, 6, 8).
        shots: support canvases per episode.
        episodes: episodes per epoch. Test episodes cycle through the classes (episode ``i`` segments class
            ``classes[i % 5]``), as the official PASCAL-5i episodes do; training episodes draw the class at random.
        image_size: canvas side.
        items: fewest and most items per canvas (one or more of the episode's class, the rest of other classes of
            the same split).
        item_size: smallest and largest item side in pixels (the 28-px items are resized).
        seed: episode ``i`` of epoch ``e`` depends only on ``(seed, e, i)``.
        data_dir: where the Fashion-MNIST idx files are (default: the Debian package's folder).
        mean, std: the normalisation of the returned images (default ImageNet's; use the one the backbone was trained
            with).
    """

    def __init__(self, split: str = "train", fold: int = 0, shots: int = 1, episodes: int = 1000,
                 image_size: int = 128, items: tuple[int, int] = (2, 4), item_size: tuple[int, int] | None = None,
                 seed: int = 0, data_dir=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        from .builtin import load_fashion_mnist

        if split not in ("train", "test"):
            raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
        if fold not in FOLD_CLASSES:
            raise ValueError(f"`fold` must be one of {sorted(FOLD_CLASSES)}, got {fold!r}")
        for name, value, low in (("shots", shots, 1), ("episodes", episodes, 1), ("image_size", image_size, 32)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
        if not (isinstance(items, (tuple, list)) and len(items) == 2 and 1 <= items[0] <= items[1]):
            raise ValueError(f"`items` must be (fewest, most) with 1 <= fewest <= most, got {items!r}")
        item_size = tuple(item_size or (max(12, image_size // 5), max(16, image_size // 2)))
        if not (len(item_size) == 2 and 8 <= item_size[0] <= item_size[1] <= image_size):
            raise ValueError(f"`item_size` must be (smallest, largest) with 8 <= smallest <= largest <= image_size "
                             f"({image_size}), got {item_size!r}")
        self.mean, self.std = _stat("mean", mean), _stat("std", std)   # the normalisation of every image it returns
        test = FOLD_CLASSES[fold]
        self.classes = list(test) if split == "test" else [c for c in range(10) if c not in test]
        ds = load_fashion_mnist(split, data_dir=data_dir).with_format("numpy")
        labels, images = np.asarray(ds["label"]), np.asarray(ds["image"], dtype=np.uint8)
        self.items = {c: images[labels == c] for c in self.classes}
        self.split, self.fold, self.shots, self.episodes, self.seed = split, fold, shots, episodes, seed
        self.image_size, self.item_count, self.item_size, self.epoch = image_size, tuple(items), item_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.episodes

    def canvas(self, rng: np.random.Generator, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One canvas holding at least one visible item of class ``target``: ``image (3, S, S)`` in [0, 1] and the
        class of every pixel ``(S, S)`` (-1 = background)."""
        size = self.image_size
        for _ in range(20):  # redraw if the target ends up (almost) hidden under other items
            coarse = torch.from_numpy(rng.uniform(0.0, 0.45, size=(1, 3, 6, 6))).float()
            image = F.interpolate(coarse, (size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
            owner = torch.full((size, size), -1, dtype=torch.long)
            count = int(rng.integers(self.item_count[0], self.item_count[1] + 1))
            others = [c for c in self.classes if c != target]
            kinds = [target] + [int(rng.choice(others)) if others and rng.uniform() < 0.75 else target
                                for _ in range(count - 1)]
            rng.shuffle(kinds)
            for kind in kinds:
                pool = self.items[kind]
                item = torch.from_numpy(pool[int(rng.integers(len(pool)))].astype(np.float32) / 255.0)
                side = int(rng.integers(self.item_size[0], self.item_size[1] + 1))
                item = F.interpolate(item[None, None], (side, side), mode="bilinear", align_corners=False)[0, 0]
                alpha = (item > 0.1).float()
                top, left = (int(rng.integers(0, size - side + 1)) for _ in range(2))
                tint = torch.from_numpy(rng.uniform(0.55, 1.0, size=3)).float()[:, None, None]
                region = image[:, top:top + side, left:left + side]
                image[:, top:top + side, left:left + side] = alpha * (0.25 + 0.75 * item) * tint + (1 - alpha) * region
                owner[top:top + side, left:left + side][alpha > 0] = kind
            if (owner == target).sum() >= 0.01 * size * size:
                return image, owner
        return image, owner

    def __getitem__(self, index: int) -> dict:
        if not 0 <= int(index) < self.episodes:
            raise IndexError(f"episode {index} out of range 0..{self.episodes - 1}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index)]))
        target = self.classes[int(index) % len(self.classes)] if self.split == "test" else \
            int(rng.choice(self.classes))
        query, owner = self.canvas(rng, target)
        supports = [self.canvas(rng, target) for _ in range(self.shots)]
        return {"query_pixel_values": (query - self.mean) / self.std,
                "support_pixel_values": torch.stack([(img - self.mean) / self.std for img, _ in supports]),
                "support_masks": torch.stack([(own == target).float() for _, own in supports]),
                "labels": (owner == target).long(), "class_id": target}


class CompositeSegmentation(torch.utils.data.Dataset):
    """Semantic segmentation of a fold's *training* classes on the training canvases of
    :class:`FashionMNISTComposites` (same canvases, same items): ``{"pixel_values": (3, S, S), "labels": (S, S)}`` with
    label 0 = background and ``i`` = the ``i``-th training class (``classes[i - 1]``). It pretrains a backbone for the
    built-in benchmark where ImageNet weights cannot be downloaded; the test classes never appear in it. Sample ``i``
    of epoch ``e`` depends only on ``(seed, e, i)``.

    Args: as :class:`FashionMNISTComposites` (``split`` is always "train"; ``samples`` canvases per epoch).
    """

    def __init__(self, fold: int = 0, samples: int = 1000, image_size: int = 128, seed: int = 0, data_dir=None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, **canvas_kwargs):
        self.canvases = FashionMNISTComposites("train", fold=fold, shots=1, episodes=samples, image_size=image_size,
                                               seed=seed, data_dir=data_dir, mean=mean, std=std, **canvas_kwargs)
        self.classes = self.canvases.classes
        self.num_labels = len(self.classes) + 1

    def set_epoch(self, epoch: int) -> None:
        self.canvases.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.canvases)

    def __getitem__(self, index: int) -> dict:
        c = self.canvases
        if not 0 <= int(index) < len(c):
            raise IndexError(f"sample {index} out of range 0..{len(c) - 1}")
        rng = np.random.default_rng(np.random.SeedSequence([c.seed, c.epoch, int(index), 1]))
        image, owner = c.canvas(rng, int(rng.choice(self.classes)))
        labels = torch.zeros_like(owner)
        for i, cls in enumerate(self.classes, start=1):
            labels[owner == cls] = i
        return {"pixel_values": (image - c.mean) / c.std, "labels": labels}
