"""Evaluation metrics shared by the training scripts."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["FewShotSegmentationIoU", "mean_confidence_interval"]


def mean_confidence_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval, ``z * s / sqrt(n)`` with the sample standard deviation
    ``s`` (ddof 1), as few-shot papers report accuracy over test episodes ("mean ± CI"). One value: CI 0."""
    n = len(values)
    if n == 0:
        raise ValueError("`values` is empty: no episode to average")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)


class FewShotSegmentationIoU:
    """Few-shot segmentation metrics as HSNet (and PFENet, PANet) compute them.

    Per episode, with label 255 ignored (those pixels count in neither prediction nor ground truth): intersection
    and union of background and foreground. They are summed per class over episodes; then

    * ``miou`` = mean over ``class_ids`` (the fold's test classes) of ``sum inter_fg / max(sum union_fg, 1)``, x100:
      class-wise IoU pooled over episodes, then averaged over classes (a class with no episode counts as 0, as in
      the official code; ``compute()["classes_seen"]`` says how many had one);
    * ``fb_iou`` = mean over {background, foreground} of ``sum inter / sum union`` over all those classes and
      episodes, x100.

    ``update(pred (B, H, W), target (B, H, W), class_ids (B,))``; ``state()`` / ``load_state(...)`` (or
    ``merge(other)``) let processes sum their counts before ``compute()``.
    """

    IGNORE = 255

    def __init__(self, class_ids: Sequence[int]):
        self.class_ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        if self.class_ids.numel() == 0 or self.class_ids.min() < 0:
            raise ValueError(f"`class_ids` must be non-negative class ids of the fold, got {list(class_ids)}")
        size = int(self.class_ids.max()) + 1
        self.intersection = torch.zeros(2, size, dtype=torch.float64)
        self.union = torch.zeros(2, size, dtype=torch.float64)
        self.episodes = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, class_ids) -> None:
        pred, target = pred.detach().long().cpu(), target.detach().long().cpu()
        class_ids = torch.as_tensor(class_ids, dtype=torch.long).flatten().cpu()
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(f"`pred` and `target` must both be (B, H, W), got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        if class_ids.numel() != pred.shape[0]:
            raise ValueError(f"`class_ids` must have one class per episode ({pred.shape[0]}), got {class_ids.numel()}")
        if pred.numel() and not bool(((pred == 0) | (pred == 1)).all()):
            raise ValueError(f"`pred` must hold 0 (background) or 1 (foreground), got values "
                             f"{sorted(set(pred.unique().tolist()))}")
        if target.numel() and not bool(((target == 0) | (target == 1) | (target == self.IGNORE)).all()):
            raise ValueError(f"`target` must hold 0, 1 or {self.IGNORE} (ignored), got values "
                             f"{sorted(set(target.unique().tolist()))}")
        if class_ids.numel() and (class_ids.min() < 0 or class_ids.max() >= self.intersection.shape[1]):
            raise ValueError(f"`class_ids` must be in 0..{self.intersection.shape[1] - 1}, got {class_ids.tolist()}")
        keep = target != self.IGNORE
        for b in range(pred.shape[0]):
            p, t = pred[b][keep[b]], target[b][keep[b]]
            inter = torch.bincount(p[p == t], minlength=2).double()
            union = torch.bincount(p, minlength=2).double() + torch.bincount(t, minlength=2).double() - inter
            self.intersection[:, class_ids[b]] += inter
            self.union[:, class_ids[b]] += union
        self.episodes += pred.shape[0]

    def state(self) -> torch.Tensor:
        """Counts as one tensor ``(2, 2, C + 1)`` (sum it over processes, then :meth:`load_state`)."""
        extra = torch.zeros(2, 2, 1, dtype=torch.float64)
        extra[0, 0, 0] = self.episodes
        return torch.cat([torch.stack([self.intersection, self.union]), extra], dim=2)

    def load_state(self, state: torch.Tensor) -> None:
        state = state.double().cpu()
        self.intersection, self.union = state[0, :, :-1].clone(), state[1, :, :-1].clone()
        self.episodes = int(state[0, 0, -1])

    def merge(self, other: FewShotSegmentationIoU) -> None:
        self.load_state(self.state() + other.state())

    def compute(self) -> dict:
        """``{"miou", "fb_iou"}`` in percent, ``"per_class_iou"`` (class id -> %), ``"classes_seen"`` and
        ``"episodes"``."""
        inter = self.intersection[:, self.class_ids]
        union = self.union[:, self.class_ids]
        iou = inter / union.clamp(min=1)
        fb = inter.sum(dim=1) / union.sum(dim=1).clamp(min=1)
        return {"miou": float(iou[1].mean() * 100), "fb_iou": float(fb.mean() * 100),
                "per_class_iou": {int(c): float(v * 100) for c, v in zip(self.class_ids, iou[1])},
                "classes_seen": int((union.sum(dim=0) > 0).sum()), "episodes": self.episodes}
