"""SAN relation operators (Zhao, Jia, Koltun, "Exploring Self-attention for Image Recognition", CVPR 2020): the
functions and custom operators; the self-attention module that uses them is in :mod:`relzoo.layers.san`.

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

The released relations (pairwise subtraction, patchwise concatenation) also run whole, weight network included, as
fused operators:

* on the CPU, through the compiled kernels of :mod:`relzoo.layers.san_native` (``relzoo/csrc``): in inference
  (:func:`pairwise_subtraction_attention_eval`, :func:`patchwise_concat_attention_eval`) and in training with batch
  statistics in the weight network's BatchNorms (:func:`pairwise_subtraction_attention_train`,
  :func:`patchwise_concat_attention_train`: streaming statistics, the relation never held, a backward pass that
  recomputes it segment by segment);
* elsewhere (CUDA, bf16 autocast, kernels not built), inference runs the PyTorch fused paths below (the pairwise
  weight network and the softmax one footprint row at a time with an online softmax, the patchwise weight network
  one tap at a time) and training the tap-loop operators.

Tracing and scripting: the operators are ``torch.fx`` leaf functions (``torch.fx.wrap``), so a traced graph calls
them (tensor-dependent checks and branches run at call time, BatchNorm buffers stay graph inputs), and TorchScript
compiles them: under ``torch.jit.script`` the custom autograd functions (not scriptable) are replaced by the
pad+unfold computation and the argument checks are skipped.

This module only imports torch.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .san_native import pair_eval as _native_pair_eval
from .san_native import pair_train_backward as _native_pair_train_backward
from .san_native import pair_train_forward as _native_pair_train_forward
from .san_native import patch_eval as _native_patch_eval
from .san_native import patch_train_backward as _native_patch_train_backward
from .san_native import patch_train_forward as _native_patch_train_forward
from .san_native import usable as _native_usable

__all__ = ["footprint_padding", "output_size", "aggregation_reference", "aggregation", "subtraction2_reference", "subtraction2", "subtraction_reference", "subtraction", "unfold_footprint", "conv1x1", "Conv1x1", "bn_scale_shift", "position_grid", "pairwise_subtraction_attention_eval", "patchwise_concat_hidden_eval",
           "pairwise_subtraction_attention_train", "update_running_stats", "patchwise_blocks", "bn0_blocks",
           "official_bn0_order", "patchwise_concat_attention_eval", "patchwise_concat_attention_train"]

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


def _check_geometry(kernel_size, stride, dilation, pad_mode) -> None:
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be odd (the footprint is centred on the pixel), got {kernel_size}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"`pad_mode` must be one of {_PAD_MODES}, got {pad_mode!r}")


def _check_map(name: str, t, kernel_size: int, dilation: int, pad_mode: str) -> None:
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
    """Pad the last two dims by ``pad`` on every side (reflection or zeros)."""
    if pad == 0:
        return x
    if x.numel() == 0:  # an empty batch (F.pad's reflection refuses empty non-batch dims)
        shape = list(x.shape)
        shape[-2], shape[-1] = shape[-2] + 2 * pad, shape[-1] + 2 * pad
        return x.new_zeros(shape)
    return F.pad(x, [pad, pad, pad, pad], mode="reflect" if pad_mode == "reflect" else "constant")


def _taps(kernel_size: int, dilation: int) -> list[tuple[int, int]]:
    """Row-major footprint offsets ``(dh, dw)`` in the padded map, ``j = kh * k + kw``."""
    taps: list[tuple[int, int]] = []
    for kh in range(kernel_size):
        for kw in range(kernel_size):
            taps.append((kh * dilation, kw * dilation))
    return taps


def _window(t: torch.Tensor, dh: int, dw: int, ho: int, wo: int, stride: int) -> torch.Tensor:
    """Strided view ``t[..., dh + stride * h, dw + stride * w]`` for every output position ``(h, w)``."""
    return t[..., dh : dh + stride * (ho - 1) + 1 : stride, dw : dw + stride * (wo - 1) + 1 : stride]


def _common_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast to the promoted dtype (mixed dtypes arise under autocast: bf16 matmul outputs next to fp32 norms)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


# ----------------------------------------------------------------------------------------------------------------
# pad + unfold computations (the references; also what TorchScript compiles)
# ----------------------------------------------------------------------------------------------------------------
def _unfold(x: torch.Tensor, kernel_size: int, stride: int, dilation: int, pad_mode: str) -> torch.Tensor:
    """``x~[n, c, nbr(l, j)]`` as ``(N, C, K, L)``; channel-major like ``F.unfold`` (index ``c * K + j``)."""
    n, c = x.shape[0], x.shape[1]
    cols = F.unfold(_pad(x, footprint_padding(kernel_size, dilation), pad_mode), [kernel_size, kernel_size],
                    dilation=[dilation, dilation], stride=[stride, stride])
    return cols.view(n, c, kernel_size * kernel_size, cols.shape[-1])


def _aggregation_unfold(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int, dilation: int,
                        pad_mode: str) -> torch.Tensor:
    n, c, h, w = x.shape
    ho, wo = output_size(h, kernel_size, stride, dilation), output_size(w, kernel_size, stride, dilation)
    cw = weight.shape[1]
    cols = _unfold(x, kernel_size, stride, dilation, pad_mode)  # (N, C, K, L), C = G * Cw (c = g * Cw + c mod Cw)
    cols = cols.view(n, c // cw, cw, kernel_size * kernel_size, ho * wo)
    out = (cols * weight.unsqueeze(1)).sum(dim=3)  # weight (N, 1, Cw, K, L) broadcast over the groups g
    return out.view(n, c, ho, wo)


def _subtraction2_unfold(a: torch.Tensor, b: torch.Tensor, kernel_size: int, stride: int, dilation: int,
                         pad_mode: str) -> torch.Tensor:
    n, c = a.shape[0], a.shape[1]
    centre = F.unfold(a, [1, 1], stride=[stride, stride])
    centre = centre.view(n, c, 1, centre.shape[-1])
    return centre - _unfold(b, kernel_size, stride, dilation, pad_mode)


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


def aggregation_reference(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int = 1,
                          dilation: int = 1, pad_mode: str = "reflect") -> torch.Tensor:
    """Aggregation by pad + unfold (slow, obviously right).

    Args:
        x: features ``(N, C, H, W)``.
        weight: attention weights ``(N, Cw, K, L)``, ``K = kernel_size**2``, ``L = H_out * W_out``, ``C % Cw == 0``.

    Returns:
        ``(N, C, H_out, W_out)``.
    """
    if torch.jit.is_scripting():
        return _aggregation_unfold(x, weight.to(x.dtype), kernel_size, stride, dilation, pad_mode)
    _check_aggregation(x, weight, kernel_size, stride, dilation, pad_mode)
    x, weight = _common_dtype(x, weight)
    return _aggregation_unfold(x, weight, kernel_size, stride, dilation, pad_mode)


def _aggregation_forward(x_pad: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int, dilation: int,
                         ho: int, wo: int) -> torch.Tensor:
    """Tap-loop aggregation on an already padded input (padding is differentiated by autograd outside)."""
    n, c, hp, wp = x_pad.shape
    cw = weight.shape[1]
    xg = x_pad.view(n, c // cw, cw, hp, wp)  # channel c = g * Cw + (c mod Cw)
    wg = weight.view(n, 1, cw, kernel_size * kernel_size, ho, wo)
    out = x_pad.new_zeros(n, c // cw, cw, ho, wo)
    for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
        out.addcmul_(_window(xg, dh, dw, ho, wo, stride), wg[:, :, :, j])
    return out.view(n, c, ho, wo)


def _aggregation_backward(grad_out: torch.Tensor, x_pad: torch.Tensor, weight: torch.Tensor, kernel_size: int,
                          stride: int, dilation: int, ho: int, wo: int, need_x: bool,
                          need_w: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_aggregation_forward` for ``x_pad`` and ``weight`` (empty tensors where not needed)."""
    n, c, hp, wp = x_pad.shape
    cw = weight.shape[1]
    go = grad_out.contiguous().view(n, c // cw, cw, ho, wo)
    wg = weight.view(n, 1, cw, kernel_size * kernel_size, ho, wo)
    grad_x = x_pad.new_zeros(n, c // cw, cw, hp, wp) if need_x else x_pad.new_empty(0)
    grad_w = weight.new_empty(n, cw, kernel_size * kernel_size, ho, wo) if need_w else weight.new_empty(0)
    xg = x_pad.view(n, c // cw, cw, hp, wp)
    for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
        if need_x:
            _window(grad_x, dh, dw, ho, wo, stride).addcmul_(go, wg[:, :, :, j])
        if need_w:
            torch.sum(go * _window(xg, dh, dw, ho, wo, stride), dim=1, out=grad_w[:, :, j])
    return (grad_x.view(n, c, hp, wp) if need_x else grad_x), (grad_w.view(weight.shape) if need_w else grad_w)


# torch.library custom operators: torch.compile, torch.export and jit.trace see one opaque node per call instead of
# unrolling the tap loops (which made compiling a SAN take minutes); shape functions keep them traceable.
_aggregation_op = torch.library.custom_op("relzoo::san_aggregation", _aggregation_forward, mutates_args=())
_aggregation_backward_op = torch.library.custom_op("relzoo::san_aggregation_backward", _aggregation_backward,
                                                   mutates_args=())


@_aggregation_op.register_fake
def _(x_pad, weight, kernel_size, stride, dilation, ho, wo):
    return x_pad.new_empty(x_pad.shape[0], x_pad.shape[1], ho, wo)


@_aggregation_backward_op.register_fake
def _(grad_out, x_pad, weight, kernel_size, stride, dilation, ho, wo, need_x, need_w):
    return (x_pad.new_empty(x_pad.shape) if need_x else x_pad.new_empty(0),
            weight.new_empty(weight.shape) if need_w else weight.new_empty(0))


def _aggregation_setup_context(ctx, inputs, output):
    x_pad, weight, kernel_size, stride, dilation, ho, wo = inputs
    ctx.save_for_backward(x_pad, weight)
    ctx.geometry = (kernel_size, stride, dilation, ho, wo)


def _aggregation_grad(ctx, grad_out):
    x_pad, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x, grad_w = _aggregation_backward_op(grad_out, x_pad, weight, *ctx.geometry, need_x, need_w)
    return (grad_x if need_x else None), (grad_w if need_w else None), None, None, None, None, None


_aggregation_op.register_autograd(_aggregation_grad, setup_context=_aggregation_setup_context)


def aggregation(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                pad_mode: str = "reflect") -> torch.Tensor:
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
    if torch.jit.is_scripting():
        return _aggregation_unfold(x, weight.to(x.dtype), kernel_size, stride, dilation, pad_mode)
    ho, wo = _check_aggregation(x, weight, kernel_size, stride, dilation, pad_mode)
    x, weight = _common_dtype(x, weight)
    x_pad = _pad(x, footprint_padding(kernel_size, dilation), pad_mode).contiguous()
    return _aggregation_op(x_pad, weight.contiguous(), kernel_size, stride, dilation, ho, wo)


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


def subtraction2_reference(a: torch.Tensor, b: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                           pad_mode: str = "reflect") -> torch.Tensor:
    """``a[centre] - unfold(pad(b))`` (slow, obviously right). ``a, b: (N, C, H, W)`` -> ``(N, C, K, L)``."""
    if torch.jit.is_scripting():
        return _subtraction2_unfold(a, b.to(a.dtype), kernel_size, stride, dilation, pad_mode)
    _check_subtraction(a, b, kernel_size, stride, dilation, pad_mode)
    a, b = _common_dtype(a, b)
    return _subtraction2_unfold(a, b, kernel_size, stride, dilation, pad_mode)


def _subtraction2_forward(a: torch.Tensor, b_pad: torch.Tensor, kernel_size: int, stride: int, dilation: int,
                          ho: int, wo: int) -> torch.Tensor:
    """Tap-loop subtraction on an already padded ``b``; writes straight into the ``(N, C, K, L)`` output."""
    n, c = a.shape[0], a.shape[1]
    centre = _window(a, 0, 0, ho, wo, stride)
    out = a.new_empty(n, c, kernel_size * kernel_size, ho, wo)
    for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
        torch.sub(centre, _window(b_pad, dh, dw, ho, wo, stride), out=out[:, :, j])
    return out.view(n, c, kernel_size * kernel_size, ho * wo)


def _subtraction2_backward(grad_out: torch.Tensor, a_shape: list[int], b_shape: list[int], kernel_size: int,
                           stride: int, dilation: int, ho: int, wo: int, need_a: bool,
                           need_b: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_subtraction2_forward` for ``a`` and ``b_pad`` (empty tensors where not needed)."""
    n, c = a_shape[0], a_shape[1]
    g = grad_out.reshape(n, c, kernel_size * kernel_size, ho, wo)
    grad_a = grad_out.new_zeros(a_shape) if need_a else grad_out.new_empty(0)
    grad_b = grad_out.new_zeros(b_shape) if need_b else grad_out.new_empty(0)
    if need_a:
        _window(grad_a, 0, 0, ho, wo, stride).copy_(g.sum(dim=2))
    if need_b:
        for j, (dh, dw) in enumerate(_taps(kernel_size, dilation)):
            _window(grad_b, dh, dw, ho, wo, stride).sub_(g[:, :, j])
    return grad_a, grad_b


_subtraction2_op = torch.library.custom_op("relzoo::san_subtraction2", _subtraction2_forward, mutates_args=())
_subtraction2_backward_op = torch.library.custom_op("relzoo::san_subtraction2_backward", _subtraction2_backward,
                                                    mutates_args=())


@_subtraction2_op.register_fake
def _(a, b_pad, kernel_size, stride, dilation, ho, wo):
    return a.new_empty(a.shape[0], a.shape[1], kernel_size * kernel_size, ho * wo)


@_subtraction2_backward_op.register_fake
def _(grad_out, a_shape, b_shape, kernel_size, stride, dilation, ho, wo, need_a, need_b):
    return (grad_out.new_empty(a_shape) if need_a else grad_out.new_empty(0),
            grad_out.new_empty(b_shape) if need_b else grad_out.new_empty(0))


def _subtraction2_setup_context(ctx, inputs, output):
    a, b_pad, kernel_size, stride, dilation, ho, wo = inputs
    ctx.shapes = (list(a.shape), list(b_pad.shape))  # the backward needs shapes only: no tensor is kept alive
    ctx.geometry = (kernel_size, stride, dilation, ho, wo)


def _subtraction2_grad(ctx, grad_out):
    need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_a, grad_b = _subtraction2_backward_op(grad_out, *ctx.shapes, *ctx.geometry, need_a, need_b)
    return (grad_a if need_a else None), (grad_b if need_b else None), None, None, None, None, None


_subtraction2_op.register_autograd(_subtraction2_grad, setup_context=_subtraction2_setup_context)


def subtraction2(a: torch.Tensor, b: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                 pad_mode: str = "reflect") -> torch.Tensor:
    """``out[n, c, j, l] = a[n, c, centre(l)] - b~[n, c, nbr(l, j)]``, fast path.

    Args:
        a, b: ``(N, C, H, W)`` of the same shape (mixed float dtypes are promoted).

    Returns:
        ``(N, C, K, L)`` with ``K = kernel_size**2`` and ``L = H_out * W_out``.
    """
    if torch.jit.is_scripting():
        return _subtraction2_unfold(a, b.to(a.dtype), kernel_size, stride, dilation, pad_mode)
    ho, wo = _check_subtraction(a, b, kernel_size, stride, dilation, pad_mode)
    a, b = _common_dtype(a, b)
    b_pad = _pad(b, footprint_padding(kernel_size, dilation), pad_mode).contiguous()
    return _subtraction2_op(a.contiguous(), b_pad, kernel_size, stride, dilation, ho, wo)


def subtraction_reference(p: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                          pad_mode: str = "reflect") -> torch.Tensor:
    """``subtraction2_reference(p, p, ...)``: ``(N, C, H, W)`` -> ``(N, C, K, L)``."""
    return subtraction2_reference(p, p, kernel_size, stride, dilation, pad_mode)


def subtraction(p: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                pad_mode: str = "reflect") -> torch.Tensor:
    """``subtraction2(p, p, ...)``, fast path: ``(N, C, H, W)`` -> ``(N, C, K, L)``."""
    return subtraction2(p, p, kernel_size, stride, dilation, pad_mode)


def unfold_footprint(x: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1,
                     pad_mode: str = "reflect") -> torch.Tensor:
    """Footprint features ``(N, C, H, W)`` -> ``(N, C, K, L)`` (``x~[n, c, nbr(l, j)]``), pad + unfold.

    The patchwise relation consumes exactly this tensor (its channel order ``c * K + j`` is the official one).
    """
    if not torch.jit.is_scripting():
        _check_geometry(kernel_size, stride, dilation, pad_mode)
        _check_map("x", x, kernel_size, dilation, pad_mode)
    return _unfold(x, kernel_size, stride, dilation, pad_mode)


# ----------------------------------------------------------------------------------------------------------------
# 1x1 convolution as a batched matrix product, BatchNorm as an affine map
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
    if bias is None:
        out = torch.bmm(wt, xs)
    else:
        out = torch.baddbmm(bias.view(1, -1, 1), wt, xs)
    return out.view(n, weight.shape[0], h, w)


class Conv1x1(nn.Conv2d):
    """``nn.Conv2d`` with a 1x1 kernel (same parameters and state dict) computed by :func:`conv1x1`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1(x, self.weight, self.bias)


def bn_scale_shift(weight: torch.Tensor | None, bias: torch.Tensor | None, running_mean: torch.Tensor | None,
                   running_var: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``batch_norm_eval(x) == x * scale + shift`` per channel, from BatchNorm's parameters
    and running statistics (which must exist; the stem passes batch statistics)."""
    assert running_mean is not None and running_var is not None
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def update_running_stats(running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                         num_batches_tracked: torch.Tensor | None, momentum: float | None, mean: torch.Tensor,
                         var: torch.Tensor, count: int) -> None:
    """Update BatchNorm running statistics in place as ``nn.BatchNorm2d`` does in training: ``num_batches_tracked``
    + 1, then ``running = (1 - f) * running + f * batch`` with ``f = momentum`` (or ``1 / num_batches_tracked`` when
    ``momentum`` is None), the variance unbiased (``var * count / (count - 1)``). ``var`` is the biased variance."""
    if running_mean is None or running_var is None:
        return
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        if momentum is None:
            assert num_batches_tracked is not None
            factor = 1.0 / num_batches_tracked.item()
        else:
            factor = momentum
        unbiased = var.detach() * (count / max(count - 1, 1))
        running_mean.mul_(1 - factor).add_(mean.detach().to(running_mean.dtype), alpha=factor)
        running_var.mul_(1 - factor).add_(unbiased.to(running_var.dtype), alpha=factor)


# ----------------------------------------------------------------------------------------------------------------
# fused inference paths of the self-attention module
# ----------------------------------------------------------------------------------------------------------------
def position_grid(height: int, width: int, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Normalised coordinates ``(1, 2, H, W)``: channel 0 is x (``linspace(-1, 1, W)`` along width), 1 is y."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy]).unsqueeze(0)


def _pairwise_attention_eval(
    x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, rel_planes: int, pos_weight: torch.Tensor,
    pos_bias: torch.Tensor, bn0: list[torch.Tensor], eps0: float, w1: torch.Tensor,
    bn3: list[torch.Tensor], eps3: float, w2: torch.Tensor, b2: torch.Tensor, kernel_size: int, pad_mode: str,
    chunk_bytes: int = 4 << 20,
) -> torch.Tensor:
    """Implementation of :func:`pairwise_subtraction_attention_eval` (plain torch; TorchScript compiles it)."""
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    k = kernel_size
    cr, cw = rel_planes, w2.shape[0]
    s0, t0 = bn_scale_shift(bn0[0], bn0[1], bn0[2], bn0[3], eps0)
    s3, t3 = bn_scale_shift(bn3[0], bn3[1], bn3[2], bn3[3], eps3)
    if not torch.jit.is_scripting():
        if _native_ok(x, qkv_weight, qkv_bias, pos_weight, pos_bias, w1, w2, b2, s0, t0, s3, t3):
            return _pairwise_attention_eval_native(x, qkv_weight, qkv_bias, cr, pos_weight, pos_bias, s0, t0, w1, s3,
                                                   t3, w2, b2, k, pad_mode)
    a, b, v = _pairwise_eval_inputs(x, qkv_weight, qkv_bias, cr, s0[:cr], t0[:cr], cw, kernel_size, pad_mode)
    dtype = a.dtype  # bf16 under autocast: keep every tensor in it
    s0, t0, s3, t3 = s0.to(dtype), t0.to(dtype), s3.to(dtype), t3.to(dtype)
    p = conv1x1(position_grid(h, w, x.device, dtype), pos_weight.to(dtype), pos_bias.to(dtype))
    p_pad = _pad(p, footprint_padding(k), pad_mode)[0]
    p = p[0]
    w1 = w1.to(dtype).view(cr, cr + 2) * s3[:, None]  # BN3 folded into W1
    w1_rel, w1_pos = w1[:, :cr], w1[:, cr:]
    w2 = w2.to(dtype).view(cw, cr)
    b2 = b2.to(dtype).unsqueeze(1)
    groups, cm = v.shape[0], v.shape[0] * cw

    acc = torch.zeros(groups, cw, n, h, w, device=x.device, dtype=dtype)
    running_max = torch.empty(0, device=x.device, dtype=dtype)
    running_sum = torch.empty(0, device=x.device, dtype=dtype)
    # The weight network runs on `chunk` taps at a time (about `chunk_bytes` of activations): one tap on large maps,
    # the whole footprint on small ones, where per-op overhead dominates. The softmax advances one block of taps at a
    # time: a footprint row, or the chunk when that is longer (a single exact softmax when the chunk is everything).
    nl, k2 = n * h * w, k * k
    chunk = max(1, min(k2, chunk_bytes // max(1, 2 * cr * nl * a.element_size())))
    block = chunk if chunk >= k else k
    rel = torch.empty(chunk, cr, n, h, w, device=x.device, dtype=dtype)
    hidden = torch.empty(chunk, cr, nl, device=x.device, dtype=dtype)
    logits = torch.empty(block, cw, nl, device=x.device, dtype=dtype)
    pos = torch.empty(2, block, h, w, device=x.device, dtype=dtype)
    w1_rel = w1_rel.unsqueeze(0).expand(chunk, -1, -1)
    w2 = w2.unsqueeze(0).expand(chunk, -1, -1)
    for j0 in range(0, k2, block):
        jb = min(block, k2 - j0)
        for t in range(jb):
            torch.sub(p, _window(p_pad, (j0 + t) // k, (j0 + t) % k, h, w, 1), out=pos[:, t])
        pos_hidden = torch.addcmul(t0[cr:, None, None, None], pos[:, :jb], s0[cr:, None, None, None]).relu_()
        pos_term = torch.addmm(t3.unsqueeze(1), w1_pos, pos_hidden.reshape(2, jb * h * w))
        pos_term = pos_term.view(cr, jb, 1, h * w).permute(1, 0, 2, 3)  # (taps, C_rel, 1, L): same for all samples
        for c0 in range(0, jb, chunk):
            c = min(chunk, jb - c0)
            for t in range(c):
                j = j0 + c0 + t
                torch.sub(a, _window(b, j // k, j % k, h, w, 1), out=rel[t])
            rel_c = rel[:c].relu_().view(c, cr, nl)
            hidden_c = torch.bmm(w1_rel[:c], rel_c, out=hidden[:c])
            hidden_c.view(c, cr, n, h * w).add_(pos_term[c0 : c0 + c]).relu_()
            torch.baddbmm(b2.unsqueeze(0), w2[:c], hidden_c, out=logits[c0 : c0 + c])
        weights = logits[:jb].view(jb, cw, n, h, w)
        block_max = weights.amax(dim=0)
        if j0 == 0:
            running_max = block_max
            weights.sub_(running_max).exp_()
            running_sum = weights.sum(dim=0)
        else:
            new_max = torch.maximum(running_max, block_max)
            rescale = torch.exp(running_max - new_max)
            running_max = new_max
            acc.mul_(rescale)
            weights.sub_(running_max).exp_()
            running_sum = torch.addcmul(weights.sum(dim=0), running_sum, rescale)
        for t in range(jb):
            acc.addcmul_(_window(v, (j0 + t) // k, (j0 + t) % k, h, w, 1), weights[t])
    # normalise straight into an NCHW output (channel c = g * Cw + c mod Cw)
    out = torch.empty(n, cm, h, w, device=x.device, dtype=dtype)
    torch.div(acc, running_sum, out=out.transpose(0, 1).view(groups, cw, n, h, w))
    return out


@torch.jit.unused
def _native_ok(*tensors: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels take these tensors (see :func:`relzoo.layers.san_native.usable`)."""
    return _native_usable(*tensors)


@torch.jit.unused
def _pairwise_attention_eval_native(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, cr: int,
                                    pos_weight: torch.Tensor, pos_bias: torch.Tensor, s0: torch.Tensor,
                                    t0: torch.Tensor, w1: torch.Tensor, s3: torch.Tensor, t3: torch.Tensor,
                                    w2: torch.Tensor, b2: torch.Tensor, k: int, pad_mode: str) -> torch.Tensor:
    """:func:`pairwise_subtraction_attention_eval` through the CPU kernel: the three 1x1 convolutions in one product,
    BN0 applied to the centre term and its scale to the neighbour term, BN3 folded into the first product, the two
    position channels (the same for every sample) after BN0 and ReLU computed once; then one fused pass per segment
    of a row."""
    _, c_in, h, w = x.shape
    pad = footprint_padding(k)
    qkv = conv1x1(x, qkv_weight.view(-1, c_in, 1, 1), qkv_bias)
    a = torch.addcmul(t0[:cr].view(1, -1, 1, 1), qkv[:, :cr], s0[:cr].view(1, -1, 1, 1))
    bp = _pad(qkv[:, cr : 2 * cr] * s0[:cr].view(1, -1, 1, 1), pad, pad_mode)
    vp = _pad(qkv[:, 2 * cr :], pad, pad_mode)
    p = conv1x1(position_grid(h, w, x.device, x.dtype), pos_weight, pos_bias)
    diff = subtraction(p, k, pad_mode=pad_mode)[0]                               # (2, K, L)
    hp = torch.addcmul(t0[cr:].view(2, 1, 1), diff, s0[cr:].view(2, 1, 1)).relu_().view(2, k * k, h, w)
    return _native_pair_eval(a, bp, vp, hp, w1.view(cr, cr + 2) * s3[:, None], t3, w2.view(w2.shape[0], cr), b2, k)


_pairwise_train_op = torch.library.custom_op("relzoo::san_pairwise_attention_train", _native_pair_train_forward,
                                             mutates_args=())
_pairwise_train_backward_op = torch.library.custom_op("relzoo::san_pairwise_attention_train_backward",
                                                      _native_pair_train_backward, mutates_args=())


@_pairwise_train_op.register_fake
def _(x1, x2p, x3p, hp, gamma0, beta0, w1, gamma3, beta3, w2, b2, eps0, eps3, kernel_size):
    n, cr, h, w = x1.shape
    k2 = kernel_size * kernel_size
    return (x1.new_empty(n, x3p.shape[1], h, w), x1.new_empty(n, k2, cr, h, w),
            x1.new_empty(n, k2, w2.shape[0], h, w), x1.new_empty(6, cr))


def _contiguous_like(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Fake outputs: the kernels' gradients are new C-contiguous tensors, whatever the inputs' strides."""
    return [t.new_empty(t.shape) for t in tensors]


@_pairwise_train_backward_op.register_fake
def _(grad_out, x1, x2p, x3p, hp, u, wsm, stats, gamma0, beta0, w1, gamma3, beta3, w2, kernel_size):
    return _contiguous_like(x1, x2p, x3p, hp, gamma0, beta0, w1, gamma3, beta3, w2) + [w2.new_empty(w2.shape[0])]


def _pairwise_train_setup_context(ctx, inputs, output):
    x1, x2p, x3p, hp, gamma0, beta0, w1, gamma3, beta3, w2, b2, eps0, eps3, kernel_size = inputs
    _, u, wsm, stats = output
    ctx.mark_non_differentiable(u, wsm, stats)
    ctx.set_materialize_grads(False)   # no zero-filled gradients for the saved buffers (79 MB each at SAN10 stage 1)
    ctx.save_for_backward(x1, x2p, x3p, hp, u, wsm, stats, gamma0, beta0, w1, gamma3, beta3, w2)
    ctx.kernel_size = kernel_size


def _pairwise_train_grad(ctx, grad_out, grad_u, grad_wsm, grad_stats):
    if grad_out is None:
        return (None,) * 14
    grads = _pairwise_train_backward_op(grad_out, *ctx.saved_tensors, ctx.kernel_size)
    return (*grads, None, None, None)


_pairwise_train_op.register_autograd(_pairwise_train_grad, setup_context=_pairwise_train_setup_context)


def pairwise_subtraction_attention_train(x1: torch.Tensor, x2p: torch.Tensor, x3p: torch.Tensor, hp: torch.Tensor,
                                         gamma0: torch.Tensor, beta0: torch.Tensor, w1: torch.Tensor,
                                         gamma3: torch.Tensor, beta3: torch.Tensor, w2: torch.Tensor,
                                         b2: torch.Tensor, eps0: float, eps3: float,
                                         kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The released pairwise SAM's weight network, softmax and aggregation with **batch statistics** in both
    BatchNorms, through the CPU kernels, differentiable in every tensor argument.

    ``x1 = conv1(x)`` ``(N, Cr, H, W)``; ``x2p``, ``x3p``: ``conv2(x)``, ``conv3(x)`` padded by ``kernel_size // 2``
    (the caller's padding: its autograd folds the padded gradient back); ``hp`` ``(2, K, H, W)``: the two position
    channels ``relu(BN0(p_i - p_j))`` (the same for every sample, normalised by the caller); ``gamma0, beta0``: BN0
    of the ``Cr`` relation channels; ``w1`` ``(Cr, Cr + 2)``: the first product; ``gamma3, beta3``: BN3; ``w2``
    ``(Cw, Cr)``, ``b2``: the second product.

    The relation ``x1[centre] - x2~[neighbour]`` and the activations computed from it are never held: BN0's
    statistics come from a streaming pass over the taps, the first product ``u`` ``(N, K, Cr, H, W)`` is kept (BN3's
    statistics taken as it is written) and so are the attention weights ``(N, K, Cw, H, W)``; the backward pass
    recomputes the rest segment by segment.

    Returns ``out`` ``(N, Cm, H, W)`` and ``stats`` ``(6, Cr)``: BN0's batch mean, biased variance, inverse standard
    deviation on the relation channels, then BN3's (for the running statistics).
    """
    out, _, _, stats = _pairwise_train_op(x1, x2p, x3p, hp, gamma0, beta0, w1, gamma3, beta3, w2, b2, eps0, eps3,
                                          kernel_size)
    return out, stats


# ----------------------------------------------------------------------------------------------------------------
# patchwise (concatenation) attention through the CPU kernels
# ----------------------------------------------------------------------------------------------------------------
def patchwise_blocks(bn0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, rel_planes: int,
                     kernel_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The patchwise weight network's parameters in the kernels' blocks (differentiable views and copies).

    ``bn0`` ``(Cr (K + 1),)`` (any per-channel vector of BN0, official order: the ``Cr`` centre channels, then
    channel ``Cr + c K + j`` for tap ``j``) -> ``(K + 1, Cr)``; ``w1`` ``(Cw, Cr (K + 1))`` -> ``(K + 1, Cw, Cr)``;
    ``w2`` ``(K Cw, Cw)`` (row ``q K + j``) -> ``(K, Cw, Cw)``; ``b2`` ``(K Cw,)`` -> ``(K, Cw)``.
    """
    cr, k2 = rel_planes, kernel_size * kernel_size
    cw = w1.shape[0]
    w1b = torch.cat([w1[:, :cr].unsqueeze(0), w1[:, cr:].reshape(cw, cr, k2).permute(2, 0, 1)])
    return (bn0_blocks(bn0, cr, kernel_size), w1b, w2.reshape(cw, k2, cw).transpose(0, 1).contiguous(),
            b2.view(cw, k2).t().contiguous())


def bn0_blocks(bn0: torch.Tensor, rel_planes: int, kernel_size: int) -> torch.Tensor:
    """A per-channel vector of the patchwise BN0 in blocks: ``(Cr (K + 1),)`` -> ``(K + 1, Cr)``."""
    cr = rel_planes
    return torch.cat([bn0[:cr].view(1, cr), bn0[cr:].view(cr, kernel_size * kernel_size).t()])


def official_bn0_order(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchwise_blocks` for a BN0 vector: ``(K + 1, Cr)`` -> ``(Cr (K + 1),)``."""
    return torch.cat([blocks[0], blocks[1:].t().reshape(-1)])


def _patchwise_attention_eval_native(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, cr: int,
                                     bn0: list[torch.Tensor], eps0: float, w1: torch.Tensor, bn3: list[torch.Tensor],
                                     eps3: float, w2: torch.Tensor, b2: torch.Tensor, k: int,
                                     pad_mode: str) -> torch.Tensor:
    pad = footprint_padding(k)
    qkv = conv1x1(x, qkv_weight.view(-1, x.shape[1], 1, 1), qkv_bias)
    s0, t0 = bn_scale_shift(bn0[0], bn0[1], bn0[2], bn0[3], eps0)
    s3, t3 = bn_scale_shift(bn3[0], bn3[1], bn3[2], bn3[3], eps3)
    w1 = w1.flatten(1) * s3[:, None]                                             # BN3 folded into the first product
    s0b, w1b, w2b, b2b = patchwise_blocks(s0, w1, w2.flatten(1), b2, cr, k)
    t0b = bn0_blocks(t0, cr, k)
    x1 = qkv[:, :cr]
    x2p, vp = _pad(qkv[:, cr : 2 * cr], pad, pad_mode), _pad(qkv[:, 2 * cr :], pad, pad_mode)
    return _native_patch_eval(x1, x2p, vp, s0b, t0b, w1b, t3, w2b, b2b, k)


def patchwise_concat_attention_eval(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                                    rel_planes: int, bn0: list[torch.Tensor], eps0: float, w1: torch.Tensor,
                                    bn3: list[torch.Tensor], eps3: float, w2: torch.Tensor, b2: torch.Tensor,
                                    kernel_size: int, pad_mode: str) -> torch.Tensor:
    """The released patchwise SAM in inference through the CPU kernel: ``x`` ``(N, C_in, H, W)`` ->
    ``(N, C_mid, H, W)``, equal to ``aggregation(conv3(x), gamma([x1, unfold(x2)]))`` with both BatchNorms of
    ``gamma`` using their running statistics, without the ``(N, C_rel (K + 1), L)`` relation or the ``(N, Cw, K, L)``
    weights. Arguments as :func:`pairwise_subtraction_attention_eval` (``w1 = conv_w[2].weight``,
    ``w2, b2 = conv_w[5]``). Callers check :func:`relzoo.layers.san_native.usable` first."""
    return _patchwise_attention_eval_op(x, qkv_weight, qkv_bias, rel_planes, bn0, eps0, w1, bn3, eps3, w2, b2,
                                        kernel_size, pad_mode)


_patchwise_attention_eval_op = torch.library.custom_op("relzoo::san_patchwise_attention_eval",
                                                       _patchwise_attention_eval_native, mutates_args=())


@_patchwise_attention_eval_op.register_fake
def _(x, qkv_weight, qkv_bias, rel_planes, bn0, eps0, w1, bn3, eps3, w2, b2, kernel_size, pad_mode):
    return x.new_empty(x.shape[0], qkv_weight.shape[0] - 2 * rel_planes, x.shape[2], x.shape[3])


_patchwise_train_op = torch.library.custom_op("relzoo::san_patchwise_attention_train", _native_patch_train_forward,
                                              mutates_args=())
_patchwise_train_backward_op = torch.library.custom_op("relzoo::san_patchwise_attention_train_backward",
                                                       _native_patch_train_backward, mutates_args=())


@_patchwise_train_op.register_fake
def _(x1, x2p, x3p, gamma0, beta0, w1, gamma3, beta3, w2, b2, eps0, eps3, kernel_size):
    n, cr, h, w = x1.shape
    k2, cw = kernel_size * kernel_size, w1.shape[1]
    return (x1.new_empty(n, x3p.shape[1], h, w), x1.new_empty(n, cw, h, w), x1.new_empty(n, k2, cw, h, w),
            x1.new_empty(3, k2 + 1, cr), x1.new_empty(3, cw))


@_patchwise_train_backward_op.register_fake
def _(grad_out, x1, x2p, x3p, u, wts, stats0, stats3, gamma0, beta0, w1, gamma3, beta3, w2, kernel_size):
    k2 = kernel_size * kernel_size
    return (_contiguous_like(x1, x2p, x3p, gamma0, beta0, w1, gamma3, beta3, w2)
            + [w2.new_empty(k2, w2.shape[1])])


def _patchwise_train_setup_context(ctx, inputs, output):
    x1, x2p, x3p, gamma0, beta0, w1, gamma3, beta3, w2, b2, eps0, eps3, kernel_size = inputs
    _, u, wts, stats0, stats3 = output
    ctx.mark_non_differentiable(u, wts, stats0, stats3)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x1, x2p, x3p, u, wts, stats0, stats3, gamma0, beta0, w1, gamma3, beta3, w2)
    ctx.kernel_size = kernel_size


def _patchwise_train_grad(ctx, grad_out, grad_u, grad_wts, grad_stats0, grad_stats3):
    if grad_out is None:
        return (None,) * 13
    grads = _patchwise_train_backward_op(grad_out, *ctx.saved_tensors, ctx.kernel_size)
    return (*grads, None, None, None)


_patchwise_train_op.register_autograd(_patchwise_train_grad, setup_context=_patchwise_train_setup_context)


def patchwise_concat_attention_train(x1: torch.Tensor, x2p: torch.Tensor, x3p: torch.Tensor, gamma0: torch.Tensor,
                                     beta0: torch.Tensor, w1: torch.Tensor, gamma3: torch.Tensor,
                                     beta3: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, eps0: float,
                                     eps3: float, kernel_size: int) -> tuple[torch.Tensor, ...]:
    """The released patchwise SAM's weight network and aggregation with **batch statistics** in both BatchNorms,
    through the CPU kernels, differentiable in every tensor argument.

    ``x1 = conv1(x)`` ``(N, Cr, H, W)``; ``x2p``, ``x3p``: ``conv2(x)``, ``conv3(x)`` padded by ``kernel_size // 2``;
    BN0, the first and the second product in the blocks of :func:`patchwise_blocks`: ``gamma0, beta0``
    ``(K + 1, Cr)``, ``w1`` ``(K + 1, Cw, Cr)``, ``w2`` ``(K, Cw, Cw)``, ``b2`` ``(K, Cw)``; ``gamma3, beta3`` BN3.

    Neither the ``(N, Cr (K + 1), L)`` relation nor BN0's output is held: BN0's statistics come from a streaming pass
    over the taps, the first product ``u`` ``(N, Cw, H, W)`` and the weights ``(N, K, Cw, H, W)`` are kept.

    Returns ``out`` ``(N, Cm, H, W)``, BN0's statistics ``(3, K + 1, Cr)`` and BN3's ``(3, Cw)`` (mean, biased
    variance, inverse standard deviation).
    """
    out, _, _, stats0, stats3 = _patchwise_train_op(x1, x2p, x3p, gamma0, beta0, w1, gamma3, beta3, w2, b2, eps0,
                                                    eps3, kernel_size)
    return out, stats0, stats3


def pairwise_subtraction_attention_eval(
    x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, rel_planes: int, pos_weight: torch.Tensor,
    pos_bias: torch.Tensor, bn0: list[torch.Tensor], eps0: float, w1: torch.Tensor,
    bn3: list[torch.Tensor], eps3: float, w2: torch.Tensor, b2: torch.Tensor, kernel_size: int, pad_mode: str,
    chunk_bytes: int = 4 << 20,
) -> torch.Tensor:
    """The released pairwise SAM in inference, without ever holding the ``(N, C_rel + 2, K, L)`` relation, the
    hidden ``(N, C_rel, K, L)`` activations or the ``(N, Cw, K, L)`` attention weights.

    ``gamma = BN0 -> ReLU -> W1 -> BN3 -> ReLU -> W2 + b2`` is evaluated a few footprint taps at a time (a chunk holds
    about ``chunk_bytes`` of activations) and the softmax advances a footprint row (or a chunk) at a time:
    BN0 is a per-channel affine map, so ``BN0(x1[centre] - x2[nbr])`` is ``A[centre] - B[nbr]`` with ``A, B``
    computed once; BN3 is folded into ``W1``; the position term ``W1_pos @ relu(BN0_pos(p_i - p_j))`` does not depend
    on the sample and is computed once per tap. The softmax over the footprint runs online (running maximum and sum,
    the accumulator rescaled once per block of taps), and the aggregation is accumulated on the fly. Everything runs
    channel-major ``(C, N, H, W)`` so that every product is a single matrix multiply.

    Args:
        x: block input ``(N, C_in, H, W)``.
        qkv_weight, qkv_bias: ``conv1``, ``conv2``, ``conv3`` (1x1) stacked: ``(2 * C_rel + C_mid, C_in)``, ``(.., )``.
        rel_planes: ``C_rel``.
        pos_weight, pos_bias: ``conv_p`` ``(2, 2, 1, 1)``, ``(2,)``.
        bn0, bn3: ``[weight, bias, running_mean, running_var]`` of ``conv_w[0]`` (``C_rel + 2``) and ``conv_w[3]``.
        w1: ``conv_w[2].weight`` ``(C_rel, C_rel + 2, 1, 1)``.
        w2, b2: ``conv_w[5]`` ``(Cw, C_rel, 1, 1)`` and ``(Cw,)``.

    Returns:
        ``(N, C_mid, H, W)``, equal to ``aggregation(conv3(x), softmax_K(gamma([x1 - x2~, p - p~])))``.
    """
    args = (x, qkv_weight, qkv_bias, rel_planes, pos_weight, pos_bias, bn0, eps0, w1, bn3, eps3, w2, b2, kernel_size,
            pad_mode, chunk_bytes)
    if torch.jit.is_scripting():
        return _pairwise_attention_eval(*args)
    return _pairwise_attention_eval_op(*args)


def _pairwise_eval_inputs(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, cr: int,
                          s0: torch.Tensor, t0: torch.Tensor, cw: int, kernel_size: int,
                          pad_mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Channel-major inputs of :func:`pairwise_subtraction_attention_eval`: ``A = BN0(x1)`` ``(C_rel, N, H, W)``,
    ``B = pad(BN0 scale * x2)`` and ``V = pad(x3)`` viewed ``(C_mid / Cw, Cw, N, H~, W~)``. The ``(C, N, H, W)``
    product of the three 1x1 convolutions is freed when this returns."""
    n, c_in, h, w = x.shape
    pad = footprint_padding(kernel_size)
    qkv = torch.baddbmm(qkv_bias.view(1, -1, 1), qkv_weight.unsqueeze(0).expand(n, -1, -1),
                        x.reshape(n, c_in, h * w))
    # channel-major (2 * C_rel + C_mid, N, H, W); transposing the product moves fewer channels than x has
    qkv = qkv.transpose(0, 1).reshape(qkv.shape[1], n, h, w)
    s0, t0 = s0.to(qkv.dtype)[:, None, None, None], t0.to(qkv.dtype)[:, None, None, None]
    a = torch.addcmul(t0, qkv[:cr], s0)  # BN0 of the centre term
    b = _pad(qkv[cr : 2 * cr] * s0, pad, pad_mode)  # BN0's scale of the neighbour term
    x3 = qkv[2 * cr :]
    v = _pad(x3, pad, pad_mode).view(x3.shape[0] // cw, cw, n, h + 2 * pad, w + 2 * pad)
    return a, b, v


def _patchwise_hidden_eval(x1: torch.Tensor, x2: torch.Tensor, conv_weight: torch.Tensor,
                           bn: list[torch.Tensor], eps: float, kernel_size: int, pad_mode: str) -> torch.Tensor:
    """Implementation of :func:`patchwise_concat_hidden_eval` (plain torch; TorchScript compiles it)."""
    n, c, h, w = x1.shape
    k2 = kernel_size * kernel_size
    scale, shift = bn_scale_shift(bn[0], bn[1], bn[2], bn[3], eps)
    weight = conv_weight.flatten(1)  # (hidden, C * (K + 1)); input channels [centre c] + [c * K + j]
    w_fp = weight[:, c:].reshape(-1, c, k2)
    s_fp, b_fp = scale[c:].view(c, k2, 1, 1, 1), shift[c:].view(c, k2, 1, 1, 1)
    # channel-major layout (C, N, H, W): every tap then contracts in a single (hidden, C) @ (C, N*L) product
    x1t, x2t = x1.transpose(0, 1).contiguous(), x2.transpose(0, 1).contiguous()
    centre = torch.addcmul(shift[:c, None, None, None], x1t, scale[:c, None, None, None]).relu_()
    out = torch.mm(weight[:, :c], centre.view(c, n * h * w))
    w_fp = w_fp.to(out.dtype)  # under autocast `out` is bf16 and in-place ops are not cast for us
    x2_pad = _pad(x2t, footprint_padding(kernel_size), pad_mode)
    for j in range(k2):
        tap = _window(x2_pad, j // kernel_size, j % kernel_size, h, w, 1)
        tap = torch.addcmul(b_fp[:, j], tap, s_fp[:, j]).relu_()
        out.addmm_(w_fp[:, :, j], tap.reshape(c, n * h * w).to(out.dtype))
    return out.view(out.shape[0], n, h * w).transpose(0, 1).contiguous()


def patchwise_concat_hidden_eval(x1: torch.Tensor, x2: torch.Tensor, conv_weight: torch.Tensor,
                                 bn: list[torch.Tensor], eps: float, kernel_size: int,
                                 pad_mode: str) -> torch.Tensor:
    """``conv_w[:3]`` (BN -> ReLU -> conv) of the patchwise concatenation, in eval mode, one tap at a time.

    Equal to ``conv(relu(bn(cat([x1, unfold(x2)]))))`` but never builds the ``K``-times unfolded ``x2``: BN with
    running statistics is a per-channel affine map, so each footprint tap is normalised, rectified and contracted
    with its slice of the conv weight on a strided view. ``x1, x2: (N, C, H, W)``; ``bn``: ``[weight, bias,
    running_mean, running_var]`` over ``C * (K + 1)`` channels; returns ``(N, hidden, L)``.
    """
    if torch.jit.is_scripting():
        return _patchwise_hidden_eval(x1, x2, conv_weight, bn, eps, kernel_size, pad_mode)
    return _patchwise_hidden_eval_op(x1, x2, conv_weight, bn, eps, kernel_size, pad_mode)


_pairwise_attention_eval_op = torch.library.custom_op("relzoo::san_pairwise_attention_eval", _pairwise_attention_eval,
                                                      mutates_args=())
_patchwise_hidden_eval_op = torch.library.custom_op("relzoo::san_patchwise_hidden_eval", _patchwise_hidden_eval,
                                                    mutates_args=())


@_pairwise_attention_eval_op.register_fake
def _(x, qkv_weight, qkv_bias, rel_planes, pos_weight, pos_bias, bn0, eps0, w1, bn3, eps3, w2, b2, kernel_size,
      pad_mode, chunk_bytes=4 << 20):
    return x.new_empty(x.shape[0], qkv_weight.shape[0] - 2 * rel_planes, x.shape[2], x.shape[3])


@_patchwise_hidden_eval_op.register_fake
def _(x1, x2, conv_weight, bn, eps, kernel_size, pad_mode):
    return x1.new_empty(x1.shape[0], conv_weight.shape[0], x1.shape[2] * x1.shape[3])


# every operator is a leaf of torch.fx graphs: checks and tensor-dependent branches run when the graph runs
for _name in ("aggregation", "aggregation_reference", "subtraction2", "subtraction2_reference", "subtraction",
              "subtraction_reference", "unfold_footprint", "conv1x1", "position_grid",
              "pairwise_subtraction_attention_eval", "patchwise_concat_hidden_eval", "patchwise_concat_attention_eval"):
    torch.fx.wrap(_name)
