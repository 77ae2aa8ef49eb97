"""Few-shot inference on a user's own images: the one code path of ``relzoo segment``, ``relzoo classify`` and the app.

* :func:`load_fewshot_model`: any relzoo few-shot folder (a relzoo training output, a converted official checkpoint)
  or Hub id, with the preprocessing its folder declares;
* :func:`segment`: support images with their masks + query images -> one mask per query at the query's own size
  (images are resized to the model's size, the prediction is brought back to the original size; several shots vote
  as the model's own K-shot rule does);
* :func:`classify`: a few images per named class + queries -> class probabilities per query;
* :func:`correspondence_picture`: where chosen query positions attend in each support image (CrossTransformers).

Bad input raises :class:`InputError` (a ``ValueError``) naming the argument and what was received, before the model
runs; the command line prints it in one line and the app shows it in the page.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, UnidentifiedImageError

__all__ = ["InputError", "FewShotModel", "SegmentationResult", "ClassificationResult", "load_fewshot_model",
           "read_image", "check_image", "read_mask", "resize_mask", "segment", "classify", "correspondence_picture", "has_correspondence",
           "mask_overlay",
           "MAX_MEGAPIXELS", "TASKS"]

#: images above this size are refused (a decoded 50-megapixel RGB image is 150 MB; phone photos are 12-48)
MAX_MEGAPIXELS = 50
TASKS = ("few-shot-segmentation", "few-shot-image-classification")


class InputError(ValueError):
    """A user's input cannot be used: the message names the argument, what is expected and what was received."""


@dataclass
class FewShotModel:
    """A loaded few-shot model with its folder's preprocessing (square ``size``, ``mean`` / ``std``)."""
    model: torch.nn.Module
    task: str
    family: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def describe(self) -> str:
        backbone = getattr(self.model.config, "backbone", "?")
        return (f"{type(self.model).__name__} ({self.family}, {backbone} backbone) from {self.source}, "
                f"{self.size}x{self.size} px")

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """``(N, 3, size, size)``: resized (bilinear, antialiased), scaled to [0, 1], normalised."""
        arrays = [np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR), dtype=np.float32)
                  for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device, self.model.dtype)


@dataclass
class SegmentationResult:
    """One query's prediction at its original size: ``mask`` (H, W) bool, ``foreground`` (H, W) probability."""
    mask: np.ndarray
    foreground: np.ndarray
    shots: int
    seconds: float

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape[1], self.mask.shape[0]

    @property
    def coverage(self) -> float:
        return float(self.mask.mean())


@dataclass
class ClassificationResult:
    """One query's class probabilities (in the order the classes were given) and the most probable class."""
    probabilities: dict[str, float]
    seconds: float

    @property
    def predicted(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


def _name_of(value) -> str:
    return str(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__


def _check_size(width: int, height: int, name: str) -> None:
    if width * height > MAX_MEGAPIXELS * 1e6:
        raise InputError(f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above the limit of "
                         f"{MAX_MEGAPIXELS}; downscale it first (the model sees it at a few hundred pixels anyway)")
    if width < 1 or height < 1:
        raise InputError(f"{name}: the image is empty ({width}x{height})")


def check_image(value, name: str = "image") -> None:
    """:func:`read_image`'s checks; a file is checked from its header without decoding its pixels (a folder of
    queries is refused before any compute, and decoded one batch at a time)."""
    if not isinstance(value, (str, os.PathLike)):
        read_image(value, name)
        return
    path = Path(value)
    if not path.is_file():
        raise InputError(f"{name}: no such file {str(path)!r}")
    try:
        with Image.open(path) as im:
            width, height = im.size
            im.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as err:
        raise InputError(f"{name}: {path.name!r} is not an image PIL can read ({type(err).__name__}: "
                         f"{str(err)[:120]})") from None
    _check_size(width, height, name)


def read_image(value, name: str = "image") -> Image.Image:
    """An RGB image from a path, a PIL image or an ``(H, W[, C])`` uint8 array; :class:`InputError` if it is not
    one or is larger than :data:`MAX_MEGAPIXELS`."""
    if isinstance(value, (str, os.PathLike)):
        check_image(value, name)
        try:
            with Image.open(value) as im:
                im.load()
                image = im
        except OSError as err:   # a file whose header reads but whose data do not (truncated)
            raise InputError(f"{name}: {Path(value).name!r} is not an image PIL can read ({type(err).__name__}: "
                             f"{str(err)[:120]})") from None
    elif isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray) and value.ndim in (2, 3) and value.size:
        image = Image.fromarray(value.astype(np.uint8) if value.dtype != np.uint8 else value)
    else:
        raise InputError(f"{name}: expected an image file, a PIL image or an (H, W, C) array, got "
                         f"{_name_of(value)}")
    _check_size(*image.size, name)
    return image.convert("RGB")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to ``size`` (W, H) by nearest neighbour."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(tuple(size), Image.NEAREST)) > 127


def read_mask(value, name: str = "mask", size: tuple[int, int] | None = None) -> np.ndarray:
    """A binary ``(H, W)`` mask: from a path, PIL image or array. An image with a transparent background (a brush
    layer) marks its painted pixels; otherwise pixels brighter than mid-grey are the object. ``size`` (W, H): the
    image it belongs to; a mask of the same shape at another resolution is resized, another shape is refused."""
    if isinstance(value, np.ndarray) and value.ndim in (2, 3) and value.size:
        image = Image.fromarray(value.astype(np.uint8) * (255 if value.dtype == bool else 1))  # RGBA kept
    elif isinstance(value, Image.Image):
        image = value
    else:
        read_image(value, name)                        # the file's checks; its alpha channel is read below
        with Image.open(value) as im:
            image = im.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[..., 3]
        mask = alpha > 127 if alpha.min() < 255 else rgba[..., :3].max(-1) > 127
    else:
        mask = np.asarray(image.convert("L")) > 127
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        (w, h), (mw, mh) = size, (mask.shape[1], mask.shape[0])
        if abs(w / h - mw / mh) > 0.01 * (w / h):
            raise InputError(f"{name}: the mask is {mw}x{mh} but its image is {w}x{h} (another shape)")
        mask = resize_mask(mask, (w, h))
    if not mask.any():
        raise InputError(f"{name}: the mask is empty (no pixel marked): paint the object in the support image")
    return mask


def load_fewshot_model(source: str | os.PathLike, device: str | torch.device = "cpu") -> FewShotModel:
    """A relzoo few-shot folder or Hub id, in eval mode on ``device``, with its folder's preprocessing."""
    from transformers import AutoConfig

    import relzoo  # noqa: F401  (registers the families and Auto classes)

    from ..registry import family_of

    source = str(source)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as err:  # a missing folder, an unreachable or unknown Hub id, an unreadable config
        raise InputError(f"--model: cannot read a model config from {source!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from None
    family = family_of(config)
    if family is None or family.task not in TASKS:
        found = family.task if family else f"model_type {getattr(config, 'model_type', None)!r}"
        raise InputError(f"--model: expected a few-shot segmentation or classification model (HSNet, "
                         f"CrossTransformers, ProtoNet), got {found} in {source!r}")
    device = torch.device(device)
    model = family.model_class.from_pretrained(source).eval().to(device)
    size, mean, std = _preprocessing(source, config)
    return FewShotModel(model=model, task=family.task, family=family.name, size=size, mean=mean, std=std,
                        source=source, device=device)


def _preprocessing(source: str, config) -> tuple[int, tuple, tuple]:
    """Square size, mean and std from the folder's preprocessor_config.json (HSNet's config.image_size and
    ImageNet statistics when a folder has none)."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(source)
        size = processor.size.get("height") or processor.size.get("shortest_edge")
        return int(size), tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, AttributeError, TypeError):
        size = getattr(config, "image_size", None) or 224
        return int(size), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _require(fm: FewShotModel, task: str) -> None:
    if fm.task != task:
        raise InputError(f"--model: this needs a {task} model, got a {fm.task} model ({fm.describe()})")


def segment(fm: FewShotModel, supports: list[tuple], queries: list, batch_size: int = 4,
            progress=None) -> list[SegmentationResult]:
    """Masks of ``queries`` given ``supports`` = ``[(image, mask), ...]`` (1 or more shots; images and masks as
    :func:`read_image` / :func:`read_mask` take them). With several shots the prediction is the model's vote.
    ``progress(n)``, if given, is called after each batch of ``n`` queries."""
    _require(fm, "few-shot-segmentation")
    if not supports:
        raise InputError("support: at least one support image with its mask is needed, got none")
    if not queries:
        raise InputError("query: at least one query image is needed, got none")
    if batch_size < 1:
        raise InputError(f"batch_size: must be at least 1, got {batch_size}")
    images, masks = [], []
    for k, (image, mask) in enumerate(supports, start=1):
        image = read_image(image, f"support image {k}")
        mask = read_mask(mask, f"support mask {k}", image.size)
        small = resize_mask(mask, (fm.size, fm.size))
        if not small.any():
            raise InputError(f"support mask {k}: the object is too small to survive resizing to the model's "
                             f"{fm.size}x{fm.size} px; mark a larger region")
        images.append(image)
        masks.append(torch.from_numpy(small))
    names = [f"query image {i}" for i in range(1, len(queries) + 1)]
    for q, name in zip(queries, names):
        check_image(q, name)
    from ..models.hsnet import vote

    support = fm.pixel_values(images)[None]                                     # (1, K, 3, S, S)
    support_masks = torch.stack(masks)[None].to(fm.device, support.dtype)       # (1, K, S, S)
    results = []
    for start in range(0, len(queries), batch_size):
        chunk = [read_image(q, n) for q, n in zip(queries[start:start + batch_size], names[start:start + batch_size])]
        t0 = time.perf_counter()
        query = fm.pixel_values(chunk)
        b = query.shape[0]
        with torch.inference_mode():
            out = fm.model(query_pixel_values=query, support_pixel_values=support.expand(b, -1, -1, -1, -1),
                           support_masks=support_masks.expand(b, -1, -1, -1))
            for i, image in enumerate(chunk):
                w, h = image.size
                shot_logits = out.shot_logits[i:i + 1] if out.shot_logits is not None else out.logits[i:i + 1, None]
                up = F.interpolate(shot_logits.flatten(0, 1).float(), (h, w), mode="bilinear", align_corners=True)
                up = up.unflatten(0, shot_logits.shape[:2])                     # (1, K, 2, h, w)
                mask = up[:, 0].argmax(1) if up.shape[1] == 1 else vote(up)
                foreground = up.mean(1).softmax(1)[0, 1]
                results.append(SegmentationResult(mask=mask[0].bool().cpu().numpy(),
                                                  foreground=foreground.cpu().numpy(), shots=len(images), seconds=0.0))
        seconds = time.perf_counter() - t0
        for r in results[start:]:
            r.seconds = seconds / len(chunk)
        if progress is not None:
            progress(len(chunk))
    return results


def _support_set(support: dict) -> tuple[list[str], list[Image.Image], list[int]]:
    if not isinstance(support, dict):
        raise InputError(f"support: expected {{class name: [images]}}, got {type(support).__name__}")
    names = [str(n).strip() for n in support]
    if len(names) < 2:
        raise InputError(f"support: at least two classes are needed, got {len(names)} ({', '.join(names) or 'none'})")
    if any(not n for n in names):
        raise InputError("support: every class needs a name, got an empty one")
    if len(set(names)) != len(names):
        raise InputError(f"support: class names must differ, got {names}")
    images, labels = [], []
    for label, (name, items) in enumerate(zip(names, support.values())):
        items = list(items or [])
        if not items:
            raise InputError(f"support: class {name!r} has no support image")
        for j, item in enumerate(items, start=1):
            images.append(read_image(item, f"support image {j} of class {name!r}"))
            labels.append(label)
    return names, images, labels


def classify(fm: FewShotModel, support: dict, queries: list, batch_size: int = 16,
             progress=None) -> list[ClassificationResult]:
    """Class probabilities of each query given ``support`` = ``{class name: [images]}`` (at least two classes).
    ``progress(n)``, if given, is called after each batch of ``n`` queries."""
    _require(fm, "few-shot-image-classification")
    names, images, labels = _support_set(support)
    if not queries:
        raise InputError("query: at least one query image is needed, got none")
    if batch_size < 1:
        raise InputError(f"batch_size: must be at least 1, got {batch_size}")
    query_names = [f"query image {i}" for i in range(1, len(queries) + 1)]
    for q, name in zip(queries, query_names):
        check_image(q, name)
    support_pixels = fm.pixel_values(images)
    support_labels = torch.tensor(labels, device=fm.device)
    results = []
    for start in range(0, len(queries), batch_size):
        chunk = [read_image(q, n) for q, n in zip(queries[start:start + batch_size],
                                                   query_names[start:start + batch_size])]
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = fm.model(query_pixel_values=fm.pixel_values(chunk), support_pixel_values=support_pixels,
                              support_labels=support_labels).logits
        probabilities = logits.float().softmax(-1).cpu().numpy()
        seconds = (time.perf_counter() - t0) / len(chunk)
        results += [ClassificationResult({n: float(p) for n, p in zip(names, row)}, seconds) for row in probabilities]
        if progress is not None:
            progress(len(chunk))
    return results


def has_correspondence(fm: FewShotModel) -> bool:
    """Whether the model returns spatial attention over the support images (``output_attentions``)."""
    import inspect

    return "output_attentions" in inspect.signature(fm.model.forward).parameters


def correspondence_picture(fm: FewShotModel, support: dict, query, positions: list[int] | None = None
                           ) -> Image.Image:
    """CrossTransformers only: where positions of ``query`` (default: centre, corners) attend in the first support
    image of each class (:func:`relzoo.train.attention_maps.attention_picture`)."""
    _require(fm, "few-shot-image-classification")
    if not has_correspondence(fm):
        raise InputError(f"--model: correspondence pictures need a model with spatial attention (CrossTransformers), "
                         f"got {fm.family} (its prototypes are pooled: there is no attention to show)")
    from ..train.attention_maps import attention_picture

    _, images, labels = _support_set(support)
    query = read_image(query, "query image")
    return attention_picture(fm.model, fm.pixel_values(images), torch.tensor(labels, device=fm.device),
                             fm.pixel_values([query]), positions=positions)


def mask_overlay(image, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.45) -> Image.Image:
    """``image`` with the masked pixels tinted and the mask's outline drawn."""
    base = read_image(image).copy()
    if mask.shape != (base.size[1], base.size[0]):
        raise InputError(f"mask: {mask.shape[1]}x{mask.shape[0]} does not match the image {base.size[0]}x"
                         f"{base.size[1]}")
    pixels = np.asarray(base, dtype=np.float32)
    tint = np.array(color, dtype=np.float32)
    pixels[mask] = (1 - alpha) * pixels[mask] + alpha * tint
    m = Image.fromarray(mask.astype(np.uint8) * 255)
    edge = np.asarray(m.filter(ImageFilter.MaxFilter(3))) != np.asarray(m.filter(ImageFilter.MinFilter(3)))
    pixels[edge] = tint
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
