"""Class-level sampling for the relation plug-ins (issue 8).

* :func:`long_tailed_indices`: the exponential long-tail profile of CIFAR-10/100-LT: class ``k`` (in ``order``) keeps
  ``round(n_max * imbalance ** (-k / (C - 1)))`` of its images, so the largest class has ``imbalance`` times more
  than the smallest.
* :func:`shot_groups`: many / medium / few-shot classes by training-image count (the long-tail papers' split: more
  than 100, 20 to 100, fewer than 20).
* :class:`ClassBalancedBatchSampler`: API-Net's batches, ``n_classes`` classes x ``n_samples`` images each, cycling
  through every class's shuffled images; deterministic per ``(seed, epoch)``.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["ClassBalancedBatchSampler", "long_tailed_indices", "shot_groups"]


def _labels(labels) -> np.ndarray:
    array = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"`labels` must be a non-empty 1D sequence of class ids, got shape {array.shape}")
    return array.astype(np.int64)


def long_tailed_indices(labels, imbalance: float = 100.0, seed: int = 0, order=None) -> np.ndarray:
    """Sorted indices of a long-tailed subset of a dataset with labels ``labels`` (see the module doc). ``order``:
    the classes from head to tail (default: ascending ids); which images a class keeps is drawn with ``seed``."""
    y = _labels(labels)
    classes = np.unique(y) if order is None else np.asarray(list(order))
    if sorted(classes.tolist()) != sorted(np.unique(y).tolist()):
        raise ValueError(f"`order` must list every class of `labels` once, got {list(classes)} for classes "
                         f"{np.unique(y).tolist()}")
    if not (isinstance(imbalance, (int, float)) and imbalance >= 1):
        raise ValueError(f"`imbalance` must be a number >= 1 (largest / smallest class), got {imbalance!r}")
    n_max = min(int((y == c).sum()) for c in classes)
    rng = np.random.default_rng(seed)
    keep = []
    for k, c in enumerate(classes):
        count = round(n_max * imbalance ** (-k / max(len(classes) - 1, 1)))
        members = np.flatnonzero(y == c)
        keep.append(rng.choice(members, size=max(count, 1), replace=False))
    return np.sort(np.concatenate(keep))


def shot_groups(train_counts: dict, many: int = 100, few: int = 20) -> dict[str, list]:
    """``{"many": [...], "medium": [...], "few": [...]}``: classes with more than ``many`` training images, between
    ``few`` and ``many``, fewer than ``few``."""
    groups = {"many": [], "medium": [], "few": []}
    for c, n in sorted(train_counts.items()):
        groups["many" if n > many else "few" if n < few else "medium"].append(c)
    return groups


class ClassBalancedBatchSampler(torch.utils.data.Sampler):
    """Batches of ``n_classes`` distinct classes x ``n_samples`` images of each (official API-Net: 30 x 4). Every
    class cycles through a fresh shuffle of its images; a class with fewer than ``n_samples`` images cannot fill its
    share and is refused. ``batches`` per epoch (default ``len(labels) // (n_classes * n_samples)``). Batch ``b`` of
    epoch ``e`` depends only on ``(seed, e)``; call ``set_epoch``."""

    def __init__(self, labels, n_classes: int, n_samples: int, batches: int | None = None, seed: int = 0):
        y = _labels(labels)
        self.classes = np.unique(y)
        for name, value, low in (("n_classes", n_classes, 2), ("n_samples", n_samples, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low} (API-Net pairs within and across classes), got "
                                 f"{value!r}")
        if n_classes > len(self.classes):
            raise ValueError(f"`n_classes` ({n_classes}) exceeds the {len(self.classes)} classes of the dataset")
        self.members = {int(c): np.flatnonzero(y == c) for c in self.classes}
        small = {c: len(m) for c, m in self.members.items() if len(m) < n_samples}
        if small:
            raise ValueError(f"classes with fewer than n_samples = {n_samples} images cannot fill a batch: {small}")
        self.n_classes, self.n_samples, self.seed, self.epoch = n_classes, n_samples, seed, 0
        self.batches = batches if batches is not None else max(len(y) // (n_classes * n_samples), 1)
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ValueError(f"`batches` must be an int >= 1, got {batches!r}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        queues = {c: rng.permutation(m) for c, m in self.members.items()}
        used = dict.fromkeys(self.members, 0)
        for _ in range(self.batches):
            batch = []
            for c in rng.choice(self.classes, size=self.n_classes, replace=False).tolist():
                if used[c] + self.n_samples > len(queues[c]):
                    queues[c], used[c] = rng.permutation(self.members[c]), 0
                batch.extend(queues[c][used[c]:used[c] + self.n_samples].tolist())
                used[c] += self.n_samples
            yield batch
