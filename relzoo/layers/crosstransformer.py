"""Few-shot heads: CrossTransformers' query-aligned prototypes and ProtoNet's mean prototypes.

CrossTransformers (Doersch, Gupta, Zisserman, NeurIPS 2020), for a query image with positions ``p`` and the support
images ``j`` of class ``c`` with positions ``m``::

    k_jm = W_k s_jm,  q_p = W_k x_p          (one bias-free 1x1 projection for keys and queries, d_k channels)
    v_jm = W_v s_jm,  w_p = W_v x_p          (one bias-free 1x1 projection for support and query values, d_v)
    a^c_{jm,p} = softmax over all (j in c, m) of  <k_jm, q_p> / sqrt(d_k)     (one softmax per class and position)
    t^c_p = sum_{j in c, m} a^c_{jm,p} v_jm                                   (query-aligned prototype)
    d(x, c) = mean_p || t^c_p - w_p ||^2,   logits = -d

Support positions are handled as one flat list (every position of every support image, with its image's class),
so classes may have any number of shots and support images any size different from the queries'.

:func:`cross_attention_logits_reference` loops over queries and classes and reads like the equations above.
:func:`cross_attention_logits` computes a chunk of queries at a time against all support positions, laid out class
by class (shots padded to the largest class, padding masked), with each class as one head of PyTorch's fused
``scaled_dot_product_attention`` (which never stores the attention weights). When there are more queries than
``chunk_size`` and gradients are needed, each chunk is recomputed in the backward pass (``torch.utils.checkpoint``),
so its peak memory is set by ``chunk_size``, not by the number of queries (the official implementation
rematerialises one query at a time for the same reason).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["HEAD_INITS", "CrossAttentionHead", "check_support_labels", "class_layout", "cross_attention_logits", "cross_attention_logits_reference",
           "prototype_logits", "prototype_logits_reference"]

#: initialisations of the key/value projections (see :meth:`CrossAttentionHead.reset_parameters`)
HEAD_INITS = ("small", "official")


def check_support_labels(support_labels: torch.Tensor, num_support: int, num_classes: int | None = None) -> int:
    """Validate episode labels ``(S,)``: integers, one per support image, covering ``0..N-1`` with every class
    present. Returns ``N``. Raises a ``ValueError``/``TypeError`` naming what is wrong."""
    if not isinstance(support_labels, torch.Tensor):
        raise TypeError(f"`support_labels` must be a tensor of class indices (S,), got {type(support_labels).__name__}")
    if support_labels.dtype.is_floating_point or support_labels.dtype.is_complex or support_labels.dtype == torch.bool:
        raise TypeError(f"`support_labels` must hold integer class indices, got dtype {support_labels.dtype}")
    if support_labels.ndim != 1 or support_labels.shape[0] != num_support:
        raise ValueError(f"`support_labels` must have shape ({num_support},) (one label per support image), got "
                         f"{tuple(support_labels.shape)}")
    if num_support == 0:
        raise ValueError("the support set is empty: every episode needs at least one support image per class")
    low, high = int(support_labels.min()), int(support_labels.max())
    if num_classes is None and high >= num_support:   # checked before counting: a label of 30,000,000 allocates
        raise ValueError(f"`support_labels` must be class indices 0..N-1 with every class present, so at most "
                         f"{num_support - 1} for {num_support} support images; got values in {low}..{high}")
    n = num_classes if num_classes is not None else high + 1
    if low < 0 or high >= n:
        raise ValueError(f"`support_labels` must be class indices in 0..{n - 1}, got values in {low}..{high}")
    counts = torch.bincount(support_labels.long(), minlength=n)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        present = sorted(set(support_labels.tolist()))
        raise ValueError(f"`support_labels` must give every class 0..{n - 1} at least one support image; class(es) "
                         f"{_short(empty)} have none (labels present: {_short(present)})")
    return n


def _short(values: list, limit: int = 10) -> str:
    """A list for a message: at most ``limit`` items, then how many more."""
    return str(values) if len(values) <= limit else f"[{', '.join(map(str, values[:limit]))}, ... {len(values) - limit} more]"


def class_layout(support_labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Support images grouped by class: ``index (N, K_max)`` of support image ids (each class's shots in support
    order, padded with its first shot) and ``valid (N, K_max)`` marking the real ones."""
    labels = support_labels.long()
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(labels, stable=True)                               # support ids grouped by class
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(labels), device=labels.device) - starts[labels[order]]
    k_max = int(counts.max())
    index = order[starts][:, None].repeat(1, k_max)                          # padding: the class's first shot
    index[labels[order], slot] = order
    valid = torch.arange(k_max, device=labels.device)[None] < counts[:, None]
    return index, valid


def _chunk_logits(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Logits of a chunk of queries. ``q (B, P, dk)``, ``w (B, P, dv)``, ``keys (N, L, dk)`` and ``values (N, L, dv)``:
    every position of every shot of each class (``L = K_max * M``), ``mask (N, 1, L)`` (``None``: no padding)
    -> ``(B, N)``.

    Each class is one attention "head" whose sequence of queries is every position of every query image: the
    softmax of ``scaled_dot_product_attention`` then runs per (class, query position) over that class's shots x
    positions, and its output is the query-aligned prototype. The fused kernel never stores the ``B*P x L`` weights
    (on CPU and CUDA it keeps only the output and a log-sum-exp per row for the backward pass)."""
    batch, positions, dk = q.shape
    queries = q.reshape(1, batch * positions, dk).expand(keys.shape[0], -1, -1)
    prototypes = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
    prototypes = rearrange(prototypes, "n (b p) d -> b p n d", b=batch)
    return -(prototypes - w[:, :, None]).pow(2).sum(-1).mean(1)


def cross_attention_logits(query_keys: torch.Tensor, query_values: torch.Tensor, support_keys: torch.Tensor,
                           support_values: torch.Tensor, support_labels: torch.Tensor, num_classes: int,
                           chunk_size: int | None = 16, return_attention: bool = False):
    """CrossTransformers logits, fast path.

    Args:
        query_keys: ``(Q, P, d_k)`` projected query positions (``P = H' * W'``).
        query_values: ``(Q, P, d_v)``.
        support_keys: ``(S, M, d_k)`` projected support positions (``M = H * W``).
        support_values: ``(S, M, d_v)``.
        support_labels: ``(S,)`` class of each support image in ``0..num_classes-1``, every class present.
        num_classes: ``N``.
        chunk_size: queries computed together; with more queries than this under autograd, each chunk is
            recomputed in the backward pass. ``None`` or 0: all at once without recomputation.
        return_attention: also return the attention weights ``(Q, P, S, M)`` (each class's weights over its own
            support positions sum to 1). They take ``Q * P * S * M`` floats.

    Returns:
        logits ``(Q, N)`` = minus the mean over query positions of the squared distance to the query-aligned
        prototype (and the attention weights when asked).
    """
    num_support, positions, dk = support_keys.shape
    scale = 1.0 / math.sqrt(dk)
    index, valid = class_layout(support_labels.to(support_keys.device), num_classes)
    keys = rearrange(support_keys[index], "n k m d -> n (k m) d")           # (N, K_max * M, d_k)
    values = rearrange(support_values[index], "n k m d -> n (k m) d")
    mask = None if bool(valid.all()) else valid.repeat_interleave(positions, dim=1)[:, None]   # (N, 1, K_max * M)
    step = chunk_size or max(query_keys.shape[0], 1)
    recompute = (torch.is_grad_enabled() and query_keys.shape[0] > step
                 and any(t.requires_grad for t in (query_keys, query_values, keys, values)))
    out = []
    for start in range(0, query_keys.shape[0], step):
        args = (query_keys[start:start + step], query_values[start:start + step], keys, values, mask, scale)
        out.append(checkpoint(_chunk_logits, *args, use_reentrant=False) if recompute else _chunk_logits(*args))
    logits = torch.cat(out) if out else query_keys.new_zeros(0, num_classes)
    if not return_attention:
        return logits
    return logits, cross_attention_weights(query_keys, support_keys, support_labels, num_classes)


def cross_attention_weights(query_keys: torch.Tensor, support_keys: torch.Tensor, support_labels: torch.Tensor,
                            num_classes: int) -> torch.Tensor:
    """Attention of every query position over every support position: ``(Q, P, S, M)``; for each query position the
    weights over the positions of one class's support images sum to 1."""
    num_support, positions, dk = support_keys.shape
    logits = torch.einsum("qpk,smk->qpsm", query_keys, support_keys) / math.sqrt(dk)
    weights = torch.empty_like(logits)
    for c in range(num_classes):
        idx = (support_labels == c).nonzero().flatten()
        block = logits[:, :, idx].flatten(2).softmax(-1)
        weights[:, :, idx] = block.view(*logits.shape[:2], len(idx), positions)
    return weights


def cross_attention_logits_reference(query_keys: torch.Tensor, query_values: torch.Tensor,
                                     support_keys: torch.Tensor, support_values: torch.Tensor,
                                     support_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CrossTransformers logits, one query and one class at a time (slow, obviously right). Same arguments and
    result as :func:`cross_attention_logits`."""
    dk = support_keys.shape[-1]
    rows = []
    for q in range(query_keys.shape[0]):
        row = []
        for c in range(num_classes):
            members = support_labels == c
            keys_c = support_keys[members].reshape(-1, dk)                  # every position of every shot of c
            values_c = support_values[members].reshape(-1, support_values.shape[-1])
            attention = (query_keys[q] @ keys_c.T / math.sqrt(dk)).softmax(dim=-1)   # (P, shots * M)
            prototype = attention @ values_c                                          # (P, d_v)
            row.append(-((prototype - query_values[q]) ** 2).sum(-1).mean())
        rows.append(torch.stack(row))
    return torch.stack(rows) if rows else query_keys.new_zeros(0, num_classes)


class CrossAttentionHead(nn.Module):
    """The CrossTransformers head on backbone feature maps.

    ``forward(query_features (Q, C, H', W'), support_features (S, C, H, W), support_labels (S,), num_classes)``
    -> logits ``(Q, N)``. One bias-free 1x1 projection makes keys and queries (``key_dim``), another makes support
    and query values (``value_dim``). ``implementation="reference"`` uses the per-query, per-class loop.
    """

    def __init__(self, in_channels: int, key_dim: int = 128, value_dim: int = 128, chunk_size: int | None = 16,
                 implementation: str = "fast"):
        super().__init__()
        if implementation not in ("fast", "reference"):
            raise ValueError(f"`implementation` must be 'fast' or 'reference', got {implementation!r}")
        self.key_proj = nn.Conv2d(in_channels, key_dim, 1, bias=False)     # shared by keys and queries
        self.value_proj = nn.Conv2d(in_channels, value_dim, 1, bias=False)  # shared by support and query values
        self.chunk_size, self.implementation = chunk_size, implementation
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, init: str = "small") -> None:
        """Initialise both projections (see :meth:`init_projection`)."""
        for proj in (self.key_proj, self.value_proj):
            self.init_projection(proj, init)

    @torch.no_grad()
    def init_projection(self, proj: nn.Conv2d, init: str = "small") -> None:
        """Initialise ``proj`` (``key_proj`` or ``value_proj``).

        ``"small"``: zero-mean normal weights with std ``1/sqrt(C)`` for the key projection and ``1/sqrt(C * d_v)``
        for the value projection (``C`` input channels). For unit-scale features the attention logits
        ``<k, q>/sqrt(d_k)`` then start with a standard deviation of about 1 (spread-out attention, gradients reach
        the key projection) and the distances are O(1) (a cross-entropy of about log N). ``"official"``: the released
        model's truncated normal, std 0.1 cut at 2 std, for both; with 512 channels its attention logits start with
        a standard deviation in the tens, so the softmax is one-hot from the first step."""
        if init not in HEAD_INITS:
            raise ValueError(f"`head_init` must be one of {HEAD_INITS}, got {init!r}")
        if proj is not self.key_proj and proj is not self.value_proj:
            raise ValueError("`proj` must be this head's key_proj or value_proj")
        if init == "official":
            nn.init.trunc_normal_(proj.weight, std=0.1, a=-0.2, b=0.2)
        else:
            fan = proj.in_channels * (1 if proj is self.key_proj else proj.out_channels)
            nn.init.normal_(proj.weight, std=fan ** -0.5)

    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` -> keys ``(B, H*W, key_dim)`` and values ``(B, H*W, value_dim)``."""
        keys = rearrange(self.key_proj(features), "b k h w -> b (h w) k")
        values = rearrange(self.value_proj(features), "b d h w -> b (h w) d")
        return keys, values

    def forward(self, query_features: torch.Tensor, support_features: torch.Tensor, support_labels: torch.Tensor,
                num_classes: int, return_attention: bool = False, support_projection=None):
        support_keys, support_values = support_projection or self.project(support_features)
        query_keys, query_values = self.project(query_features)
        if self.implementation == "reference":
            logits = cross_attention_logits_reference(query_keys, query_values, support_keys, support_values,
                                                      support_labels, num_classes)
            if return_attention:
                return logits, cross_attention_weights(query_keys, support_keys, support_labels, num_classes)
            return logits
        return cross_attention_logits(query_keys, query_values, support_keys, support_values, support_labels,
                                      num_classes, self.chunk_size, return_attention)


def prototype_logits(query_embeddings: torch.Tensor, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """ProtoNet: class prototypes are the means of their support embeddings; logits are minus the squared Euclidean
    distance. ``query_embeddings (Q, D)``, ``support_embeddings (S, D)``, ``support_labels (S,)`` -> ``(Q, N)``."""
    onehot = F.one_hot(support_labels.long(), num_classes).to(support_embeddings.dtype)       # (S, N)
    prototypes = (onehot.T @ support_embeddings) / onehot.sum(0)[:, None]                     # (N, D)
    return -(query_embeddings.pow(2).sum(-1, keepdim=True) - 2 * query_embeddings @ prototypes.T
             + prototypes.pow(2).sum(-1))


def prototype_logits_reference(query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ProtoNet logits class by class (slow, obviously right)."""
    prototypes = torch.stack([support_embeddings[support_labels == c].mean(0) for c in range(num_classes)])
    return -((query_embeddings[:, None] - prototypes[None]) ** 2).sum(-1)
