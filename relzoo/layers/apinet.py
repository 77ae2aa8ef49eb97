"""API-Net's attentive pairwise interaction (Zhuang, Wang, Qiao, "Learning Attentive Pairwise Interaction for
Fine-Grained Classification", AAAI 2020), for pooled image features ``(B, C)``.

* :func:`mine_pairs`: for every image of the batch, its nearest other image of the same class and its nearest image
  of another class (squared Euclidean distance on detached features) -> ``2B`` pairs ``(anchor, partner)``.
* :class:`MutualVector`: ``concat(x1, x2) -> Linear(2C, 512) -> Dropout(0.5) -> Linear(512, C)`` (no activation
  between the two, as in the official code).
* :func:`attentive_features`: gates ``g_i = sigmoid(x_m * x_i)`` and the four residual-gated features
  ``x1 + x1 * g1``, ``x1 + x1 * g2``, ``x2 + x2 * g2``, ``x2 + x2 * g1``.
* :func:`apinet_loss`: cross-entropy on all four features' logits plus the score-ranking hinge
  ``mean(max(0, p_other - p_self + margin))`` on the ground-truth class probabilities.

Training-only: at inference API-Net is the plain backbone and classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MutualVector", "apinet_loss", "attentive_features", "check_pairable", "mine_pairs", "mine_pairs_reference"]


def check_pairable(labels: torch.Tensor) -> None:
    """A ``ValueError`` unless every image of a batch with these labels has a same-class and an other-class partner:
    at least 2 images, at least 2 classes, at least 2 images of every class (cheap: call it before the backbone)."""
    if labels.dim() != 1:
        raise ValueError(f"`labels` must be one class id per image (1D), got shape {tuple(labels.shape)}")
    if labels.shape[0] < 2:
        raise ValueError(f"API-Net pairs images within the batch: it needs at least 2 images, got {labels.shape[0]}")
    classes, counts = labels.unique(return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"API-Net needs at least 2 classes in a batch (an inter-class partner for every image), got "
                         f"only class {classes.tolist()}; use a class-balanced sampler")
    alone = classes[counts < 2].tolist()
    if alone:
        raise ValueError(f"API-Net needs at least 2 images of every class in a batch (an intra-class partner), but "
                         f"classes {alone} have one; use a class-balanced sampler (n classes x n >= 2 images)")


def _check_batch(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"`features` must be pooled features (B, C), got shape {tuple(features.shape)}")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"`labels` must have shape ({features.shape[0]},) (one per image), got {tuple(labels.shape)}")
    check_pairable(labels)


@torch.no_grad()
def mine_pairs(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchors, partners)``, each ``(2B,)``: first every image with its nearest other same-class image, then every
    image with its nearest other-class image (squared Euclidean distance, detached). A batch with fewer than 2 images,
    one class only, or a class with a single image raises a ``ValueError`` (the official code would silently pair such
    an image with image 0)."""
    _check_batch(features, labels)
    x = features.detach().float()
    dist = torch.cdist(x, x).square()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    intra = dist.masked_fill(~same | eye, float("inf")).argmin(dim=1)
    inter = dist.masked_fill(same, float("inf")).argmin(dim=1)
    anchors = torch.arange(len(labels), device=labels.device)
    return torch.cat([anchors, anchors]), torch.cat([intra, inter])


def mine_pairs_reference(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mine_pairs` written as loops over images (slow, obviously right), for tests."""
    _check_batch(features, labels)
    x, y = features.detach().double(), labels.tolist()
    n = len(y)
    intra, inter = [], []
    for i in range(n):
        d = [float(((x[i] - x[j]) ** 2).sum()) for j in range(n)]
        intra.append(min((j for j in range(n) if j != i and y[j] == y[i]), key=lambda j: d[j]))
        inter.append(min((j for j in range(n) if y[j] != y[i]), key=lambda j: d[j]))
    anchors = list(range(n))
    return torch.tensor(anchors + anchors), torch.tensor(intra + inter)


class MutualVector(nn.Module):
    """``x_m = f_m([x1, x2])``: ``Linear(2C, hidden) -> Dropout -> Linear(hidden, C)`` (official: hidden 512,
    dropout 0.5, no activation in between)."""

    def __init__(self, dim: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        self.map1 = nn.Linear(2 * dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.map2 = nn.Linear(hidden, dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.map2(self.drop(self.map1(torch.cat([x1, x2], dim=1))))


def attentive_features(x1: torch.Tensor, x2: torch.Tensor, mutual: MutualVector) -> tuple[torch.Tensor, ...]:
    """``(x1_self, x1_other, x2_self, x2_other)`` for pairs ``(x1, x2)``: each ``x + x * gate`` with
    ``g1 = sigmoid(x_m * x1)``, ``g2 = sigmoid(x_m * x2)`` and ``x_m = mutual(x1, x2)``."""
    xm = mutual(x1, x2)
    g1, g2 = torch.sigmoid(xm * x1), torch.sigmoid(xm * x2)
    return x1 + x1 * g1, x1 + x1 * g2, x2 + x2 * g2, x2 + x2 * g1


def apinet_loss(logits: tuple[torch.Tensor, ...], labels1: torch.Tensor, labels2: torch.Tensor, margin: float = 0.05,
                rank_weight: float = 1.0, cross_entropy=F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """``logits`` = the classifier on ``(x1_self, x1_other, x2_self, x2_other)``. Returns ``(total, ce, rank)``:
    ``ce`` = cross-entropy over all four (mean over the 8 x pairs rows), ``rank`` = mean over the 4 x pairs rows of
    ``max(0, p_other - p_self + margin)`` with ``p`` the softmax probability of the ground-truth class, ``total = ce
    + rank_weight * rank``. ``cross_entropy(logits, targets)`` (mean-reduced) may be replaced, e.g. by a
    label-smoothed one."""
    l1_self, l1_other, l2_self, l2_other = logits
    self_logits, other_logits = torch.cat([l1_self, l2_self]), torch.cat([l1_other, l2_other])
    targets = torch.cat([labels1, labels2])
    ce = cross_entropy(torch.cat([self_logits, other_logits]), torch.cat([targets, targets]))
    p_self = self_logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    p_other = other_logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    rank = F.margin_ranking_loss(p_self, p_other, torch.ones_like(p_self), margin=margin)
    return ce + rank_weight * rank, ce, rank
