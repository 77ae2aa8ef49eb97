"""SAN's CPU kernels (relzoo/csrc, relzoo.layers.san_native) against the pad + unfold reference in float64: forward,
every gradient and the BatchNorm running statistics after a training step, for both attention types, on shapes
that exercise full and partial vector segments, maps narrower than a vector, both paddings, batch 1, one and two
threads; gradcheck of the training operators; float32 within float32 tolerances; and the fallbacks."""
import contextlib
import copy
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

from relzoo.layers import SelfAttention2d, san_native
from relzoo.layers.san_ops import (
    pairwise_subtraction_attention_train,
    patchwise_blocks,
    patchwise_concat_attention_train,
)


def test_kernels_are_built_and_loaded():
    """`make install` builds relzoo._san_cpu; a checkout without it would silently run the slow operators."""
    assert san_native.available(), san_native.status()
    assert san_native.status().startswith("SAN CPU kernels loaded ("), san_native.status()


def _model(sa_type, c, k, pad_mode="reflect", dtype=torch.float64, implementation="fast"):
    torch.manual_seed(k + c)
    m = SelfAttention2d(sa_type, c, c // 8, c // 2, 4, k, pad_mode=pad_mode, implementation=implementation)
    m = m.to(dtype)
    with torch.no_grad():
        for bn in (m.conv_w[0], m.conv_w[3]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return m


def _path(native: bool):
    """The CPU kernels (where usable) or, with ``native=False``, the PyTorch operators."""
    return contextlib.nullcontext() if native else san_native.disabled()


def _step(m, x, g, native: bool):
    """One training-mode forward + backward; returns output, input gradient, parameter gradients, buffers."""
    x = x.detach().clone().requires_grad_()
    with _path(native):
        y = m(x)
        y.backward(g)
    return y.detach(), x.grad, {n: p.grad for n, p in m.named_parameters()}, {n: b.clone() for n, b in m.named_buffers()}


# widths: 13 -> one full (8) and one partial (5) segment of float64 vectors; 5 -> narrower than a vector (4-lane
# segments); 16 -> exact; heights include maps just above the reflection padding
SHAPES = [(3, 9, 13, 3, "reflect"), (2, 11, 5, 5, "reflect"), (1, 4, 16, 7, "reflect"), (2, 7, 9, 5, "zeros")]


@pytest.mark.parametrize("sa_type", ["pairwise", "patchwise"])
@pytest.mark.parametrize("n,h,w,k,pad_mode", SHAPES)
def test_training_step_matches_reference_fp64(sa_type, n, h, w, k, pad_mode):
    """Batch statistics in both BatchNorms of the weight network: the kernels equal the pad + unfold reference
    (outputs, input and parameter gradients, running statistics and num_batches_tracked)."""
    fast = _model(sa_type, 32, k, pad_mode)
    ref = _model(sa_type, 32, k, pad_mode, implementation="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(n, 32, h, w, dtype=torch.float64) * 2
    g = torch.randn(n, 16, h, w, dtype=torch.float64)
    name = "pairwise_subtraction_attention_train" if sa_type == "pairwise" else "patchwise_concat_attention_train"
    import relzoo.layers.san as san
    with mock.patch.object(san, name, wraps=getattr(san, name)) as spy:
        y, gx, gp, buffers = _step(fast, x, g, native=True)
    assert spy.call_count == 1                       # the kernels ran
    y_r, gx_r, gp_r, buffers_r = _step(ref, x, g, native=False)
    torch.testing.assert_close(y, y_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx, gx_r, rtol=0, atol=1e-10)
    for key in gp:
        torch.testing.assert_close(gp[key], gp_r[key], rtol=1e-10, atol=1e-10, msg=key)
    for key in buffers:
        torch.testing.assert_close(buffers[key], buffers_r[key], rtol=0, atol=1e-12, msg=key)


@pytest.mark.parametrize("sa_type", ["pairwise", "patchwise"])
@pytest.mark.parametrize("n,h,w,k,pad_mode", SHAPES)
def test_inference_matches_reference_fp64(sa_type, n, h, w, k, pad_mode):
    fast = _model(sa_type, 32, k, pad_mode).eval()
    ref = _model(sa_type, 32, k, pad_mode, implementation="reference").eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(n, 32, h, w, dtype=torch.float64) * 2
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sa_type", ["pairwise", "patchwise"])
def test_cumulative_momentum_and_untracked_statistics(sa_type):
    """momentum=None (cumulative average) and track_running_stats=False behave as nn.BatchNorm2d."""
    fast = _model(sa_type, 32, 3)
    for bn in (fast.conv_w[0], fast.conv_w[3]):
        bn.momentum = None
    ref = copy.deepcopy(fast)
    ref.implementation = "reference"
    x = torch.randn(2, 32, 6, 7, dtype=torch.float64)
    for _ in range(2):
        g = torch.randn(2, 16, 6, 7, dtype=torch.float64)
        a, b = _step(fast, x, g, native=True), _step(ref, x, g, native=False)
        for key in a[3]:
            torch.testing.assert_close(a[3][key], b[3][key], rtol=0, atol=1e-12, msg=key)
    untracked = _model(sa_type, 32, 3)
    untracked.conv_w[0] = torch.nn.BatchNorm2d(untracked.conv_w[0].num_features, track_running_stats=False).double()
    ref = copy.deepcopy(untracked)
    g = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    a, b = _step(untracked, x, g, native=True), _step(ref, x, g, native=False)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-10)


def test_training_operators_gradcheck():
    """torch.autograd.gradcheck on both training operators (every differentiable input, float64, small shapes)."""
    torch.manual_seed(0)
    n, cr, cw, cm, h, w, k = 2, 4, 2, 8, 5, 6, 3
    p, k2 = k // 2, k * k

    def t(*shape, low=None):
        x = torch.randn(*shape, dtype=torch.float64) if low is None else torch.rand(*shape, dtype=torch.float64) + low
        return x.requires_grad_()

    x1, x2p, x3p = t(n, cr, h, w), t(n, cr, h + 2 * p, w + 2 * p), t(n, cm, h + 2 * p, w + 2 * p)
    hp = t(2, k2, h, w, low=0.1)
    pair = (x1, x2p, x3p, hp, t(cr, low=0.5), t(cr), t(cr, cr + 2), t(cr, low=0.5), t(cr), t(cw, cr), t(cw))
    assert torch.autograd.gradcheck(lambda *a: pairwise_subtraction_attention_train(*a, 1e-3, 1e-3, k)[0], pair)
    gamma0, w1, w2, b2 = patchwise_blocks(t(cr * (k2 + 1), low=0.5), t(cw, cr * (k2 + 1)), t(k2 * cw, cw), t(k2 * cw),
                                          cr, k)
    beta0 = t(k2 + 1, cr)
    patch = (x1, x2p, x3p, gamma0.detach().requires_grad_(), beta0, w1.detach().requires_grad_(), t(cw, low=0.5),
             t(cw), w2.detach().requires_grad_(), b2.detach().requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: patchwise_concat_attention_train(*a, 1e-3, 1e-3, k)[0], patch)


@pytest.mark.parametrize("sa_type", ["pairwise", "patchwise"])
@pytest.mark.parametrize("w", [56, 28, 7])
def test_float32_kernels_are_as_accurate_as_the_pytorch_operators(sa_type, w):
    """float32 (16- and 8-pixel vectors, the polynomial exp): the kernels' distance to the float64 reference is that
    of PyTorch's own float32 operators (within 10x, or 1e-4 of the values' scale), output and every gradient
    of a training step, and the output in inference. The BatchNorms' shifts keep every ReLU input positive: near
    ReLU's kink, float32 and float64 rounding pick different subgradients (one flipped mask changes an input
    gradient at two pixels by O(1e-3)), which says nothing about the kernels; the masks themselves are checked in
    float64 above."""
    fast = _model(sa_type, 64, 7, dtype=torch.float32)
    with torch.no_grad():
        for bn in (fast.conv_w[0], fast.conv_w[3]):
            bn.weight.uniform_(0.4, 0.6)
            bn.bias.uniform_(4.0, 5.0)
    plain = copy.deepcopy(fast)
    ref = copy.deepcopy(fast).double()
    ref.implementation = "reference"
    x = torch.randn(2, 64, 9, w)
    g = torch.randn(2, 32, 9, w)
    ours = _step(fast, x, g, native=True)
    theirs = _step(plain, x, g, native=False)
    exact = _step(ref, x.double(), g.double(), native=False)

    def check(a, b, exact, what, scale=None):
        scale = exact.abs().max().item() if scale is None else scale
        ours_err, their_err = (a.double() - exact).abs().max().item(), (b.double() - exact).abs().max().item()
        assert ours_err <= 10 * their_err + 1e-4 * scale, (what, ours_err, their_err, scale)

    check(ours[0], theirs[0], exact[0], "output")
    check(ours[1], theirs[1], exact[1], "input gradient")
    largest = max(v.abs().max().item() for v in exact[2].values())
    for key, e in exact[2].items():  # biases feeding a BatchNorm have analytically zero gradients: common scale
        check(ours[2][key], theirs[2][key], e, key, scale=max(e.abs().max().item(), 1e-3 * largest))
    state = ref.state_dict()   # inference with the same (float64-updated) running statistics everywhere
    for m in (fast, plain, ref):
        m.load_state_dict(state)
        m.eval()
    with torch.no_grad():
        a = fast(x)
        with san_native.disabled():
            b = plain(x)
        check(a, b, ref(x.double()), "inference")


def test_thread_count_does_not_change_results():
    """One thread or two: the same values (weight-gradient partial sums are combined in double)."""
    m = _model("pairwise", 32, 5)
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64)
    g = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _step(copy.deepcopy(m), x, g, native=True)
        torch.set_num_threads(2)
        two = _step(copy.deepcopy(m), x, g, native=True)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one[0], two[0], rtol=0, atol=1e-13)
    for key in one[2]:
        torch.testing.assert_close(one[2][key], two[2][key], rtol=1e-12, atol=1e-12, msg=key)


def test_fallbacks_run_the_pytorch_operators():
    """disabled(), RELZOO_SAN_NATIVE=0, CPU autocast and other dtypes take the pure-PyTorch operators."""
    x = torch.randn(2, 32, 6, 7)
    assert san_native.usable(x)
    with san_native.disabled():
        assert not san_native.usable(x)
    assert san_native.usable(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not san_native.usable(x)
    assert not san_native.usable(x.half())
    assert not san_native.usable(x, x.double())
    env = dict(os.environ, RELZOO_SAN_NATIVE="0")
    code = ("import torch; from relzoo.layers import san_native; "
            "print(san_native.usable(torch.zeros(1)), san_native.status())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("False SAN CPU kernels loaded") and "disabled by RELZOO_SAN_NATIVE=0" in out


def test_kernels_refuse_tensors_of_another_dtype():
    """A kernel never reads a tensor as the wrong type: bf16 data handed to a float32 kernel is refused."""
    a = torch.zeros(1, 4, 5, 5)
    with pytest.raises(TypeError, match="takes torch.float32 CPU tensors, got torch.bfloat16"):
        san_native.pair_eval(a, torch.zeros(1, 4, 7, 7).bfloat16(), torch.zeros(1, 8, 7, 7), torch.zeros(2, 9, 5, 5),
                             torch.zeros(4, 6), torch.zeros(4), torch.zeros(2, 4), torch.zeros(2), 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_max_pool_2x2_equals_max_pool2d(dtype, hw):
    """The 2 x 2 max-pool operator (byte argmax, no zero fill): F.max_pool2d's values and gradients exactly, ties
    (the first maximum of a window in row-major order), NaN and odd sizes included."""
    from relzoo.layers.san_stem import max_pool_2x2

    torch.manual_seed(0)
    x = torch.randn(2, 3, *hw, dtype=dtype)
    x[0, 0, :2, :4] = 1.0                    # ties inside windows
    x[1, 2, 2, 3] = float("nan")
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = max_pool_2x2(a), torch.nn.functional.max_pool2d(b, 2, 2)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("hw", [(32, 32), (33, 35)])
def test_stem_training_without_the_full_resolution_map(hw):
    """SAN's stem in training (batch statistics from the input's moments, banded conv + BN + ReLU + max-pool, the
    backward through the kernels' pool-and-ReLU route or PyTorch's) equals the layer-by-layer stem: output, input,
    weight and BatchNorm gradients, running statistics, num_batches_tracked (float64)."""
    from relzoo.layers.san_stem import stem_train

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 1, bias=False).double()
    bn = torch.nn.BatchNorm2d(8).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 3, *hw, dtype=torch.float64)
    g = torch.randn(3, 8, hw[0] // 2, hw[1] // 2, dtype=torch.float64)
    ref_conv, ref_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    xr = x.clone().requires_grad_()
    y_ref = torch.nn.functional.max_pool2d(torch.relu(ref_bn(ref_conv(xr))), 2)
    y_ref.backward(g)
    for native in (True, False):
        c, b = copy.deepcopy(conv), copy.deepcopy(bn)
        xs = x.clone().requires_grad_()
        with _path(native):
            y = stem_train(xs, c.weight, b.weight, b.bias, b.running_mean, b.running_var, b.num_batches_tracked,
                           b.momentum, b.eps, band_bytes=3000)   # a few rows per band
            y.backward(g)
        for got, want in ((y, y_ref), (xs.grad, xr.grad), (c.weight.grad, ref_conv.weight.grad), (b.weight.grad, ref_bn.weight.grad),
                          (b.bias.grad, ref_bn.bias.grad), (b.running_mean, ref_bn.running_mean),
                          (b.running_var, ref_bn.running_var)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        assert int(b.num_batches_tracked) == 1
