"""The SAN CPU kernels (``relzoo/csrc``, built into ``relzoo._san_cpu`` when relzoo is installed) behind plain torch
functions.

The kernels compute the released pairwise (subtraction) and patchwise (concatenation) self-attention of SAN in one
pass per segment of a row of pixels, with every footprint tap, the weight network, the softmax and the aggregation
held in registers and cache: the ``(N, C, K, L)`` relation is never written to memory in inference, and training
keeps only the first product of the weight network and the attention weights for the backward pass (BatchNorm
statistics of the weight network are taken in streaming passes). They are loaded with ``ctypes`` (no PyTorch headers,
no build-time torch dependency); their OpenMP threads are the ones torch already runs (the same ``libgomp``), as
many as ``torch.get_num_threads()``.

Each kernel exists for AVX-512, AVX2 + FMA and a portable build; the CPU picks one at load time. Where the extension
was not built (no compiler, another platform), with ``RELZOO_SAN_NATIVE=0`` in the environment when relzoo is
imported, or inside :func:`disabled`, SAN runs its pure-PyTorch operators; :func:`status` says which.

Every function here takes C-contiguous CPU tensors of one dtype (float32 or float64) and checks nothing else: the
callers in :mod:`relzoo.layers.san_ops` validate shapes first. This module only imports torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os

import torch

__all__ = ["available", "status", "usable", "disabled", "lanes", "pair_eval", "pair_train_forward",
           "pair_train_backward", "patch_eval", "patch_train_forward", "patch_train_backward", "pool2_forward",
           "pool2_backward", "pool2_relu_route"]

_ISA_NAMES = {2: "avx512", 1: "avx2", 0: "generic"}
_lib = None
_load_error: str | None = None
_isa: str | None = None
_disabled_depth = 0      # > 0 inside disabled(); a plain global, so that torch.compile can read it


def _load():
    """The ctypes library (loaded once), or None with the reason in ``_load_error``."""
    global _lib, _load_error, _isa
    if _lib is not None or _load_error is not None:
        return _lib
    try:
        spec = importlib.util.find_spec("relzoo._san_cpu")
        if spec is None or not spec.origin:
            raise ImportError("relzoo._san_cpu was not built (install relzoo with a C++ compiler: pip install -e .)")
        lib = ctypes.CDLL(spec.origin)
        lib.relzoo_cpu_isa.restype = ctypes.c_int
        _isa = _ISA_NAMES.get(lib.relzoo_cpu_isa(), "generic")
        _lib = lib
    except (ImportError, OSError) as err:   # no relzoo package (a Hub folder's remote code), not built, unloadable
        _load_error = str(err)
    return _lib


_LOADED = _load() is not None
_ENV_OFF = os.environ.get("RELZOO_SAN_NATIVE", "1") == "0"


def available() -> bool:
    """Whether the compiled kernels are loaded (independent of ``RELZOO_SAN_NATIVE`` and :func:`disabled`)."""
    return _LOADED


def status() -> str:
    """One line: which SAN CPU path runs and why."""
    if not _LOADED:
        return f"SAN CPU kernels unavailable ({_load_error}); the PyTorch operators run"
    if _ENV_OFF:
        return f"SAN CPU kernels loaded ({_isa}) but disabled by RELZOO_SAN_NATIVE=0; the PyTorch operators run"
    return f"SAN CPU kernels loaded ({_isa}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def disabled():
    """Within this block SAN runs its pure-PyTorch operators even where the kernels are loaded (process-wide)."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take these tensors: loaded and enabled, CPU autocast off, every tensor on the CPU (fake
    tensors of ``torch.compile`` included: the custom operators stay one node each), float32 or float64, all of
    one dtype, none empty. Read once per call from metadata only (``torch.compile`` traces it)."""
    if _disabled_depth or _ENV_OFF or not _LOADED:
        return False
    if torch.is_autocast_enabled("cpu"):   # mixed precision: the PyTorch operators follow autocast's casts
        return False
    if any(isinstance(t, torch.fx.Proxy) for t in tensors):   # torch.fx tracing: the graph keeps PyTorch operators
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != dtype or t.numel() == 0:   # empty batches: the PyTorch operators
            return False
    return True


def lanes(dtype: torch.dtype, width: int) -> int:
    """Pixels per vector for a map ``width`` pixels wide: the wide vector unless the narrow one wastes fewer lanes
    at the end of each row (64-byte vectors: 16 floats, 8 doubles; or half of that)."""
    wide = 16 if dtype == torch.float32 else 8
    narrow = wide // 2
    waste_wide, waste_narrow = -width % wide, -width % narrow
    return wide if waste_wide <= waste_narrow else narrow


def _fn(name: str, dtype: torch.dtype, v: int):
    lib = _load()
    fn = getattr(lib, f"relzoo_{name}_{'f32' if dtype == torch.float32 else 'f64'}_{v}_{_isa}")
    fn.restype = None
    return fn


def _run(name: str, dtype: torch.dtype, width: int, *args) -> None:
    """Call kernel ``name`` for ``dtype`` with the lane count for maps ``width`` pixels wide (0: a kernel without
    lanes): tensors are passed as pointers (made contiguous first, and referenced here until the call returns;
    outputs must be allocated contiguous by the caller), ints as int64, then the thread count."""
    keep, cargs = [], []
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type != "cpu" or a.dtype not in (dtype, torch.float64, torch.uint8):
                raise TypeError(f"relzoo's SAN CPU kernel {name} takes {dtype} CPU tensors, got {a.dtype} on "
                                f"{a.device}")
            t = a if a.is_contiguous() else a.contiguous()
            keep.append(t)
            cargs.append(ctypes.c_void_p(t.data_ptr()))
        else:
            cargs.append(ctypes.c_int64(int(a)))
    _fn(name, dtype, lanes(dtype, width) if width else 1)(*cargs, ctypes.c_int(max(1, torch.get_num_threads())))
    del keep


# ----------------------------------------------------------------------------------------------------------------
# pairwise (subtraction) attention
# ----------------------------------------------------------------------------------------------------------------
def pair_eval(a: torch.Tensor, bp: torch.Tensor, vp: torch.Tensor, hp: torch.Tensor, w1: torch.Tensor,
              t3: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Pairwise attention in inference. ``a = BN0(x1)`` ``(N, Cr, H, W)``; ``bp = pad(BN0 scale * x2)``
    ``(N, Cr, H+2p, W+2p)``; ``vp = pad(x3)`` ``(N, Cm, ..)``; ``hp`` ``(2, K, H, W)``: the position channels after
    BN0 and ReLU; ``w1`` ``(Cr, Cr + 2)`` with BN3's scale folded in, ``t3`` BN3's shift; ``w2`` ``(Cw, Cr)``,
    ``b2`` ``(Cw,)``. Returns ``(N, Cm, H, W)``."""
    n, cr, h, w = a.shape
    cm, cw = vp.shape[1], w2.shape[0]
    out = torch.empty(n, cm, h, w, dtype=a.dtype)
    if out.numel():
        _run("pair_eval", a.dtype, w, a, bp, vp, hp, w1, t3, w2, b2, out, n, cr, cw, cm, h, w, kernel_size)
    return out


def _moments(sums: torch.Tensor, count: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, biased variance and inverse standard deviation from (sum, sum of squares) halves of ``sums``."""
    half = sums.shape[0] // 2
    mean = sums[:half] / count
    var = (sums[half:] / count - mean * mean).clamp_min(0)
    return mean, var, torch.rsqrt(var + eps)


def _affine(gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm as ``x * scale + shift`` (in double, then ``dtype``)."""
    scale = gamma.double() * rstd.double()
    return scale.to(dtype), (beta.double() - mean.double() * scale).to(dtype)


def pair_train_forward(x1: torch.Tensor, x2p: torch.Tensor, x3p: torch.Tensor, hp: torch.Tensor,
                       gamma0: torch.Tensor, beta0: torch.Tensor, w1: torch.Tensor, gamma3: torch.Tensor,
                       beta3: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, eps0: float, eps3: float,
                       kernel_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairwise attention with batch statistics in both BatchNorms of the weight network.

    ``x1`` ``(N, Cr, H, W)``, ``x2p`` / ``x3p`` padded ``(N, Cr | Cm, H+2p, W+2p)``, ``hp`` ``(2, K, H, W)`` the
    position channels after BN0 and ReLU; BN0 of the relation channels ``gamma0, beta0``; the first product ``w1``
    ``(Cr, Cr + 2)``; BN3 ``gamma3, beta3``; the second product ``w2, b2``.

    Returns ``out`` ``(N, Cm, H, W)``, ``u`` ``(N, K, Cr, H, W)`` (first product), ``wsm`` ``(N, K, Cw, H, W)``
    (attention weights) and ``stats`` ``(6, Cr)``: mean0, biased var0, rstd0, mean3, biased var3, rstd3.
    """
    n, cr, h, w = x1.shape
    cm, cw, ks = x3p.shape[1], w2.shape[0], kernel_size
    k2, dt = ks * ks, x1.dtype
    count = n * k2 * h * w
    sums0 = torch.zeros(2 * cr, dtype=torch.float64)
    _run("pair_rel_stats", dt, w, x1, x2p, sums0, n, cr, h, w, ks)
    mean0, var0, rstd0 = _moments(sums0, count, eps0)
    s0, t0 = _affine(gamma0, beta0, mean0, rstd0, dt)
    u = torch.empty(n, k2, cr, h, w, dtype=dt)
    sums3 = torch.zeros(2 * cr, dtype=torch.float64)
    _run("pair_train_u", dt, w, x1, x2p, hp, s0, t0, w1, u, sums3, n, cr, h, w, ks)
    mean3, var3, rstd3 = _moments(sums3, count, eps3)
    s3, t3 = _affine(gamma3, beta3, mean3, rstd3, dt)
    wsm = torch.empty(n, k2, cw, h, w, dtype=dt)
    out = torch.empty(n, cm, h, w, dtype=dt)
    _run("pair_train_attend", dt, w, u, s3, t3, w2, b2, x3p, wsm, out, n, cr, cw, cm, h, w, ks)
    return out, u, wsm, torch.stack([mean0, var0, rstd0, mean3, var3, rstd3]).to(dt)


def pair_train_backward(grad_out: torch.Tensor, x1: torch.Tensor, x2p: torch.Tensor, x3p: torch.Tensor,
                        hp: torch.Tensor, u: torch.Tensor, wsm: torch.Tensor, stats: torch.Tensor,
                        gamma0: torch.Tensor, beta0: torch.Tensor, w1: torch.Tensor, gamma3: torch.Tensor,
                        beta3: torch.Tensor, w2: torch.Tensor, kernel_size: int) -> list[torch.Tensor]:
    """Gradients of :func:`pair_train_forward` for ``x1, x2p, x3p, hp, gamma0, beta0, w1, gamma3, beta3, w2, b2``
    (BatchNorm's backward with batch statistics included)."""
    n, cr, h, w = x1.shape
    cm, cw, ks = x3p.shape[1], w2.shape[0], kernel_size
    k2, dt = ks * ks, x1.dtype
    count = n * k2 * h * w
    grad_out = grad_out.to(dt).contiguous()
    mean0, _, rstd0, mean3, _, rstd3 = (s.contiguous() for s in stats.to(dt))
    s3, t3 = _affine(gamma3, beta3, mean3, rstd3, dt)
    gvp = torch.empty_like(x3p)
    _run("aggregation_grad_values", dt, w, wsm, grad_out, gvp, n, cw, cm, h, w, ks)
    gbuf = torch.empty(n, k2, cr, h, w, dtype=dt)
    gw2, gb2 = torch.empty(cw, cr, dtype=dt), torch.empty(cw, dtype=dt)
    sums3 = torch.zeros(2 * cr, dtype=torch.float64)
    _run("pair_grad_weights", dt, w, grad_out, x3p, wsm, u, s3, t3, w2, mean3, rstd3, gbuf, gw2, gb2, sums3, n, cr,
         cw, cm, h, w, ks)
    gbeta3, ggamma3 = sums3[:cr], sums3[cr:]
    s0, t0 = _affine(gamma0, beta0, mean0, rstd0, dt)
    ghp = torch.empty(2, k2, h, w, dtype=dt)
    gw1 = torch.empty(cr, cr + 2, dtype=dt)
    sums0 = torch.zeros(2 * cr, dtype=torch.float64)
    _run("pair_grad_hidden", dt, w, x1, x2p, hp, u, s0, t0, w1, mean0, rstd0, s3, (gbeta3 / count).to(dt),
         (ggamma3 / count).to(dt), mean3, rstd3, gbuf, ghp, gw1, sums0, n, cr, h, w, ks)
    gbeta0, ggamma0 = sums0[:cr], sums0[cr:]
    gx1, gx2p = torch.empty_like(x1), torch.empty_like(x2p)
    _run("pair_grad_inputs", dt, w, x1, x2p, mean0, rstd0, s0, (gbeta0 / count).to(dt), (ggamma0 / count).to(dt), gbuf,
         gx1, gx2p, n, cr, h, w, ks)
    return [gx1, gx2p, gvp, ghp, ggamma0.to(dt, copy=True), gbeta0.to(dt, copy=True), gw1,
            ggamma3.to(dt, copy=True), gbeta3.to(dt, copy=True), gw2, gb2]


# ----------------------------------------------------------------------------------------------------------------
# patchwise (concatenation) attention, with the weight network's parameters in blocks: BN0 ``(K + 1, Cr)`` (block 0
# the centre channels, block 1 + j the channels of tap j), the first product ``(K + 1, Cw, Cr)``, the second
# ``(K, Cw, Cw)`` with bias ``(K, Cw)`` (see :func:`relzoo.layers.san_ops.patchwise_blocks` for the official order)
# ----------------------------------------------------------------------------------------------------------------
def patch_eval(x1: torch.Tensor, x2p: torch.Tensor, vp: torch.Tensor, s0: torch.Tensor, t0: torch.Tensor,
               w1: torch.Tensor, t3: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
               kernel_size: int) -> torch.Tensor:
    """Patchwise attention in inference: BN0 as ``s0, t0`` ``(K + 1, Cr)``, ``w1`` ``(K + 1, Cw, Cr)`` with BN3's
    scale folded in, ``t3`` BN3's shift, ``w2`` ``(K, Cw, Cw)``, ``b2`` ``(K, Cw)``. Returns ``(N, Cm, H, W)``."""
    n, cr, h, w = x1.shape
    cm, cw = vp.shape[1], w1.shape[1]
    out = torch.empty(n, cm, h, w, dtype=x1.dtype)
    if out.numel():
        _run("patch_eval", x1.dtype, w, x1, x2p, vp, s0, t0, w1, t3, w2, b2, out, n, cr, cw, cm, h, w, kernel_size)
    return out


def patch_train_forward(x1: torch.Tensor, x2p: torch.Tensor, x3p: torch.Tensor, gamma0: torch.Tensor,
                        beta0: torch.Tensor, w1: torch.Tensor, gamma3: torch.Tensor, beta3: torch.Tensor,
                        w2: torch.Tensor, b2: torch.Tensor, eps0: float, eps3: float,
                        kernel_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patchwise attention with batch statistics in both BatchNorms (parameters in blocks).

    Returns ``out`` ``(N, Cm, H, W)``, ``u`` ``(N, Cw, H, W)`` (first product), ``wts`` ``(N, K, Cw, H, W)``
    (attention weights), ``stats0`` ``(3, K + 1, Cr)`` (mean, biased var, rstd of BN0) and ``stats3`` ``(3, Cw)``.
    """
    n, cr, h, w = x1.shape
    cm, cw, ks = x3p.shape[1], w1.shape[1], kernel_size
    k2, dt = ks * ks, x1.dtype
    count = n * h * w
    sums0 = torch.zeros(2 * (k2 + 1) * cr, dtype=torch.float64)
    _run("patch_stats0", dt, w, x1, x2p, sums0, n, cr, h, w, ks)
    mean0, var0, rstd0 = (t.view(k2 + 1, cr) for t in _moments(sums0, count, eps0))
    s0, t0 = _affine(gamma0, beta0, mean0, rstd0, dt)
    u = torch.empty(n, cw, h, w, dtype=dt)
    sums3 = torch.zeros(2 * cw, dtype=torch.float64)
    _run("patch_train_u", dt, w, x1, x2p, s0, t0, w1, u, sums3, n, cr, cw, h, w, ks)
    mean3, var3, rstd3 = _moments(sums3, count, eps3)
    s3, t3 = _affine(gamma3, beta3, mean3, rstd3, dt)
    wts = torch.empty(n, k2, cw, h, w, dtype=dt)
    out = torch.empty(n, cm, h, w, dtype=dt)
    _run("patch_train_attend", dt, w, u, s3, t3, w2, b2, x3p, wts, out, n, cw, cm, h, w, ks)
    return (out, u, wts, torch.stack([mean0, var0, rstd0]).to(dt), torch.stack([mean3, var3, rstd3]).to(dt))


def patch_train_backward(grad_out: torch.Tensor, x1: torch.Tensor, x2p: torch.Tensor, x3p: torch.Tensor,
                         u: torch.Tensor, wts: torch.Tensor, stats0: torch.Tensor, stats3: torch.Tensor,
                         gamma0: torch.Tensor, beta0: torch.Tensor, w1: torch.Tensor, gamma3: torch.Tensor,
                         beta3: torch.Tensor, w2: torch.Tensor, kernel_size: int) -> list[torch.Tensor]:
    """Gradients of :func:`patch_train_forward` for ``x1, x2p, x3p, gamma0, beta0, w1, gamma3, beta3, w2, b2``."""
    n, cr, h, w = x1.shape
    cm, cw, ks = x3p.shape[1], w1.shape[1], kernel_size
    k2, dt = ks * ks, x1.dtype
    count = n * h * w
    grad_out = grad_out.to(dt).contiguous()
    mean0, _, rstd0 = (t.contiguous() for t in stats0.to(dt))
    mean3, _, rstd3 = (t.contiguous() for t in stats3.to(dt))
    s3, t3 = _affine(gamma3, beta3, mean3, rstd3, dt)
    gvp = torch.empty_like(x3p)
    _run("aggregation_grad_values", dt, w, wts, grad_out, gvp, n, cw, cm, h, w, ks)
    gl = torch.empty(n, k2, cw, h, w, dtype=dt)
    h1, gv3 = torch.empty(n, cw, h, w, dtype=dt), torch.empty(n, cw, h, w, dtype=dt)
    gb2 = torch.empty(k2, cw, dtype=dt)
    sums3 = torch.zeros(2 * cw, dtype=torch.float64)
    _run("patch_grad_weights", dt, w, grad_out, x3p, u, s3, t3, w2, mean3, rstd3, gl, h1, gv3, gb2, sums3, n, cw, cm,
         h, w, ks)
    gw2 = torch.bmm(gl.view(n, k2 * cw, h * w), h1.view(n, cw, h * w).transpose(1, 2)).sum(0).view(k2, cw, cw)
    del gl
    gbeta3, ggamma3 = sums3[:cw], sums3[cw:]
    s0, t0 = _affine(gamma0, beta0, mean0, rstd0, dt)
    gbuf = torch.empty(n, k2 + 1, cr, h, w, dtype=dt)
    gu = torch.empty(n, cw, h, w, dtype=dt)
    sums0 = torch.zeros(2 * (k2 + 1) * cr, dtype=dt)
    _run("patch_grad_hidden", dt, w, gv3, u, s3, (gbeta3 / count).to(dt), (ggamma3 / count).to(dt), mean3, rstd3, x1,
         x2p, s0, t0, w1, mean0, rstd0, gbuf, gu, sums0, n, cr, cw, h, w, ks)
    gw1 = torch.empty(k2 + 1, cw, cr, dtype=dt)
    _run("patch_grad_w1", dt, w, gu, x1, x2p, s0, t0, gw1, n, cr, cw, h, w, ks)
    gbeta0, ggamma0 = sums0[: (k2 + 1) * cr].view(k2 + 1, cr), sums0[(k2 + 1) * cr :].view(k2 + 1, cr)
    gx1, gx2p = torch.empty_like(x1), torch.empty_like(x2p)
    _run("patch_grad_inputs", dt, w, x1, x2p, mean0, rstd0, s0, gbeta0 / count, ggamma0 / count, gbuf, gx1, gx2p, n,
         cr, h, w, ks)
    return [gx1, gx2p, gvp, ggamma0.clone(), gbeta0.clone(), gw1, ggamma3.to(dt, copy=True),
            gbeta3.to(dt, copy=True), gw2, gb2]


# ----------------------------------------------------------------------------------------------------------------
# 2 x 2 max-pool (stride 2, floor), as F.max_pool2d (first maximum of a window in row-major order, NaN propagates)
# ----------------------------------------------------------------------------------------------------------------
def pool2_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C, H, W)`` -> the pooled ``(N, C, H // 2, W // 2)`` and each window's argmax as a byte (0..3,
    row-major). (Inference keeps its element-wise maxima: as fast here, and no index to write.)"""
    n, c, h, w = x.shape
    out = torch.empty(n, c, h // 2, w // 2, dtype=x.dtype)
    idx = torch.empty(out.shape, dtype=torch.uint8)
    if out.numel():
        _run("pool2_forward", x.dtype, 0, x, out, idx, n * c, h, w)
    return out, idx


def pool2_backward(grad_out: torch.Tensor, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The gradient of :func:`pool2_forward` for its input ``(N, C, h, w)``: ``grad_out`` at each window's argmax,
    zero elsewhere."""
    n, c = grad_out.shape[:2]
    grad_in = torch.empty(n, c, h, w, dtype=grad_out.dtype)
    if grad_in.numel():
        _run("pool2_backward", grad_out.dtype, 0, grad_out, idx, grad_in, n * c, h, w)
    return grad_in


def pool2_relu_route(act: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Backward through ``max_pool_2x2(act)`` and the ReLU that made ``act``: ``grad_out`` at each window's argmax
    of ``act`` where ``act > 0``, zero elsewhere; ``(N, C, H, W)``."""
    n, c, h, w = act.shape
    grad = torch.empty_like(act, memory_format=torch.contiguous_format)
    if grad.numel():
        _run("pool2_relu_route", act.dtype, 0, act, grad_out.to(act.dtype), grad, n * c, h, w)
    return grad
