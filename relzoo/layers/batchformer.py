"""BatchFormer (Hou, Yu, Tao, CVPR 2022) and BatchFormerV2: attention across the samples of a mini-batch.

:class:`BatchFormer` is one transformer encoder layer (post-LayerNorm, ReLU, feed-forward width = ``dim`` by default,
dropout 0.5, 4 heads, no positional encoding) whose *sequence* axis is the batch: every sample attends to every other
sample of the mini-batch. It takes

* ``(N, C)`` image-level features (V1: after global pooling, before the classifier);
* ``(N, L, C)`` tokens (V2: ViT blocks): one attention over the batch per token position, the same weights at every
  position, so sample ``i``'s token ``t`` only sees the other samples' token ``t``;
* ``(N, C, H, W)`` feature maps (V2 on CNNs): as ``(N, H*W, C)`` tokens.

It runs on whatever it is given; the training-only logic (both streams through a shared classifier, skipped at
evaluation) is in :func:`batchformer_v1_streams` and :class:`BatchFormerV2Insertion`.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BatchFormer", "BatchFormerV2Insertion", "batchformer_v1_streams"]


class BatchFormer(nn.Module):
    """Attention across the mini-batch (see the module doc).

    Args:
        dim: feature channels ``C``.
        num_heads: attention heads (official: 4; ``dim`` must be divisible by it).
        dim_feedforward: hidden width of the feed-forward block (official: ``dim``).
        dropout: dropout of attention weights, feed-forward and residual branches (official: 0.5).
    """

    def __init__(self, dim: int, num_heads: int = 4, dim_feedforward: int | None = None, dropout: float = 0.5):
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
        self.dim = dim
        # sequence-first: the sequence axis is the batch of samples, the "batch" axis is the token position
        self.encoder = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward or dim, dropout, batch_first=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 3, 4) or x.shape[1 if x.dim() == 4 else -1] != self.dim:
            raise ValueError(f"BatchFormer({self.dim}) takes (N, {self.dim}), (N, L, {self.dim}) or (N, {self.dim}, H, W) "
                             f"features, got shape {tuple(x.shape)}")
        if x.dim() == 2:
            return self.encoder(x[:, None]).squeeze(1)
        if x.dim() == 3:
            return self.encoder(x)
        n, c, h, w = x.shape
        tokens = self.encoder(x.flatten(2).transpose(1, 2))                      # (N, HW, C)
        return tokens.transpose(1, 2).reshape(n, c, h, w)


def batchformer_v1_streams(features: torch.Tensor, labels: torch.Tensor | None, module: BatchFormer,
                           training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """V1's shared-classifier trick. In training: ``(cat([x, BatchFormer(x)]), cat([y, y]))``, so one classifier
    learns from the plain and the batch-attended features; at evaluation ``(x, y)`` unchanged (no cost, no
    dependence on the other samples)."""
    if not training:
        return features, labels
    mixed = torch.cat([features, module(features)], dim=0)
    return mixed, (torch.cat([labels, labels], dim=0) if labels is not None else None)


class BatchFormerV2Insertion(nn.Module):
    """One V2 insertion point (DETR-style two streams). ``first=True``: the batch ``x`` (B samples) becomes
    ``cat([x, BatchFormer(x)])`` (2B); later insertion points (``first=False``) receive that 2B batch and pass only
    its second half (the BatchFormer stream) through the module. Skipped (identity) in evaluation, following this
    insertion point's own train/eval mode. Several insertion points may share one :class:`BatchFormer` (official DeiT
    default); it is not registered here, so its owner (e.g. :class:`relzoo.models.batchformer.BatchFormerPlugin`)
    holds its parameters once."""

    def __init__(self, module: BatchFormer, first: bool):
        super().__init__()
        self.first = first
        # not registered as a submodule: several insertion points share one BatchFormer, whose parameters belong to
        # (and are saved once by) its owner
        self.__dict__["module"] = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.first:
            return torch.cat([x, self.module(x)], dim=0)
        if x.shape[0] % 2:
            raise ValueError(f"a later BatchFormerV2 insertion point expects the two-stream batch (2B samples) made "
                             f"by the first one, got {x.shape[0]} samples")
        plain, stream = x.chunk(2, dim=0)
        return torch.cat([plain, self.module(stream)], dim=0)

    def after_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """This insertion point as a forward hook: ``block.register_forward_hook(insertion.after_hook)``."""
        return self(output) if self.training else None

    def extra_repr(self) -> str:
        return f"first={self.first}"
