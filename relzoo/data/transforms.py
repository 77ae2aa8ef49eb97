"""Image transforms (torchvision.transforms.v2) and a dataset view whose augmentation is seeded per sample.

Seeding every sample from ``(seed, epoch, index)`` makes a training run independent of how batches are split
between processes or whether it was interrupted and resumed: the same sample in the same epoch always gets the
same crop and flip.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(image_size: int, train: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 0.875,
                    hflip: bool = True, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """The SAN / ImageNet recipe: train ``RandomResizedCrop + horizontal flip``; eval ``Resize(size / crop_pct)
    + CenterCrop(size)``. Both end in a float tensor ``(C, size, size)`` normalised by ``mean``/``std``."""
    if image_size < 1:
        raise ValueError(f"`image_size` must be positive, got {image_size}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"`crop_pct` must be in (0, 1], got {crop_pct}")
    if train:
        ops = [v2.RandomResizedCrop(image_size, scale=scale, antialias=True)]
        ops += [v2.RandomHorizontalFlip()] if hflip else []
    else:
        ops = [v2.Resize(int(round(image_size / crop_pct)), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class TransformedImageDataset(torch.utils.data.Dataset):
    """``dataset[i] -> {"pixel_values": (C, H, W) float tensor, "labels": int}`` over a ``datasets.Dataset``.

    Images are converted to RGB (``in_chans=3``) or grey (``in_chans=1``). When ``seed`` is given, the random
    transform of sample ``i`` in epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``; call
    ``set_epoch(e)`` before each epoch.
    """

    def __init__(self, hf_dataset, transform, in_chans: int = 3, seed: int | None = None):
        if in_chans not in (1, 3):
            raise ValueError(f"`in_chans` must be 1 or 3 for image datasets, got {in_chans}")
        self.ds, self.transform, self.mode, self.seed, self.epoch = hf_dataset, transform, \
            ("RGB" if in_chans == 3 else "L"), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        row = self.ds[int(index)]
        image = row["image"].convert(self.mode)
        if self.seed is None:
            pixels = self.transform(image)
        else:
            sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                pixels = self.transform(image)
        return {"pixel_values": pixels, "labels": int(row["label"])}
