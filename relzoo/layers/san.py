"""SAN relation operators (Zhao, Jia, Koltun, "Exploring Self-attention for Image Recognition", CVPR 2020).

Three operators, each with the official semantics of the authors' CUDA kernels:

* ``aggregation(x, weight)``: ``out[n, c, l] = sum_j weight[n, c mod Cw, j, l] * x~[n, c, nbr(l, j)]``.
  Channel ``c`` uses weight group ``c mod Cw`` (interleaved sharing, *not* contiguous blocks).
* ``subtraction2(a, b)``: ``out[n, c, j, l] = a[n, c, centre(l)] - b~[n, c, nbr(l, j)]``.
* ``subtraction(p)`` = ``subtraction2(p, p)``.

``x~`` is the input padded by ``dilation * (kernel_size - 1) // 2`` with reflection (``pad_mode="reflect"``, the
released models) or zeros (``pad_mode="zeros"``). Footprint positions are row-major, ``j = kh * k + kw``;
``l = h * W_out + w`` is the flattened output position.

Every operator has two paths:

* ``*_reference``: pad + ``F.unfold``, i.e. the authors' own pure-PyTorch check. It materialises a ``k*k``-times
  larger tensor and is kept only because it is obviously right.
* the default fast path: a loop over the ``k*k`` footprint taps on strided views of the padded input, inside a
  custom autograd function, so neither the forward nor the backward ever holds a ``k*k``-times unfolded copy of
  the input. Tests compare both paths in float64 (forward and gradients).

This module only imports torch and einops.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

PadMode = Literal["reflect", "zeros"]
_PAD_MODES = ("reflect", "zeros")


# ----------------------------------------------------------------------------------------------------------------
# geometry and validation
# ----------------------------------------------------------------------------------------------------------------
def footprint_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the map size at stride 1: ``(dilation * (kernel_size - 1) + 1) // 2``."""
    return (dilation * (kernel_size - 1) + 1) // 2


def output_size(size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Output length along one axis (the usual convolution formula with the footprint padding)."""
    pad = footprint_padding(kernel_size, dilation)
    return (size + 2 * pad - (dilation * (kernel_size - 1) + 1)) // stride + 1


def _check_geometry(kernel_size: int, stride: int, dilation: int, pad_mode: str) -> None:
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be odd (the footprint is centred on the pixel), got {kernel_size}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"`pad_mode` must be one of {_PAD_MODES}, got {pad_mode!r}")


def _check_map(name: str, t: torch.Tensor, kernel_size: int, dilation: int, pad_mode: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"`{name}` must be 4D (N, C, H, W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {t.dtype}")
    pad = footprint_padding(kernel_size, dilation)
    if pad_mode == "reflect" and min(t.shape[-2:]) <= pad:
        raise ValueError(
            f"`{name}` spatial size {tuple(t.shape[-2:])} is too small for reflection padding of {pad} "
            f"(kernel_size={kernel_size}, dilation={dilation}): each side must be at least {pad + 1}"
        )


def _pad(x: torch.Tensor, pad: int, pad_mode: str) -> torch.Tensor:
    if pad == 0:
        return x
    return F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad_mode == "reflect" else "constant")


def _taps(kernel_size: int, dilation: int) -> list[tuple[int, int]]:
    """Row-major footprint offsets ``(dh, dw)`` in the padded map, ``j = kh * k + kw``."""
    return [(kh * dilation, kw * dilation) for kh in range(kernel_size) for kw in range(kernel_size)]


def _window(t: torch.Tensor, dh: int, dw: int, out_hw: tuple[int, int], stride: int) -> torch.Tensor:
    """Strided view ``t[..., dh + stride * h, dw + stride * w]`` for every output position ``(h, w)``."""
    ho, wo = out_hw
    return t[..., dh : dh + stride * (ho - 1) + 1 : stride, dw : dw + stride * (wo - 1) + 1 : stride]


# ----------------------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------------------
def _check_aggregation(x, weight, kernel_size, stride, dilation, pad_mode) -> tuple[int, int]:
    _check_geometry(kernel_size, stride, dilation, pad_mode)
    _check_map("x", x, kernel_size, dilation, pad_mode)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"`weight` must be a torch.Tensor, got {type(weight).__name__}")
    n, c, h, w = x.shape
    ho, wo = output_size(h, kernel_size, stride, dilation), output_size(w, kernel_size, stride, dilation)
    k2 = kernel_size * kernel_size
    if weight.dim() != 4 or weight.shape[0] != n or weight.shape[2] != k2 or weight.shape[3] != ho * wo:
        raise ValueError(
            f"`weight` must have shape (N, Cw, kernel_size**2, H_out*W_out) = ({n}, Cw, {k2}, {ho * wo}), "
            f"got {tuple(weight.shape)}"
        )
    if c % weight.shape[1] != 0:
        raise ValueError(f"`x` channels ({c}) must be a multiple of `weight` channels Cw ({weight.shape[1]})")
    if not weight.is_floating_point():
        raise TypeError(f"`weight` must be a floating-point tensor, got dtype {weight.dtype}")
    return ho, wo


def _common_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast to the promoted dtype (mixed dtypes arise under autocast: bf16 matmul outputs next to fp32 norms)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def aggregation_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    pad_mode: PadMode = "reflect",
) -> torch.Tensor:
    """Aggregation by pad + unfold (slow, obviously right).

    Args:
        x: features ``(N, C, H, W)``.
        weight: attention weights ``(N, Cw, K, L)``, ``K = kernel_size**2``, ``L = H_out * W_out``, ``C % Cw == 0``.

    Returns:
        ``(N, C, H_out, W_out)``.
    """
    ho, wo = _check_aggregation(x, weight, kernel_size, stride, dilation, pad_mode)
    x, weight = _common_dtype(x, weight)
    pad = footprint_padding(kernel_size, dilation)
    cols = F.unfold(_pad(x, pad, pad_mode), kernel_size, dilation=dilation, stride=stride)  # (N, C*K, L)
    cw = weight.shape[1]
    cols = rearrange(cols, "n (g cw k) l -> n g cw k l", cw=cw, k=kernel_size**2)
    out = (cols * weight.unsqueeze(1)).sum(dim=3)  # weight broadcast over the channel groups g
    return rearrange(out, "n g cw (h w) -> n (g cw) h w", h=ho, w=wo)


class _AggregationFunction(torch.autograd.Function):
    """Tap-loop aggregation on an already padded input (padding is differentiated by autograd outside)."""

    @staticmethod
    def forward(ctx, x_pad, weight, kernel_size, stride, dilation, out_hw):
        n, c, hp, wp = x_pad.shape
        cw = weight.shape[1]
        ho, wo = out_hw
        xg = x_pad.view(n, c // cw, cw, hp, wp)  # channel c = g * Cw + (c mod Cw)
        wg = weight.view(n, 1, cw, kernel_size * kernel_size, ho, wo)
        out = x_pad.new_zeros(n, c // cw, cw, ho, wo)
        for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
            out.addcmul_(_window(xg, dh, dw, out_hw, stride), wg[:, :, :, j])
        ctx.save_for_backward(x_pad, weight)
        ctx.geometry = (kernel_size, stride, dilation, out_hw)
        return out.view(n, c, ho, wo)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x_pad, weight = ctx.saved_tensors
        kernel_size, stride, dilation, out_hw = ctx.geometry
        n, c, hp, wp = x_pad.shape
        cw = weight.shape[1]
        ho, wo = out_hw
        go = grad_out.contiguous().view(n, c // cw, cw, ho, wo)
        wg = weight.view(n, 1, cw, kernel_size * kernel_size, ho, wo)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = x_pad.new_zeros(n, c // cw, cw, hp, wp)
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_empty(n, cw, kernel_size * kernel_size, ho, wo)
        xg = x_pad.view(n, c // cw, cw, hp, wp)
        for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
            if grad_x is not None:
                _window(grad_x, dh, dw, out_hw, stride).addcmul_(go, wg[:, :, :, j])
            if grad_w is not None:
                torch.sum(go * _window(xg, dh, dw, out_hw, stride), dim=1, out=grad_w[:, :, j])
        if grad_x is not None:
            grad_x = grad_x.view(n, c, hp, wp)
        if grad_w is not None:
            grad_w = grad_w.view(weight.shape)
        return grad_x, grad_w, None, None, None, None


def aggregation(
    x: torch.Tensor,
    weight: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    pad_mode: PadMode = "reflect",
) -> torch.Tensor:
    """Aggregation, fast path: ``out[n, c, l] = sum_j weight[n, c mod Cw, j, l] * x~[n, c, nbr(l, j)]``.

    Never materialises the ``K``-times unfolded input; memory is that of ``x`` padded plus the output.

    Args:
        x: features ``(N, C, H, W)``, floating point.
        weight: attention weights ``(N, Cw, K, L)`` with ``K = kernel_size**2``, ``L = H_out * W_out``, ``C % Cw == 0``.
        kernel_size: odd footprint side ``k``.
        stride, dilation: as in a convolution.
        pad_mode: ``"reflect"`` (official models) or ``"zeros"``.

    Returns:
        ``(N, C, H_out, W_out)``.
    """
    ho, wo = _check_aggregation(x, weight, kernel_size, stride, dilation, pad_mode)
    x, weight = _common_dtype(x, weight)
    x_pad = _pad(x, footprint_padding(kernel_size, dilation), pad_mode).contiguous()
    return _AggregationFunction.apply(x_pad, weight.contiguous(), kernel_size, stride, dilation, (ho, wo))


# ----------------------------------------------------------------------------------------------------------------
# subtraction
# ----------------------------------------------------------------------------------------------------------------
def _check_subtraction(a, b, kernel_size, stride, dilation, pad_mode) -> tuple[int, int]:
    _check_geometry(kernel_size, stride, dilation, pad_mode)
    _check_map("a", a, kernel_size, dilation, pad_mode)
    _check_map("b", b, kernel_size, dilation, pad_mode)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    h, w = a.shape[-2:]
    return output_size(h, kernel_size, stride, dilation), output_size(w, kernel_size, stride, dilation)


def subtraction2_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    pad_mode: PadMode = "reflect",
) -> torch.Tensor:
    """``a[centre] - unfold(pad(b))`` (slow, obviously right). ``a, b: (N, C, H, W)`` -> ``(N, C, K, L)``."""
    ho, wo = _check_subtraction(a, b, kernel_size, stride, dilation, pad_mode)
    a, b = _common_dtype(a, b)
    n, c = a.shape[:2]
    centre = F.unfold(a, 1, stride=stride).view(n, c, 1, ho * wo)
    nbrs = F.unfold(_pad(b, footprint_padding(kernel_size, dilation), pad_mode), kernel_size,
                    dilation=dilation, stride=stride).view(n, c, kernel_size**2, ho * wo)
    return centre - nbrs


class _Subtraction2Function(torch.autograd.Function):
    """Tap-loop subtraction on an already padded ``b``; writes straight into the ``(N, C, K, L)`` output."""

    @staticmethod
    def forward(ctx, a, b_pad, kernel_size, stride, dilation, out_hw):
        n, c = a.shape[:2]
        ho, wo = out_hw
        centre = _window(a, 0, 0, out_hw, stride)
        out = a.new_empty(n, c, kernel_size * kernel_size, ho, wo)
        for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
            torch.sub(centre, _window(b_pad, dh, dw, out_hw, stride), out=out[:, :, j])
        ctx.geometry = (kernel_size, stride, dilation, out_hw, tuple(a.shape), tuple(b_pad.shape))
        return out.view(n, c, kernel_size * kernel_size, ho * wo)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        kernel_size, stride, dilation, out_hw, a_shape, b_shape = ctx.geometry
        n, c = a_shape[:2]
        g = grad_out.view(n, c, kernel_size * kernel_size, *out_hw)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = grad_out.new_zeros(a_shape)
            _window(grad_a, 0, 0, out_hw, stride).copy_(g.sum(dim=2))
        if ctx.needs_input_grad[1]:
            grad_b = grad_out.new_zeros(b_shape)
            for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
                _window(grad_b, dh, dw, out_hw, stride).sub_(g[:, :, j])
        return grad_a, grad_b, None, None, None, None


def subtraction2(
    a: torch.Tensor,
    b: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    pad_mode: PadMode = "reflect",
) -> torch.Tensor:
    """``out[n, c, j, l] = a[n, c, centre(l)] - b~[n, c, nbr(l, j)]``, fast path.

    Args:
        a, b: ``(N, C, H, W)`` of the same shape (mixed float dtypes are promoted).

    Returns:
        ``(N, C, K, L)`` with ``K = kernel_size**2`` and ``L = H_out * W_out``.
    """
    ho, wo = _check_subtraction(a, b, kernel_size, stride, dilation, pad_mode)
    a, b = _common_dtype(a, b)
    b_pad = _pad(b, footprint_padding(kernel_size, dilation), pad_mode)
    return _Subtraction2Function.apply(a, b_pad, kernel_size, stride, dilation, (ho, wo))


def subtraction_reference(p: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                          pad_mode: PadMode = "reflect") -> torch.Tensor:
    """``subtraction2_reference(p, p, ...)``: ``(N, C, H, W)`` -> ``(N, C, K, L)``."""
    return subtraction2_reference(p, p, kernel_size, stride, dilation, pad_mode)


def subtraction(p: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                pad_mode: PadMode = "reflect") -> torch.Tensor:
    """``subtraction2(p, p, ...)``, fast path: ``(N, C, H, W)`` -> ``(N, C, K, L)``."""
    return subtraction2(p, p, kernel_size, stride, dilation, pad_mode)


def unfold_footprint(x: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                     pad_mode: PadMode = "reflect") -> torch.Tensor:
    """Footprint features ``(N, C, H, W)`` -> ``(N, C, K, L)`` (``x~[n, c, nbr(l, j)]``), pad + unfold.

    The patchwise relation consumes exactly this tensor (its channel order ``c * K + j`` is the official one).
    """
    _check_geometry(kernel_size, stride, dilation, pad_mode)
    _check_map("x", x, kernel_size, dilation, pad_mode)
    n, c = x.shape[:2]
    cols = F.unfold(_pad(x, footprint_padding(kernel_size, dilation), pad_mode), kernel_size,
                    dilation=dilation, stride=stride)
    return cols.view(n, c, kernel_size**2, -1)


# ----------------------------------------------------------------------------------------------------------------
# 1x1 convolution as a batched matrix product
# ----------------------------------------------------------------------------------------------------------------
def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 kernel, as ``weight @ x`` per sample on contiguous NCHW input.

    On CPU this avoids oneDNN's layout reorders, which dominate for the thin and wide maps SAN uses (up to 4x).
    ``x: (N, C, H, W)``, ``weight: (O, C, 1, 1)`` -> ``(N, O, H, W)``. Other layouts fall back to ``F.conv2d``.
    """
    if not x.is_contiguous() or x.dim() != 4:
        return F.conv2d(x, weight, bias)
    n, c, h, w = x.shape
    wt = weight.view(1, weight.shape[0], c).expand(n, -1, -1)
    xs = x.view(n, c, h * w)
    out = torch.bmm(wt, xs) if bias is None else torch.baddbmm(bias.view(1, -1, 1), wt, xs)
    return out.view(n, -1, h, w)


class Conv1x1(nn.Conv2d):
    """``nn.Conv2d`` with a 1x1 kernel (same parameters and state dict) computed by :func:`conv1x1`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1(x, self.weight, self.bias)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel, or ``None`` while ``bn`` normalises with
    batch statistics (training, or no running statistics) and so is not an affine map."""
    if bn.training or bn.running_var is None:
        return None
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


# ----------------------------------------------------------------------------------------------------------------
# the self-attention module (SAM)
# ----------------------------------------------------------------------------------------------------------------
PAIRWISE_RELATIONS = ("subtraction", "summation", "concatenation", "hadamard", "dot_product")
PATCHWISE_RELATIONS = ("concatenation", "star_product", "clique_product")
OFFICIAL_RELATIONS = {"pairwise": "subtraction", "patchwise": "concatenation"}
IMPLEMENTATIONS = ("fast", "reference")


def check_attention_args(sa_type: str, relation: str | None, implementation: str, pad_mode: str) -> str:
    """Validate the self-attention choices; returns the relation (``None`` -> the released one)."""
    if sa_type not in OFFICIAL_RELATIONS:
        raise ValueError(f"`sa_type` must be one of {tuple(OFFICIAL_RELATIONS)}, got {sa_type!r}")
    allowed = PAIRWISE_RELATIONS if sa_type == "pairwise" else PATCHWISE_RELATIONS
    if relation is not None and relation not in allowed:
        raise ValueError(f"`relation` for sa_type={sa_type!r} must be one of {allowed} or None, got {relation!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"`pad_mode` must be one of {_PAD_MODES}, got {pad_mode!r}")
    return relation or OFFICIAL_RELATIONS[sa_type]


def position_grid(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Normalised coordinates ``(1, 2, H, W)``: channel 0 is x (``linspace(-1, 1, W)`` along width), 1 is y."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy]).unsqueeze(0)


def relation_channels(sa_type: str, relation: str, rel_planes: int, kernel_size: int) -> int:
    """Channels of the relation tensor that the weight network ``gamma`` consumes (position channels excluded)."""
    k2 = kernel_size * kernel_size
    return {
        ("pairwise", "subtraction"): rel_planes,
        ("pairwise", "summation"): rel_planes,
        ("pairwise", "hadamard"): rel_planes,
        ("pairwise", "concatenation"): 2 * rel_planes,
        ("pairwise", "dot_product"): 1,
        ("patchwise", "concatenation"): rel_planes * (k2 + 1),
        ("patchwise", "star_product"): k2,
        ("patchwise", "clique_product"): k2 * k2,
    }[(sa_type, relation)]


class SelfAttention2d(nn.Module):
    """SAN self-attention module: ``y_i = sum_{j in R(i)} alpha(x_R(i))_j * beta(x_j)`` over a ``k x k`` footprint.

    Parameter names follow the official ``SAM`` (``conv1 = phi``, ``conv2 = psi``, ``conv3 = beta``,
    ``conv_w = gamma``, ``conv_p`` = position encoding), so official weights load by key.

    * ``sa_type="pairwise"``: ``alpha = softmax_j(gamma([delta(phi(x_i), psi(x_j)), p_i - p_j]))`` with the relation
      ``delta`` one of ``PAIRWISE_RELATIONS``. ``"subtraction"`` is the released one; the others are paper-only.
    * ``sa_type="patchwise"``: ``alpha = gamma(delta(x_R(i)))`` reshaped to ``(Cw, K)``, unnormalised, with ``delta``
      one of ``PATCHWISE_RELATIONS``. ``"concatenation"`` is the released one; star/clique products are paper-only.

    Weight channels ``Cw = out_planes // share_planes``; output channel ``c`` uses weight group ``c mod Cw``.

    Input ``(N, in_planes, H, W)``; output ``(N, out_planes, H, W)``.
    """

    def __init__(self, sa_type: str, in_planes: int, rel_planes: int, out_planes: int, share_planes: int,
                 kernel_size: int = 3, relation: str | None = None, implementation: str = "fast",
                 pad_mode: PadMode = "reflect"):
        super().__init__()
        relation = check_attention_args(sa_type, relation, implementation, pad_mode)
        if out_planes % share_planes != 0:
            raise ValueError(f"`out_planes` ({out_planes}) must be divisible by `share_planes` ({share_planes})")
        _check_geometry(kernel_size, 1, 1, pad_mode)
        self.sa_type, self.relation, self.implementation, self.pad_mode = sa_type, relation, implementation, pad_mode
        self.kernel_size = kernel_size
        k2 = kernel_size * kernel_size
        cw = out_planes // share_planes
        self.conv1 = Conv1x1(in_planes, rel_planes)
        self.conv2 = Conv1x1(in_planes, rel_planes)
        self.conv3 = Conv1x1(in_planes, out_planes)
        c_rel = relation_channels(sa_type, relation, rel_planes, kernel_size)
        if sa_type == "pairwise":
            c_rel += 2  # position channels
            hidden, c_out = rel_planes, cw
            self.conv_p = Conv1x1(2, 2)
        else:
            hidden, c_out = cw, k2 * cw
        self.conv_w = nn.Sequential(
            nn.BatchNorm2d(c_rel), nn.ReLU(inplace=True), Conv1x1(c_rel, hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), Conv1x1(hidden, c_out),
        )

    def extra_repr(self) -> str:
        return (f"sa_type={self.sa_type}, relation={self.relation}, kernel_size={self.kernel_size}, "
                f"implementation={self.implementation}, pad_mode={self.pad_mode}")

    def _footprint(self, t: torch.Tensor) -> torch.Tensor:
        return unfold_footprint(t, self.kernel_size, pad_mode=self.pad_mode)  # (N, C, K, L)

    def _pairwise_relation(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``delta(phi(x_i), psi(x_j))`` as ``(N, C_rel, K, L)``."""
        if self.relation == "subtraction":
            sub2 = subtraction2 if self.implementation == "fast" else subtraction2_reference
            return sub2(x1, x2, self.kernel_size, pad_mode=self.pad_mode)
        n, c = x1.shape[:2]
        centre, nbrs = x1.reshape(n, c, 1, -1), self._footprint(x2)
        if self.relation == "summation":
            return centre + nbrs
        if self.relation == "hadamard":
            return centre * nbrs
        if self.relation == "dot_product":
            return torch.einsum("nckl,nckl->nkl", centre.expand_as(nbrs), nbrs).unsqueeze(1)
        return torch.cat([centre.expand_as(nbrs), nbrs], dim=1)  # concatenation

    def _position(self, x: torch.Tensor) -> torch.Tensor:
        """``p_i - p_j`` after the trainable linear map ``conv_p``: ``(1, 2, K, L)`` (reflection-padded like x)."""
        p = self.conv_p(position_grid(x.shape[2], x.shape[3], device=x.device, dtype=x.dtype))
        sub = subtraction if self.implementation == "fast" else subtraction_reference
        return sub(p, self.kernel_size, pad_mode=self.pad_mode)

    def _patchwise_relation(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``delta(x_R(i))`` as ``(N, C_rel, 1, L)``."""
        n, c = x1.shape[:2]
        if self.relation == "concatenation":  # [phi(x_i), [psi(x_j)]_j], footprint channels ordered c * K + j
            return torch.cat([x1.reshape(n, c, 1, -1), self._footprint(x2).reshape(n, -1, 1, x1.shape[2] * x1.shape[3])], 1)
        if self.relation == "star_product":  # [phi(x_i)^T psi(x_j)]_j
            rel = torch.einsum("ncl,nckl->nkl", x1.reshape(n, c, -1), self._footprint(x2))
        else:  # clique_product: [phi(x_j)^T psi(x_k)]_{j,k}
            rel = torch.einsum("ncjl,nckl->njkl", self._footprint(x1), self._footprint(x2)).flatten(1, 2)
        return rel.unsqueeze(2)

    def _patchwise_concat_hidden_eval(self, x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor,
                                      shift: torch.Tensor) -> torch.Tensor:
        """``conv_w[:3]`` (BN -> ReLU -> conv) of the patchwise concatenation, in eval mode, one tap at a time.

        Equal to ``conv_w[2](relu(conv_w[0](cat([x1, unfold(x2)]))))`` but never builds the ``K``-times unfolded
        ``x2``: BN with running statistics is a per-channel affine map, so each footprint tap is normalised,
        rectified and contracted with its slice of the conv weight on a strided view. ``scale, shift``: the BN as an
        affine map (:func:`bn_affine`). Returns ``(N, hidden, L)``.
        """
        n, c, h, w = x1.shape
        k2 = self.kernel_size * self.kernel_size
        weight = self.conv_w[2].weight.flatten(1)  # (hidden, C * (K + 1)); input channels [centre c] + [c * K + j]
        w_fp = weight[:, c:].view(-1, c, k2)
        s_fp, b_fp = scale[c:].view(c, k2, 1, 1), shift[c:].view(c, k2, 1, 1)
        # channel-major layout (C, N, H, W): every tap then contracts in a single (hidden, C) @ (C, N*L) product
        x1t, x2t = x1.transpose(0, 1).contiguous(), x2.transpose(0, 1).contiguous()
        centre = torch.addcmul(shift[:c, None, None, None], x1t, scale[:c, None, None, None]).relu_()
        out = torch.mm(weight[:, :c], centre.view(c, n * h * w))
        w_fp = w_fp.to(out.dtype)  # under autocast `out` is bf16 and in-place ops are not cast for us
        x2_pad = _pad(x2t, footprint_padding(self.kernel_size), self.pad_mode)
        for j, (dh, dw) in enumerate(_taps(self.kernel_size, 1)):
            tap = torch.addcmul(b_fp[:, j, None], _window(x2_pad, dh, dw, (h, w), 1), s_fp[:, j, None]).relu_()
            out.addmm_(w_fp[:, :, j], tap.reshape(c, n * h * w).to(out.dtype))
        return out.view(-1, n, h * w).transpose(0, 1)

    def _patchwise_weight(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Unnormalised patchwise weights ``(N, Cw, K, L)``."""
        n, _, h, w = x1.shape
        k2 = self.kernel_size * self.kernel_size
        affine = bn_affine(self.conv_w[0])
        if self.relation == "concatenation" and self.implementation == "fast" and affine is not None:
            hidden = self._patchwise_concat_hidden_eval(x1, x2, *affine).unsqueeze(2)  # (N, hidden, 1, L)
            return self.conv_w[3:](hidden).view(n, -1, k2, h * w)
        return self.conv_w(self._patchwise_relation(x1, x2)).view(n, -1, k2, h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` -> ``(N, out_planes, H, W)``."""
        n = x.shape[0]
        x1, x2, x3 = self.conv1(x), self.conv2(x), self.conv3(x)
        if self.sa_type == "pairwise":
            rel = self._pairwise_relation(x1, x2)
            pos = self._position(x).expand(n, -1, -1, -1)
            weight = self.conv_w(torch.cat([rel, pos], dim=1)).softmax(dim=-2)  # (N, Cw, K, L), sums to 1 over K
        else:
            weight = self._patchwise_weight(x1, x2)
        agg = aggregation if self.implementation == "fast" else aggregation_reference
        return agg(x3, weight, self.kernel_size, pad_mode=self.pad_mode)
