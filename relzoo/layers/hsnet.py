"""HSNet's layers (Min, Kang, Cho, "Hypercorrelation Squeeze for Few-Shot Segmentation", ICCV 2021).

* :func:`masked_features` multiplies support feature maps by the support mask resized bilinearly
  (``align_corners=True``, so the mask is soft at the boundary) to each map's size.
* :func:`correlation` / :func:`hypercorrelation`: cosine similarity of every query position with every support
  position, the epsilon added to the norm (``f / (||f|| + 1e-5)``), clamped at 0, taps of one pyramid level stacked
  as channels, query dims first: ``(B, taps, Ha, Wa, Hb, Wb)``.
* :class:`CenterPivotConv4d`: the 4D convolution whose kernel is non-zero only on the two 2D planes through its
  centre, computed as two biased 2D convolutions (one over the query dims, one over the support dims, the stride on
  the support dims only). :func:`center_pivot_conv4d_reference` is the same layer written as a dense 4D convolution
  with that kernel, one kernel offset at a time.
* :class:`HypercorrelationLearner`: the squeeze blocks per level (CP-conv4d, GroupNorm with 4 groups, ReLU; 16 -> 64
  -> 128 channels), mixing across levels (query dims upsampled bilinearly, ``align_corners=True``), the mean over the
  remaining support dims and the 2D decoder to two-class logits at twice the finest map's size. Unlike the official
  decoder, which assumes square maps, each side is doubled on its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["CenterPivotConv4d", "HypercorrelationLearner", "center_pivot_conv4d_reference", "correlation",
           "hypercorrelation", "masked_features", "shot_hypercorrelation", "upsample_query_dims"]

COSINE_EPS = 1e-5


def masked_features(features: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """``features``: maps ``(B, C, h, w)``; ``mask (B, H, W)`` in {0, 1}: each map times the mask resized bilinearly
    (``align_corners=True``) to its size."""
    mask = mask[:, None].to(features[0].dtype) if features else mask
    return [f * F.interpolate(mask, f.shape[-2:], mode="bilinear", align_corners=True) for f in features]


def correlation(query: torch.Tensor, support: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """``(B, C, Ha, Wa)`` x ``(B, C, Hb, Wb)`` -> ``(B, Ha, Wa, Hb, Wb)``: cosine similarity (``eps`` added to each
    norm) clamped at 0."""
    q = query / (query.norm(dim=1, keepdim=True) + eps)
    s = support / (support.norm(dim=1, keepdim=True) + eps)
    corr = torch.einsum("bcij,bckl->bijkl", q, s)
    return corr.clamp(min=0)


def hypercorrelation(query_features: list[torch.Tensor], support_features: list[torch.Tensor],
                     groups: list[int] | tuple[int, ...], eps: float = COSINE_EPS) -> list[torch.Tensor]:
    """Correlations of matching taps, grouped by pyramid level. ``groups`` gives the number of taps per level from
    the shallowest to the deepest (e.g. ResNet-50: ``(4, 6, 3)``); returns the levels deepest first, each
    ``(B, taps, Ha, Wa, Hb, Wb)`` (the official order: [layer4, layer3, layer2])."""
    if len(query_features) != len(support_features) or sum(groups) != len(query_features):
        raise ValueError(f"hypercorrelation needs as many query as support taps, {sum(groups)} in all (groups "
                         f"{tuple(groups)}), got {len(query_features)} and {len(support_features)}")
    levels, start = [], 0
    for size in groups:
        taps = [correlation(q, s, eps) for q, s in zip(query_features[start:start + size],
                                                          support_features[start:start + size])]
        levels.append(torch.stack(taps, dim=1))
        start += size
    return levels[::-1]


def shot_hypercorrelation(query_features: list[torch.Tensor], support_features: list[torch.Tensor],
                          groups: list[int] | tuple[int, ...], support_masks: torch.Tensor | None = None,
                          eps: float = COSINE_EPS) -> list[torch.Tensor]:
    """Hypercorrelation of ``B`` queries with their ``K`` shots each, the fast path of the K-shot model.

    ``query_features``: taps ``(B, C, h, w)``; ``support_features``: taps ``(B * K, C, h', w')`` (shot-minor);
    ``support_masks``: ``(B, K, H, W)`` in {0, 1} or ``None`` (unmasked). Returns the levels deepest first, each
    ``(B * K, taps, h, w, h', w')``, equal to :func:`hypercorrelation` of the queries repeated ``K`` times with the
    masked supports (:func:`masked_features`).

    Each query tap is normalised once for all shots, and each query is correlated with all its shots in one product.
    A support position where the resized mask is exactly 0 has a zero feature, hence a correlation of exactly 0 with
    every query position: those columns are left at 0 instead of being computed, so the work scales with the mask's
    area (the deepest levels of a small object cost a fraction of the dense product).
    """
    if len(query_features) != len(support_features) or sum(groups) != len(query_features):
        raise ValueError(f"hypercorrelation needs as many query as support taps, {sum(groups)} in all (groups "
                         f"{tuple(groups)}), got {len(query_features)} and {len(support_features)}")
    batch = query_features[0].shape[0]
    shots = support_features[0].shape[0] // batch
    if support_features[0].shape[0] != batch * shots:
        raise ValueError(f"support taps must hold B * K = {batch} * K maps, got {support_features[0].shape[0]}")
    if support_masks is not None and tuple(support_masks.shape[:2]) != (batch, shots):
        raise ValueError(f"`support_masks` must be (B, K, H, W) = ({batch}, {shots}, H, W), got "
                         f"{tuple(support_masks.shape)}")
    resized: dict[tuple[int, int], tuple[torch.Tensor, list[torch.Tensor] | None]] = {}

    def mask_at(size):  # the resized masks (B*K, 1, h', w') and, per query, the flat support columns they keep
        if size not in resized:
            if support_masks is None:
                resized[size] = (None, None)
            else:
                m = F.interpolate(support_masks.flatten(0, 1)[:, None].to(support_features[0].dtype), size,
                                  mode="bilinear", align_corners=True)
                keep = [torch.nonzero(m.view(batch, -1)[b] != 0).squeeze(1) for b in range(batch)]
                resized[size] = (m, keep)
        return resized[size]

    levels, start = [], 0
    for size in groups:
        ha, wa = query_features[start].shape[-2:]
        hb, wb = support_features[start].shape[-2:]
        mask, keep = mask_at((hb, wb))
        dense = keep is None or all(len(k) == shots * hb * wb for k in keep)
        # taps innermost: the first centre-pivot layer reads (B*K*Ha*Wa, taps, Hb, Wb) slices without a copy
        out = query_features[start].new_zeros(batch, ha * wa, size, shots * hb * wb) if not dense else None
        products = []
        for t, (q, s) in enumerate(zip(query_features[start:start + size], support_features[start:start + size])):
            ch = q.shape[1]
            if mask is not None:
                s = s * mask
            qn = (q / (q.norm(dim=1, keepdim=True) + eps)).flatten(2).transpose(1, 2)          # (B, HWq, C)
            sn = (s / (s.norm(dim=1, keepdim=True) + eps)).view(batch, shots, ch, hb * wb)
            sn = sn.transpose(1, 2).reshape(batch, ch, shots * hb * wb)                         # (B, C, K*HWs)
            if dense:
                products.append(torch.bmm(qn, sn).clamp_(min=0))
                continue
            for b in range(batch):
                if len(keep[b]):
                    out[b, :, t].index_copy_(1, keep[b], (qn[b] @ sn[b].index_select(1, keep[b])).clamp_(min=0))
        out = torch.stack(products, dim=2) if dense else out                                    # (B, HWq, taps, K*HWs)
        out = out.view(batch, ha, wa, size, shots, hb, wb).permute(0, 4, 3, 1, 2, 5, 6)
        levels.append(out.reshape(batch * shots, size, ha, wa, hb, wb) if shots > 1 else out.squeeze(1))
        start += size
    return levels[::-1]


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class CenterPivotConv4d(nn.Module):
    """4D convolution with a centre-pivot kernel on ``(B, C, Ha, Wa, Hb, Wb)`` (query dims, then support dims).

    ``conv1`` (``kernel_size``, stride 1, padding ``kernel_size // 2``) runs over the query dims at every
    ``stride``-th support position (indices 0, s, 2s, ...); ``conv2`` (``kernel_size``, ``stride``, same padding) runs
    over the support dims at every query position; the output is their sum, ``(B, out, Ha, Wa, ceil(Hb/s),
    ceil(Wb/s))``. Both have a bias. The support positions are chosen for each input's own size (the official layer
    caches them from the first input). ``conv1`` is not run at support positions whose input is all zero (outside the
    support mask, in the first layer) when no gradient w.r.t. the input is needed: its output there is its bias,
    exactly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"`kernel_size` must be odd (the kernel pivots on its centre), got {kernel_size}")
        self.stride = _pair(stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size, stride=self.stride, padding=kernel_size // 2,
                               bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 6:
            raise ValueError(f"CenterPivotConv4d expects (B, C, Ha, Wa, Hb, Wb), got shape {tuple(x.shape)}")
        b, _, ha, wa, hb, wb = x.shape
        sh, sw = self.stride
        pruned = rearrange(x[..., ::sh, ::sw], "b c i j k l -> (b k l) c i j")
        hs, ws = (hb - 1) // sh + 1, (wb - 1) // sw + 1
        # a support position whose input is all zero (outside the support mask, in the first layer) gives the bias
        # (only when no gradient w.r.t. the input is wanted: the correlations fed to the learner never need one)
        active = None if (x.requires_grad and torch.is_grad_enabled()) else pruned.flatten(1).ne(0).any(dim=1)
        if active is None or bool(active.all()):
            out1 = self.conv1(pruned)
        else:
            out1 = pruned.new_zeros(pruned.shape[0], self.conv1.out_channels, ha, wa)
            if self.conv1.bias is not None:
                out1 += self.conv1.bias[:, None, None]
            where = active.nonzero().squeeze(1)
            if not len(where) and torch.is_grad_enabled():
                where = where.new_zeros(1)   # run conv1 on one (zero) slice so that its weight takes part (DDP)
            if len(where):
                out1.index_copy_(0, where, self.conv1(pruned.index_select(0, where)))
        out1 = rearrange(out1, "(b k l) o i j -> b o i j k l", b=b, k=hs, l=ws)
        out2 = self.conv2(rearrange(x, "b c i j k l -> (b i j) c k l"))
        out2 = rearrange(out2, "(b i j) o k l -> b o i j k l", b=b, i=ha, j=wa)
        return out1 + out2

    def extra_repr(self) -> str:
        return f"support_stride={self.stride}"


def center_pivot_conv4d_reference(x: torch.Tensor, layer: CenterPivotConv4d) -> torch.Tensor:
    """``layer`` computed as a dense 4D convolution (zero padding ``k // 2`` on all four dims, stride ``(1, 1, sh,
    sw)``) with kernel ``K[o, c, i, j, m, n] = W1[o, c, i, j] [m = n = centre] + W2[o, c, m, n] [i = j = centre]``
    and bias ``b1 + b2``, summed one kernel offset at a time (slow, obviously right)."""
    w1, w2 = layer.conv1.weight, layer.conv2.weight
    out_ch, in_ch, k, _ = w1.shape
    c = k // 2
    kernel = x.new_zeros(out_ch, in_ch, k, k, k, k)
    kernel[:, :, :, :, c, c] += w1
    kernel[:, :, c, c, :, :] += w2
    sh, sw = layer.stride
    _, _, ha, wa, hb, wb = x.shape
    ho, wo = (hb - 1) // sh + 1, (wb - 1) // sw + 1
    padded = F.pad(x, (c,) * 8)
    out = x.new_zeros(x.shape[0], out_ch, ha, wa, ho, wo)
    for i in range(k):
        for j in range(k):
            for m in range(k):
                for n in range(k):
                    window = padded[:, :, i:i + ha, j:j + wa, m:m + (ho - 1) * sh + 1:sh, n:n + (wo - 1) * sw + 1:sw]
                    out += torch.einsum("bcijkl,oc->boijkl", window, kernel[:, :, i, j, m, n])
    for conv in (layer.conv1, layer.conv2):
        if conv.bias is not None:
            out = out + conv.bias[None, :, None, None, None, None]
    return out


def upsample_query_dims(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, Ha, Wa, Hb, Wb)`` -> ``(B, C, size[0], size[1], Hb, Wb)``: the query dims resized bilinearly
    (``align_corners=True``) at every support position (the official ``interpolate_support_dims``)."""
    b, ch, _, _, hb, wb = x.shape
    flat = rearrange(x, "b c i j k l -> (b k l) c i j")
    flat = F.interpolate(flat, size, mode="bilinear", align_corners=True)
    return rearrange(flat, "(b k l) c i j -> b c i j k l", b=b, k=hb, l=wb)


def _squeeze_block(in_channels: int, out_channels: list[int], kernels: list[int], strides: list[int],
                   groups: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out, k, s in zip(out_channels, kernels, strides):
        layers += [CenterPivotConv4d(in_channels, out, k, s), nn.GroupNorm(groups, out), nn.ReLU(inplace=True)]
        in_channels = out
    return nn.Sequential(*layers)


class HypercorrelationLearner(nn.Module):
    """The 4D squeeze-and-mix encoder and 2D decoder (official ``HPNLearner``; same module names, so official
    ``hpn_learner.*`` weights load as they are).

    ``in_channels``: taps per level, deepest first (ResNet-50 ``(3, 6, 4)``, ResNet-101 ``(3, 23, 4)``, VGG-16
    ``(1, 3, 3)``). ``forward([corr_deepest, corr_middle, corr_shallowest])`` -> logits ``(B, 2, 2*Ha, 2*Wa)`` with
    ``(Ha, Wa)`` the shallowest level's query size.
    """

    def __init__(self, in_channels: tuple[int, int, int] | list[int]):
        super().__init__()
        if len(in_channels) != 3 or any(int(c) < 1 for c in in_channels):
            raise ValueError(f"`in_channels` must be three positive tap counts (deepest level first), got "
                             f"{in_channels!r}")
        c4, c3, c2 = (int(c) for c in in_channels)
        width = [16, 64, 128]
        self.encoder_layer4 = _squeeze_block(c4, width, [3, 3, 3], [2, 2, 2])
        self.encoder_layer3 = _squeeze_block(c3, width, [5, 3, 3], [4, 2, 2])
        self.encoder_layer2 = _squeeze_block(c2, width, [5, 5, 3], [4, 4, 2])
        self.encoder_layer4to3 = _squeeze_block(128, [128] * 3, [3] * 3, [1] * 3)
        self.encoder_layer3to2 = _squeeze_block(128, [128] * 3, [3] * 3, [1] * 3)
        self.decoder1 = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(inplace=True))
        self.decoder2 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(64, 2, 3, padding=1))

    @staticmethod
    def _match_support(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Support dims of two levels agree for the usual backbones (both are ceil(H / 256) for ResNets); when a
        backbone's rounding makes them differ, the coarser level is resized to the finer one (bilinear,
        ``align_corners=True``)."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        b, ch, ha, wa = x.shape[:4]
        flat = rearrange(x, "b c i j k l -> (b i j) c k l")
        flat = F.interpolate(flat, size, mode="bilinear", align_corners=True)
        return rearrange(flat, "(b i j) c k l -> b c i j k l", b=b, i=ha, j=wa)

    def encode(self, correlations: list[torch.Tensor]) -> torch.Tensor:
        """``[corr4, corr3, corr2]`` -> mixed 4D features averaged over the support dims: ``(B, 128, Ha, Wa)``."""
        if len(correlations) != 3:
            raise ValueError(f"the learner takes three correlation levels (deepest first), got {len(correlations)}")
        sqz4 = self.encoder_layer4(correlations[0])
        sqz3 = self.encoder_layer3(correlations[1])
        sqz2 = self.encoder_layer2(correlations[2])
        mix43 = upsample_query_dims(sqz4, sqz3.shape[2:4])
        mix43 = self.encoder_layer4to3(self._match_support(mix43, sqz3.shape[-2:]) + sqz3)
        mix432 = upsample_query_dims(mix43, sqz2.shape[2:4])
        mix432 = self.encoder_layer3to2(self._match_support(mix432, sqz2.shape[-2:]) + sqz2)
        return mix432.mean(dim=(-2, -1))

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        x = self.decoder1(encoded)
        x = F.interpolate(x, (2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=True)
        return self.decoder2(x)

    def forward(self, correlations: list[torch.Tensor]) -> torch.Tensor:
        return self.decode(self.encode(correlations))
