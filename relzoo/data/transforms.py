"""Image transforms (torchvision.transforms.v2) and a dataset view whose augmentation is seeded per sample.

Seeding every sample from ``(seed, epoch, index)`` makes a training run independent of how batches are split
between processes or whether it was interrupted and resumed: the same sample in the same epoch always gets the
same crop and flip.
"""
from __future__ import annotations

import struct

import numpy as np
import PIL.Image
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


class UnreadableImageError(ValueError):
    """An image of a dataset cannot be decoded (truncated, damaged or not an image); ``source`` names it."""

    def __init__(self, message: str, source: str | None = None):
        super().__init__(message)
        self.source = source


# what PIL raises for damaged files: truncated data and unknown formats (OSError), broken chunks (SyntaxError),
# inconsistent headers (ValueError, struct.error), and the decompression-bomb guard
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, PIL.Image.DecompressionBombError)


def image_source(ds, index: int) -> str:
    """Where row ``index``'s image comes from: its file path when the dataset has one, else the row."""
    from datasets import Image

    try:
        entry = ds.select_columns(["image"]).cast_column("image", Image(decode=False))[int(index)]["image"]
        path = entry.get("path") if isinstance(entry, dict) else None
    except Exception:  # the source is only used in a message: never let it hide the real error
        path = None
    return repr(path) if path else f"row {index}"


def to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """An image whose samples have more than 8 bits (16-bit PNG ``I;16``, 32-bit integer ``I``, float ``F``, as in
    16-bit PNGs and float TIFFs) as an 8-bit grey image, scaled rather than clipped (PIL's own ``convert`` clips:
    a 16-bit picture became 97 % white): integers in ``0..65535`` are divided by 257, floats in ``[0, 1]`` are
    multiplied by 255 and floats in ``[0, 255]`` kept. Other values (negative, above 65535, non-finite) raise
    ``ValueError`` saying so. Images of other modes are returned as they are."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise ValueError("a float image with non-finite samples (NaN or infinity)")
        low, high = float(values.min(initial=0)), float(values.max(initial=0))
        if low < 0 or high > 255:
            raise ValueError(f"a float image with samples in [{low:g}, {high:g}]: relzoo reads [0, 1] or [0, 255]")
        scaled = values * 255 if high <= 1 else values
    else:
        low, high = int(values.min(initial=0)), int(values.max(initial=0))
        if low < 0 or high > 65535:
            raise ValueError(f"a {image.mode} image with samples in [{low}, {high}]: relzoo reads 8- and 16-bit images")
        scaled = values / 257.0
    return PIL.Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def read_image(ds, index: int, mode: str = "RGB") -> tuple[PIL.Image.Image, int]:
    """Row ``index`` of a ``datasets.Dataset`` as ``(image converted to mode, label)``; images with more than 8 bits
    per sample are scaled to 8 bits first (:func:`to_8bit`). An image that cannot be decoded, or whose samples are
    out of range, raises :class:`UnreadableImageError` naming its file (or row), with ``source`` set."""
    try:
        row = ds[int(index)]
        return to_8bit(row["image"]).convert(mode), int(row["label"])
    except _DECODE_ERRORS as err:
        source = image_source(ds, index)
        raise UnreadableImageError(
            f"unreadable image {source} (row {index}): {type(err).__name__}: {err}. Remove or replace the file, or "
            "pass --skip_unreadable_images (skip_unreadable=True) to leave unreadable images out (they are "
            "counted and listed at the end)", source) from err


class TransformedImageDataset(torch.utils.data.Dataset):
    """``dataset[i] -> {"pixel_values": (C, H, W) float tensor, "labels": int, "skipped": [...]}`` over a
    ``datasets.Dataset``; batch it with :func:`collate_images`.

    Images are converted to RGB (``in_chans=3``) or grey (``in_chans=1``). When ``seed`` is given, the random
    transform of sample ``i`` in epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``; call
    ``set_epoch(e)`` before each epoch.

    An image that cannot be decoded raises :class:`UnreadableImageError` naming its file (or row). With
    ``skip_unreadable=True`` the sample is replaced by the next readable one (so batches keep their size on every
    process) and the unreadable file is listed in the sample's ``skipped``; with ``mask_skipped=True`` too (for
    evaluation) the replacement gets label ``-1``, which metrics leave out.
    """

    def __init__(self, hf_dataset, transform, in_chans: int = 3, seed: int | None = None,
                 skip_unreadable: bool = False, mask_skipped: bool = False):
        if in_chans not in (1, 3):
            raise ValueError(f"`in_chans` must be 1 or 3 for image datasets, got {in_chans}")
        self.ds, self.transform, self.mode, self.seed, self.epoch = hf_dataset, transform, \
            ("RGB" if in_chans == 3 else "L"), seed, 0
        self.skip_unreadable, self.mask_skipped = skip_unreadable, mask_skipped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        skipped, sample = [], int(index)
        while True:
            try:
                image, label = read_image(self.ds, sample, self.mode)
                break
            except UnreadableImageError as err:
                if not self.skip_unreadable:
                    raise
                skipped.append(err.source)
                sample = (sample + 1) % len(self)
                if sample == index:
                    raise UnreadableImageError(f"no image of the dataset ({len(self)} rows) can be read") from None
        if skipped and self.mask_skipped:
            label = -1
        if self.seed is None:
            pixels = self.transform(image)
        else:
            sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                pixels = self.transform(image)
        return {"pixel_values": pixels, "labels": label, "skipped": skipped}


def collate_images(samples: list[dict]) -> dict:
    """Batch :class:`TransformedImageDataset` samples: stacked ``pixel_values``, ``labels`` as int64 and the
    ``skipped`` sources of the whole batch as one list."""
    return {"pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "labels": torch.tensor([s["labels"] for s in samples], dtype=torch.int64),
            "skipped": [src for s in samples for src in s.get("skipped", ())]}
