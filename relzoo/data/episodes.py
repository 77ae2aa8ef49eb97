"""Few-shot episodes over any ``datasets.Dataset`` with ``image`` and ``label`` columns.

* :class:`EpisodeSampler` draws N-way K-shot Q-query episodes (fixed) or Meta-Dataset-style variable-way /
  variable-shot episodes, from a class index built once, restricted to a list of classes (class splits), and
  deterministic: episode ``i`` of epoch ``e`` depends only on ``(seed, e, i)``. It is a batch sampler: one episode per
  "batch", so Accelerate hands whole episodes to each process.
* :class:`EpisodeImages` reads the images the sampler names; :class:`EpisodeCollator` turns them into the model's
  tensors (``support_pixel_values (S, C, H, W)``, ``support_labels (S,)``, ``query_pixel_values (Q, C, H, W)``,
  ``query_labels (Q,)``) and, with probability ``simclr_probability``, makes the episode a **SimCLR episode**
  (CrossTransformers, brief §1.7): the first k support images of each class (k = that class's query count) are copied
  as the new queries, every support image becomes its own class, and support and queries get independent SimCLR
  views (queries also blurred).

Images are scaled to [-1, 1] (mean 0.5, std 0.5), as the official CrossTransformers input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = ["EpisodeCollator", "EpisodeImages", "EpisodeItem", "EpisodeSampler", "episode_loader",
           "plain_episode_transform", "simclr_transform"]

HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EpisodeItem:
    """One image of one episode: dataset row ``index``, the episode class ``label`` (0..N-1), whether it is a query,
    and the episode's ``key`` ``(seed, epoch, episode)`` that seeds its augmentation."""

    index: int
    label: int
    query: bool
    key: tuple[int, int, int]
    class_id: int


def _labels_of(labels) -> np.ndarray:
    if hasattr(labels, "column_names"):  # a datasets.Dataset: read the label column once
        if "label" not in labels.column_names:
            raise ValueError(f"the dataset must have a 'label' column, got columns {labels.column_names}")
        labels = labels["label"]
    return np.asarray(labels, dtype=np.int64)


class EpisodeSampler(torch.utils.data.Sampler):
    """Episodes as lists of :class:`EpisodeItem` (a ``batch_sampler`` for ``DataLoader``).

    Args:
        labels: a ``datasets.Dataset`` with a ``label`` column, or a sequence of integer labels.
        n_way, n_shot, n_query: fixed episodes: ``n_way`` classes, ``n_shot`` support and ``n_query`` query images
            each.
        num_episodes: episodes per epoch.
        seed: episode ``i`` of epoch ``e`` is drawn from ``(seed, e, i)`` alone.
        classes: the classes episodes draw from (a class split); default all. Classes with fewer than
            ``n_shot + n_query`` images (fixed) or fewer than 2 (variable) are left out, and named if that leaves
            too few.
        variable: Meta-Dataset sampling (Triantafillou et al., 2020): ways uniform in ``[min_way, max_way]``
            (capped by the classes available); per-class queries ``min(max_query, floor(min_c |c| / 2))``; a support
            budget ``min(max_support, sum_c ceil(beta * min(max_support_per_class, |c| - q)))`` with
            ``beta ~ U(0, 1]``; shots proportional to ``exp(alpha_c) |c|`` with ``alpha_c ~ U(log 0.5, log 2)``, at
            least 1 and at most ``|c| - q``.
    """

    def __init__(self, labels, n_way: int = 5, n_shot: int = 5, n_query: int = 15, num_episodes: int = 100,
                 seed: int = 0, classes=None, variable: bool = False, min_way: int = 5, max_way: int = 50,
                 max_query: int = 10, max_support: int = 500, max_support_per_class: int = 100):
        for name, value, low in (("n_way", n_way, 1), ("n_shot", n_shot, 1), ("n_query", n_query, 1),
                                 ("num_episodes", num_episodes, 1), ("min_way", min_way, 2), ("max_way", max_way, 2),
                                 ("max_query", max_query, 1), ("max_support", max_support, 1),
                                 ("max_support_per_class", max_support_per_class, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
        if variable and min_way > max_way:
            raise ValueError(f"`min_way` ({min_way}) must not exceed `max_way` ({max_way})")
        all_labels = _labels_of(labels)
        present = sorted(set(all_labels.tolist()))
        if classes is None:
            classes = present
        classes = [int(c) for c in classes]
        unknown = sorted(set(classes) - set(present))
        if unknown:
            raise ValueError(f"`classes` {unknown} have no image in the dataset (classes present: {present})")
        self.index = {c: np.flatnonzero(all_labels == c) for c in classes}       # built once
        need = 2 if variable else n_shot + n_query
        small = [c for c, idx in self.index.items() if len(idx) < need]
        self.classes = [c for c in classes if c not in small]
        least = min_way if variable else n_way
        if len(self.classes) < least:
            raise ValueError(
                f"{len(self.classes)} usable classes, but episodes need {least}"
                + (f" (classes {small} have fewer than {need} images: n_shot + n_query = {need})" if small else "")
                + f"; classes given: {classes}")
        self.n_way, self.n_shot, self.n_query, self.num_episodes, self.seed = n_way, n_shot, n_query, num_episodes, seed
        self.variable, self.min_way, self.max_way, self.max_query = variable, min_way, max_way, max_query
        self.max_support, self.max_support_per_class = max_support, max_support_per_class
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self):
        for i in range(self.num_episodes):
            yield self.episode(i)

    def episode(self, i: int, epoch: int | None = None) -> list[EpisodeItem]:
        """Episode ``i`` of ``epoch`` (default: the current one): support items first (class by class), then
        queries (class by class)."""
        key = (self.seed, self.epoch if epoch is None else epoch, i)
        rng = np.random.default_rng(np.random.SeedSequence(list(key)))
        if self.variable:
            ways = int(rng.integers(self.min_way, min(self.max_way, len(self.classes)) + 1))
        else:
            ways = self.n_way
        chosen = [self.classes[j] for j in rng.choice(len(self.classes), ways, replace=False)]
        sizes = np.array([len(self.index[c]) for c in chosen])
        if self.variable:
            n_query = min(self.max_query, int(sizes.min()) // 2)
            beta = 1.0 - rng.uniform()  # (0, 1]
            budget = min(self.max_support, int(sum(math.ceil(beta * min(self.max_support_per_class, s - n_query))
                                                   for s in sizes)))
            alpha = rng.uniform(math.log(0.5), math.log(2.0), size=ways)
            share = np.exp(alpha) * sizes / (np.exp(alpha) * sizes).sum()
            shots = np.minimum(np.floor(share * max(budget - ways, 0)).astype(int) + 1, sizes - n_query)
        else:
            n_query, shots = self.n_query, np.full(ways, self.n_shot)
        support, query = [], []
        for label, (c, k) in enumerate(zip(chosen, shots)):
            picked = rng.choice(self.index[c], int(k) + n_query, replace=False)
            support += [EpisodeItem(int(j), label, False, key, c) for j in picked[:k]]
            query += [EpisodeItem(int(j), label, True, key, c) for j in picked[k:]]
        return support + query


class EpisodeImages(torch.utils.data.Dataset):
    """``images[item] -> (PIL image, item, skipped)`` for :class:`EpisodeItem` keys, over a ``datasets.Dataset``.

    An image that cannot be decoded raises :class:`~relzoo.data.UnreadableImageError` naming its file (or row). With
    ``skip_unreadable=True`` and ``class_rows`` (dataset class -> its rows, e.g. ``EpisodeSampler.index``) it is
    replaced by the next readable image of the same class (so the episode keeps its classes and shots; the stand-in
    may repeat an image of the episode), and the unreadable sources are listed in ``skipped``.
    """

    def __init__(self, hf_dataset, in_chans: int = 3, skip_unreadable: bool = False, class_rows: dict | None = None):
        if in_chans not in (1, 3):
            raise ValueError(f"`in_chans` must be 1 or 3, got {in_chans}")
        if skip_unreadable and class_rows is None:
            raise ValueError("`skip_unreadable=True` needs `class_rows` (dataset class -> rows) to find stand-ins")
        self.ds, self.mode = hf_dataset, "RGB" if in_chans == 3 else "L"
        self.skip_unreadable, self.class_rows = skip_unreadable, class_rows

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item: EpisodeItem):
        from .transforms import UnreadableImageError, read_image

        try:
            return read_image(self.ds, item.index, self.mode)[0], item, []
        except UnreadableImageError as err:
            if not self.skip_unreadable:
                raise
            skipped = [err.source]
        rows = [int(r) for r in self.class_rows[item.class_id]]
        start = rows.index(int(item.index)) if int(item.index) in rows else 0
        for row in rows[start + 1:] + rows[:start]:
            try:
                return read_image(self.ds, row, self.mode)[0], item, skipped
            except UnreadableImageError as err:
                skipped.append(err.source)
        raise UnreadableImageError(f"no image of class {item.class_id} ({len(rows)} rows) can be read") from None


def plain_episode_transform(image_size: int, mean=HALF, std=HALF) -> v2.Compose:
    """Regular episodes (official: no augmentation): resize to ``image_size`` x ``image_size``, scale to [-1, 1]."""
    return v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def simclr_transform(image_size: int, blur: bool, mean=HALF, std=HALF) -> v2.Compose:
    """A SimCLR view (Chen et al., 2020, as CrossTransformers' SimCLR episodes use it): random resized crop (area
    0.08-1, aspect 3/4-4/3, bicubic), horizontal flip, colour jitter with p = 0.8 (brightness, contrast, saturation
    0.8, hue 0.2), grayscale with p = 0.2, and, for queries, Gaussian blur (sigma 0.1-2, kernel a tenth of the
    size, odd)."""
    ops = [v2.ToImage(),
           v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
           v2.RandomHorizontalFlip(),
           v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
           v2.RandomGrayscale(p=0.2)]
    if blur:
        kernel = max(3, image_size // 10 + (1 - (image_size // 10) % 2))
        ops.append(v2.GaussianBlur(kernel, sigma=(0.1, 2.0)))
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class EpisodeCollator:
    """``[(image, EpisodeItem), ...]`` of one episode -> the model's tensors.

    Returns a dict with ``support_pixel_values (S, C, H, W)``, ``support_labels (S,)``, ``query_pixel_values
    (Q, C, H, W)``, ``query_labels (Q,)``, ``class_ids (N,)`` (dataset classes of the episode's classes; -1 in SimCLR
    episodes), ``simclr`` (bool), ``episode`` (index) and ``skipped`` (unreadable images replaced by stand-ins).

    Args:
        image_size: side of the square model input.
        simclr_probability: chance that an episode becomes a SimCLR episode (0: never; official CTX+SimCLR: 0.5).
        mean, std: normalisation (default [-1, 1] scaling).
        support_transform: transform of regular episodes (default :func:`plain_episode_transform`).
    """

    def __init__(self, image_size: int, simclr_probability: float = 0.0, mean=HALF, std=HALF,
                 support_transform=None):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
        if not (isinstance(simclr_probability, (int, float)) and 0 <= simclr_probability <= 1):
            raise ValueError(f"`simclr_probability` must be in [0, 1], got {simclr_probability!r}")
        self.simclr_probability = float(simclr_probability)
        self.plain = support_transform or plain_episode_transform(image_size, mean, std)
        self.simclr_support = simclr_transform(image_size, blur=False, mean=mean, std=std)
        self.simclr_query = simclr_transform(image_size, blur=True, mean=mean, std=std)

    def __call__(self, samples: list) -> dict:
        if not samples:
            raise ValueError("empty episode")
        skipped = [source for sample in samples for source in (sample[2] if len(sample) > 2 else ())]
        samples = [(sample[0], sample[1]) for sample in samples]
        key = samples[0][1].key
        rng = np.random.default_rng(np.random.SeedSequence([*key, 1]))
        simclr = bool(rng.uniform() < self.simclr_probability)
        support = [(img, it) for img, it in samples if not it.query]
        queries = [(img, it) for img, it in samples if it.query]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2 ** 62)))
            if simclr:
                return {**self._simclr(support, queries, key), "skipped": skipped}
            classes = sorted({it.label: it.class_id for _, it in support}.items())
            return {"support_pixel_values": torch.stack([self.plain(img) for img, _ in support]),
                    "support_labels": torch.tensor([it.label for _, it in support], dtype=torch.int64),
                    "query_pixel_values": torch.stack([self.plain(img) for img, _ in queries]),
                    "query_labels": torch.tensor([it.label for _, it in queries], dtype=torch.int64),
                    "class_ids": torch.tensor([c for _, c in classes], dtype=torch.int64),
                    "simclr": False, "episode": key[2], "skipped": skipped}

    def _simclr(self, support, queries, key) -> dict:
        """Every support image its own class; the first k support images of each class (k = its query count) are
        copied as the queries, labelled with their support index; independent views of both."""
        per_class_queries: dict[int, int] = {}
        for _, it in queries:
            per_class_queries[it.label] = per_class_queries.get(it.label, 0) + 1
        seen: dict[int, int] = {}
        new_queries = []
        for j, (img, it) in enumerate(support):
            if seen.get(it.label, 0) < per_class_queries.get(it.label, 0):
                new_queries.append((img, j))
            seen[it.label] = seen.get(it.label, 0) + 1
        return {"support_pixel_values": torch.stack([self.simclr_support(img) for img, _ in support]),
                "support_labels": torch.arange(len(support), dtype=torch.int64),
                "query_pixel_values": torch.stack([self.simclr_query(img) for img, _ in new_queries]),
                "query_labels": torch.tensor([j for _, j in new_queries], dtype=torch.int64),
                "class_ids": torch.full((len(support),), -1, dtype=torch.int64), "simclr": True, "episode": key[2]}


def episode_loader(hf_dataset, sampler: EpisodeSampler, collator: EpisodeCollator, in_chans: int = 3,
                   num_workers: int = 0, skip_unreadable: bool = False) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` yielding one collated episode per step (``skip_unreadable``: see :class:`EpisodeImages`)."""
    images = EpisodeImages(hf_dataset, in_chans, skip_unreadable=skip_unreadable, class_rows=sampler.index)
    return torch.utils.data.DataLoader(images, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
