"""SAN's stem without its full-resolution map: ``max_pool_2x2(relu(bn(conv1x1(x))))`` computed in bands of rows.

The stem of a SAN is a 1x1 convolution (3 -> 64 channels, no bias), BatchNorm and ReLU at the input's full
resolution, followed by the first stage's 2x2 max-pool. Its ``(N, 64, H, W)`` map is the largest tensor of the
network (103 MB per 8 images at 224 px); layer by layer, a training step writes it and reads it back about ten times
(convolution, BatchNorm, ReLU, max-pool, and their backward passes), and every such tensor above glibc's mmap
threshold (32 MB) is a fresh mapping whose pages fault in on first touch.

Here the stem never holds it:

* :func:`stem_pool` computes ``max_pool_2x2(relu(scale * conv1x1(x, weight) + shift))`` one band of output rows at a
  time (each band is convolved, rectified and pooled while it is in cache), and its backward pass recomputes each
  band, routes the gradient through the max-pool's argmax (the first maximum of each window in row-major order, as
  ``F.max_pool2d``) and ReLU's mask, and reduces it to the gradients of ``x``, ``weight``, ``scale`` and ``shift``.
* :func:`stem_train` supplies BatchNorm's batch statistics without the map: the convolution is linear, so the mean
  and (biased) variance of output channel ``o`` are ``w_o . m`` and ``w_o^T C w_o`` with ``m``, ``C`` the mean and
  covariance of the input's channels. They are computed with differentiable torch operations, so autograd carries
  their gradients back to ``weight`` and ``x`` exactly as through ``F.batch_norm``; the running statistics are
  updated as ``nn.BatchNorm2d`` updates them (momentum or cumulative average, unbiased variance).
* :func:`stem_eval` is the inference case: the running statistics give ``scale`` and ``shift``.

This module only imports torch.
"""
import torch
import torch.nn.functional as F

from .san_native import pool2_backward as _native_pool2_backward
from .san_native import pool2_forward as _native_pool2_forward
from .san_native import pool2_relu_route as _native_pool2_relu_route
from .san_native import usable as _native_usable
from .san_ops import bn_scale_shift, conv1x1, update_running_stats

__all__ = ["max_pool_2x2", "stem_pool", "stem_eval", "stem_train", "conv1x1_batch_stats"]


def _pool_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _native_pool2_forward(x)


def _pool_backward(grad_out: torch.Tensor, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _native_pool2_backward(grad_out, idx, h, w)


_pool_op = torch.library.custom_op("relzoo::san_max_pool_2x2", _pool_forward, mutates_args=())
_pool_backward_op = torch.library.custom_op("relzoo::san_max_pool_2x2_backward", _pool_backward, mutates_args=())


@_pool_op.register_fake
def _(x):
    shape = (x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)


@_pool_backward_op.register_fake
def _(grad_out, idx, h, w):
    return grad_out.new_empty(grad_out.shape[0], grad_out.shape[1], h, w)


def _pool_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.size = inputs[0].shape[-2:]


def _pool_grad(ctx, grad_out, grad_idx):
    (idx,) = ctx.saved_tensors
    return _pool_backward_op(grad_out, idx, ctx.size[0], ctx.size[1])


_pool_op.register_autograd(_pool_grad, setup_context=_pool_setup_context)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2, 2)`` (the same values and gradients: the first maximum of a window in row-major order).

    With autograd, on tensors the CPU kernels take (:mod:`relzoo.layers.san_native`), a custom operator whose
    forward keeps each window's argmax as one byte and whose backward writes every input once (no zero fill and
    scatter); otherwise (and inside TorchScript or an ONNX export) ``F.max_pool2d``. Without autograd, element-wise maxima of the four strided views (about
    6x faster than ``F.max_pool2d`` on NCHW maps).
    """
    if x.requires_grad and torch.is_grad_enabled():
        if not torch.jit.is_scripting():   # (TorchScript compiles F.max_pool2d only)
            if x.dim() == 4 and not torch.onnx.is_in_onnx_export() and _native_usable(x):
                return _pool_op(x)[0]
        return F.max_pool2d(x, 2, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    out = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
    torch.maximum(out, x[..., 1:h:2, 0:w:2], out=out)
    return torch.maximum(out, x[..., 1:h:2, 1:w:2], out=out)


def _band_rows(n: int, channels: int, width: int, element_size: int, band_bytes: int) -> int:
    """Output rows per band: the band's full-resolution map (2 input rows per output row) holds about
    ``band_bytes``."""
    return max(1, band_bytes // max(1, n * channels * 2 * 2 * width * element_size))


def _stem_pool_forward(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                       band_bytes: int = 4 << 20) -> torch.Tensor:
    """Bands of :func:`stem_pool` (plain torch; TorchScript compiles it)."""
    dtype = torch.promote_types(x.dtype, weight.dtype)
    folded = weight.to(dtype) * scale.to(dtype).view(-1, 1, 1, 1)
    n, c_out, h, w = x.shape[0], weight.shape[0], x.shape[2] // 2, x.shape[3] // 2
    out = torch.empty(n, c_out, h, w, device=x.device, dtype=dtype)
    rows = _band_rows(n, c_out, w, out.element_size(), band_bytes)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        band = conv1x1(x[:, :, 2 * r0 : 2 * r1, : 2 * w].to(dtype).contiguous(), folded, shift.to(dtype)).relu_()
        out[:, :, r0:r1] = max_pool_2x2(band)
    return out


def _stem_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                        shift: torch.Tensor, band_bytes: int,
                        need_x: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`stem_pool` for ``x`` (empty unless ``need_x``), ``weight``, ``scale``, ``shift``.

    With ``y = scale * (W x) + shift`` and ``G = sum over pixels of dL/dy x^T`` (``(C_out, C_in)``):
    ``dL/dW = scale * G``, ``dL/dscale = rowsum(W * G)``, ``dL/dshift = sum dL/dy``, ``dL/dx = (scale * W)^T dL/dy``.
    """
    dtype = grad_out.dtype
    n, c_in = x.shape[0], x.shape[1]
    c_out, h, w = weight.shape[0], grad_out.shape[2], grad_out.shape[3]
    w2 = weight.to(dtype).reshape(c_out, c_in)
    folded = w2 * scale.to(dtype).view(-1, 1)
    shift_d = shift.to(dtype)
    gram = torch.zeros(c_out, c_in, device=x.device, dtype=dtype)
    grad_shift = torch.zeros(c_out, device=x.device, dtype=dtype)
    grad_x = torch.zeros(x.shape, device=x.device, dtype=dtype) if need_x else x.new_empty(0)
    grad_out = grad_out.contiguous()
    rows = _band_rows(n, c_out, w, grad_out.element_size(), band_bytes)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        xb = x[:, :, 2 * r0 : 2 * r1, : 2 * w].to(dtype).contiguous()
        act = conv1x1(xb, folded.view(c_out, c_in, 1, 1), shift_d).relu_()
        if _native_usable(act):   # max-pool and ReLU in one pass
            grad_y = _native_pool2_relu_route(act, grad_out[:, :, r0:r1])
        else:
            _, index = torch.ops.aten.max_pool2d_with_indices(act, [2, 2], [2, 2])
            grad_act = torch.ops.aten.max_pool2d_with_indices_backward(grad_out[:, :, r0:r1], act, [2, 2], [2, 2],
                                                                        [0, 0], [1, 1], False, index)
            grad_y = torch.ops.aten.threshold_backward(grad_act, act, 0)      # ReLU: where the output is > 0
        grad_y = grad_y.view(n, c_out, -1)
        grad_shift += grad_y.sum(dim=(0, 2))
        gram += torch.bmm(grad_y, xb.view(n, c_in, -1).transpose(1, 2)).sum(0)
        if need_x:
            gx = torch.bmm(folded.t().unsqueeze(0).expand(n, -1, -1), grad_y)
            grad_x[:, :, 2 * r0 : 2 * r1, : 2 * w] = gx.view(xb.shape)
    grad_weight = (gram * scale.to(dtype).view(-1, 1)).view(weight.shape)
    grad_scale = (w2 * gram).sum(1)
    return grad_x, grad_weight, grad_scale, grad_shift


# opaque operators for torch.compile / torch.export / jit.trace (the band loops are not unrolled)
_stem_pool_op = torch.library.custom_op("relzoo::san_stem_pool", _stem_pool_forward, mutates_args=())
_stem_pool_backward_op = torch.library.custom_op("relzoo::san_stem_pool_backward", _stem_pool_backward,
                                                 mutates_args=())


@_stem_pool_op.register_fake
def _(x, weight, scale, shift, band_bytes=4 << 20):
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2] // 2, x.shape[3] // 2,
                       dtype=torch.promote_types(x.dtype, weight.dtype))


@_stem_pool_backward_op.register_fake
def _(grad_out, x, weight, scale, shift, band_bytes, need_x):
    dtype = grad_out.dtype
    return (x.new_empty(x.shape, dtype=dtype) if need_x else x.new_empty(0), weight.new_empty(weight.shape, dtype=dtype),
            scale.new_empty(scale.shape, dtype=dtype), shift.new_empty(shift.shape, dtype=dtype))


def _stem_pool_setup_context(ctx, inputs, output):
    x, weight, scale, shift, band_bytes = inputs
    ctx.save_for_backward(x, weight, scale, shift)
    ctx.band_bytes = band_bytes


def _stem_pool_grad(ctx, grad_out):
    x, weight, scale, shift = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_x, grad_weight, grad_scale, grad_shift = _stem_pool_backward_op(grad_out, x, weight, scale, shift,
                                                                          ctx.band_bytes, need[0])
    return ((grad_x.to(x.dtype) if need[0] else None), grad_weight.to(weight.dtype), grad_scale.to(scale.dtype),
            grad_shift.to(shift.dtype), None)


_stem_pool_op.register_autograd(_stem_pool_grad, setup_context=_stem_pool_setup_context)


def stem_pool(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
              band_bytes: int = 4 << 20) -> torch.Tensor:
    """``max_pool_2x2(relu(scale * conv1x1(x, weight) + shift))`` in bands of about ``band_bytes`` of the
    full-resolution map, differentiable in every input (the backward pass recomputes the bands).

    ``x: (N, C_in, H, W)``, ``weight: (C_out, C_in, 1, 1)``, ``scale, shift: (C_out,)`` -> ``(N, C_out, H//2, W//2)``.
    """
    if torch.jit.is_scripting():
        return _stem_pool_forward(x, weight, scale, shift, band_bytes)
    return _stem_pool_op(x, weight, scale, shift, band_bytes)


def stem_eval(x: torch.Tensor, conv_weight: torch.Tensor, bn: list[torch.Tensor], eps: float,
              band_bytes: int = 4 << 20) -> torch.Tensor:
    """The stem in inference, ``max_pool_2x2(relu(bn(conv1x1(x))))`` with the running statistics, in bands (the
    full-resolution map is never held). ``bn``: ``[weight, bias, running_mean, running_var]``.
    ``x: (N, C_in, H, W)`` -> ``(N, C, H // 2, W // 2)``."""
    scale, shift = bn_scale_shift(bn[0], bn[1], bn[2], bn[3], eps)
    return stem_pool(x, conv_weight, scale, shift, band_bytes)


def conv1x1_batch_stats(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and biased variance over ``(N, H, W)`` of ``conv1x1(x, weight)`` (no bias) per output channel, from the
    input's channel mean ``m`` and covariance ``C``: ``w_o . m`` and ``w_o^T C w_o``. Differentiable; also returns
    the number of values each statistic is taken over."""
    dtype = torch.promote_types(x.dtype, weight.dtype)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    xd = x.to(dtype)
    mean_x = xd.mean(dim=(0, 2, 3))
    centred = (xd - mean_x.view(1, -1, 1, 1)).transpose(0, 1).reshape(x.shape[1], -1)
    cov = centred @ centred.t() / count
    w = weight.to(dtype).flatten(1)
    mean = w @ mean_x
    var = ((w @ cov) * w).sum(1).clamp_min(0)
    return mean, var, count


def stem_train(x: torch.Tensor, conv_weight: torch.Tensor, bn_weight: torch.Tensor | None,
               bn_bias: torch.Tensor | None, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               num_batches_tracked: torch.Tensor | None, momentum: float | None, eps: float,
               band_bytes: int = 4 << 20) -> torch.Tensor:
    """The stem in training mode (BatchNorm with batch statistics, running statistics updated), without the
    full-resolution map: batch statistics from the input's moments (:func:`conv1x1_batch_stats`), then
    :func:`stem_pool`. Equal to ``max_pool2d(relu(batch_norm(conv1x1(x), training=True)), 2)`` in value, gradients
    and running statistics. ``x: (N, C_in, H, W)`` -> ``(N, C, H // 2, W // 2)``."""
    mean, var, count = conv1x1_batch_stats(x, conv_weight)
    if count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
    update_running_stats(running_mean, running_var, num_batches_tracked, momentum, mean, var, count)
    scale, shift = bn_scale_shift(bn_weight, bn_bias, mean, var, eps)   # batch statistics in place of running ones
    return stem_pool(x, conv_weight, scale, shift, band_bytes)


for _name in ("max_pool_2x2", "stem_pool", "stem_eval", "stem_train"):  # torch.fx leaf functions
    torch.fx.wrap(_name)
