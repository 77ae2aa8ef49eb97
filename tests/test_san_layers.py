"""SAN operators: fast paths against the pad+unfold references and against a literal loop of the formula."""
import itertools

import pytest
import torch

from relzoo.layers.san import (
    PAIRWISE_RELATIONS,
    PATCHWISE_RELATIONS,
    SelfAttention2d,
    aggregation,
    aggregation_reference,
    conv1x1,
    output_size,
    subtraction,
    subtraction2,
    subtraction2_reference,
    subtraction_reference,
)

GEOMETRIES = [  # (kernel_size, stride, dilation, pad_mode)
    (3, 1, 1, "reflect"), (7, 1, 1, "reflect"), (5, 4, 2, "reflect"), (3, 2, 1, "zeros"), (5, 1, 2, "zeros"),
    (7, 1, 1, "zeros"), (3, 1, 2, "reflect"),
]


def _reflect(i: int, n: int) -> int:
    # brief: i < 0 -> -i ; i >= n -> 2 (n - 1) - i
    if i < 0:
        i = -i
    if i >= n:
        i = 2 * (n - 1) - i
    return i


def _pixel(x, n, c, i, j, pad_mode):
    h, w = x.shape[-2:]
    if pad_mode == "zeros":
        return x[n, c, i, j] if 0 <= i < h and 0 <= j < w else x.new_zeros(())
    return x[n, c, _reflect(i, h), _reflect(j, w)]


def aggregation_loops(x, weight, k, s, d, pad_mode):
    """out[n,c,h,w] = sum_{kh,kw} W[n, c mod Cw, kh*k+kw, h*Wo+w] * X~[n, c, h*s-p+kh*d, w*s-p+kw*d]."""
    n_, c_, h_, w_ = x.shape
    cw = weight.shape[1]
    p = (d * (k - 1) + 1) // 2
    ho, wo = output_size(h_, k, s, d), output_size(w_, k, s, d)
    out = x.new_zeros(n_, c_, ho, wo)
    for n, c, h, w in itertools.product(range(n_), range(c_), range(ho), range(wo)):
        acc = x.new_zeros(())
        for kh, kw in itertools.product(range(k), range(k)):
            acc = acc + weight[n, c % cw, kh * k + kw, h * wo + w] * _pixel(
                x, n, c, h * s - p + kh * d, w * s - p + kw * d, pad_mode)
        out[n, c, h, w] = acc
    return out


def subtraction2_loops(a, b, k, s, d, pad_mode):
    n_, c_, h_, w_ = a.shape
    p = (d * (k - 1) + 1) // 2
    ho, wo = output_size(h_, k, s, d), output_size(w_, k, s, d)
    out = a.new_zeros(n_, c_, k * k, ho * wo)
    for n, c, h, w in itertools.product(range(n_), range(c_), range(ho), range(wo)):
        centre = a[n, c, h * s - p + (k - 1) // 2 * d, w * s - p + (k - 1) // 2 * d]
        for kh, kw in itertools.product(range(k), range(k)):
            out[n, c, kh * k + kw, h * wo + w] = centre - _pixel(b, n, c, h * s - p + kh * d, w * s - p + kw * d,
                                                                 pad_mode)
    return out


def _rand(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


def _assert_same_forward_backward(fast_fn, ref_fn, *inputs, atol=1e-12):
    """fp64: equal outputs and equal gradients for every input under one random upstream gradient."""
    copies = [t.detach().clone().requires_grad_() for t in inputs]
    fast, ref = fast_fn(*inputs), ref_fn(*copies)
    torch.testing.assert_close(fast, ref, rtol=0, atol=atol)
    g = torch.randn_like(fast)
    fast.backward(g)
    ref.backward(g)
    for i, (t, c) in enumerate(zip(inputs, copies)):
        torch.testing.assert_close(t.grad, c.grad, rtol=0, atol=atol, msg=f"gradient of input {i}")


@pytest.mark.parametrize("k,s,d,pad_mode", [(3, 1, 1, "reflect"), (3, 2, 1, "zeros"), (5, 2, 2, "reflect")])
def test_operators_match_literal_formula(k, s, d, pad_mode):
    torch.manual_seed(0)
    h, w = 7, 6
    x = _rand(2, 6, h, w, grad=False)
    ho, wo = output_size(h, k, s, d), output_size(w, k, s, d)
    weight = _rand(2, 3, k * k, ho * wo, grad=False)  # Cw = 3, channels 0,3 share group 0 (interleaved)
    expected = aggregation_loops(x, weight, k, s, d, pad_mode)
    torch.testing.assert_close(aggregation(x, weight, k, s, d, pad_mode), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(aggregation_reference(x, weight, k, s, d, pad_mode), expected, rtol=0, atol=1e-12)
    a, b = _rand(2, 3, h, w, grad=False), _rand(2, 3, h, w, grad=False)
    expected = subtraction2_loops(a, b, k, s, d, pad_mode)
    torch.testing.assert_close(subtraction2(a, b, k, s, d, pad_mode), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(subtraction2_reference(a, b, k, s, d, pad_mode), expected, rtol=0, atol=1e-12)


def test_weight_sharing_is_interleaved_not_blocked():
    x = torch.ones(1, 4, 5, 5, dtype=torch.float64)
    weight = torch.zeros(1, 2, 9, 25, dtype=torch.float64)
    weight[:, 1] = 1.0  # only group 1 is non-zero -> channels 1 and 3 (c mod 2 == 1), not channels 2 and 3
    out = aggregation(x, weight, 3)
    assert out[0, [0, 2]].abs().max() == 0
    torch.testing.assert_close(out[0, [1, 3]], torch.full((2, 5, 5), 9.0, dtype=torch.float64))


@pytest.mark.parametrize("k,s,d,pad_mode", GEOMETRIES)
def test_aggregation_fast_matches_reference_fp64(k, s, d, pad_mode):
    torch.manual_seed(k * 100 + s * 10 + d)
    h, w = 11, 9
    ho, wo = output_size(h, k, s, d), output_size(w, k, s, d)
    _assert_same_forward_backward(lambda a, b: aggregation(a, b, k, s, d, pad_mode),
                                  lambda a, b: aggregation_reference(a, b, k, s, d, pad_mode),
                                  _rand(2, 8, h, w), _rand(2, 4, k * k, ho * wo))


@pytest.mark.parametrize("k,s,d,pad_mode", GEOMETRIES)
def test_subtraction_fast_matches_reference_fp64(k, s, d, pad_mode):
    torch.manual_seed(k + s + d)
    _assert_same_forward_backward(lambda a, b: subtraction2(a, b, k, s, d, pad_mode),
                                  lambda a, b: subtraction2_reference(a, b, k, s, d, pad_mode),
                                  _rand(2, 3, 10, 9), _rand(2, 3, 10, 9))
    p = _rand(1, 2, 8, 7, grad=False)
    torch.testing.assert_close(subtraction(p, k, s, d, pad_mode), subtraction_reference(p, k, s, d, pad_mode))


@pytest.mark.parametrize("k,s,d,pad_mode", [(3, 1, 1, "reflect"), (5, 4, 2, "reflect"), (3, 2, 1, "zeros")])
def test_gradcheck_fast_operators(k, s, d, pad_mode):
    torch.manual_seed(1)
    h, w = 9, 8
    ho, wo = output_size(h, k, s, d), output_size(w, k, s, d)
    x, weight = _rand(1, 4, h, w), _rand(1, 2, k * k, ho * wo)
    assert torch.autograd.gradcheck(lambda a, b: aggregation(a, b, k, s, d, pad_mode), (x, weight))
    a, b = _rand(1, 2, h, w), _rand(1, 2, h, w)
    assert torch.autograd.gradcheck(lambda u, v: subtraction2(u, v, k, s, d, pad_mode), (a, b))


def test_aggregation_memory_never_holds_unfolded_copy():
    # The forward saves only the padded input and the weight: no tensor of the unfolded size C*K*L is kept.
    x = torch.randn(1, 16, 20, 20, requires_grad=True)
    weight = torch.randn(1, 2, 49, 400, requires_grad=True)
    out = aggregation(x, weight, 7)
    saved = out.grad_fn.saved_tensors
    assert max(t.numel() for t in saved) <= max(weight.numel(), 16 * 26 * 26)


def test_conv1x1_matches_conv2d():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 5, 4, 6), torch.randn(7, 5, 1, 1), torch.randn(7)
    torch.testing.assert_close(conv1x1(x, w, b), torch.nn.functional.conv2d(x, w, b))
    torch.testing.assert_close(conv1x1(x, w), torch.nn.functional.conv2d(x, w))
    xt = x.permute(0, 1, 3, 2)  # non-contiguous: falls back to conv2d
    torch.testing.assert_close(conv1x1(xt, w, b), torch.nn.functional.conv2d(xt, w, b))


def _randomise_bn(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("sa_type,relation,pad_mode", [("pairwise", r, "reflect") for r in PAIRWISE_RELATIONS]
                         + [("patchwise", r, "reflect") for r in PATCHWISE_RELATIONS]
                         + [("pairwise", "subtraction", "zeros"), ("patchwise", "concatenation", "zeros")])
@pytest.mark.parametrize("training", [True, False])
def test_self_attention_fast_matches_reference(sa_type, relation, pad_mode, training):
    torch.manual_seed(0)
    k = 3 if relation == "clique_product" else 5
    fast = SelfAttention2d(sa_type, 32, 4, 16, 8, k, relation=relation, pad_mode=pad_mode).double()
    _randomise_bn(fast)
    ref = SelfAttention2d(sa_type, 32, 4, 16, 8, k, relation=relation, implementation="reference",
                          pad_mode=pad_mode).double()
    ref.load_state_dict(fast.state_dict())
    fast.train(training)
    ref.train(training)
    x = _rand(2, 32, 9, 8)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = fast(x), ref(x2)
    assert y.shape == (2, 16, 9, 8)
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-10)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-10)
    for (name, p), p2 in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p2.grad, rtol=0, atol=1e-10, msg=name)
    if training:  # running statistics move identically
        for b1, b2 in zip(fast.buffers(), ref.buffers()):
            torch.testing.assert_close(b1, b2, rtol=0, atol=1e-12)


def test_pairwise_weights_sum_to_one_and_patchwise_are_unnormalised():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 6, 6)
    pair = SelfAttention2d("pairwise", 32, 4, 16, 8, 3).eval()
    rel = pair._pairwise_relation(pair.conv1(x), pair.conv2(x))
    w_pair = pair.conv_w(torch.cat([rel, pair._position(x).expand(2, -1, -1, -1)], 1)).softmax(-2)
    torch.testing.assert_close(w_pair.sum(dim=2), torch.ones(2, 2, 36))
    patch = SelfAttention2d("patchwise", 32, 4, 16, 8, 3).eval()
    w_patch = patch._patchwise_weight(patch.conv1(x), patch.conv2(x))
    assert w_patch.shape == (2, 2, 9, 36)
    assert not torch.allclose(w_patch.sum(dim=2), torch.ones(2, 2, 36))


def test_bad_inputs_name_the_argument():
    x = torch.randn(1, 8, 6, 6)
    with pytest.raises(ValueError, match="`x` must be 4D"):
        aggregation(x[0], torch.randn(1, 2, 9, 36), 3)
    with pytest.raises(ValueError, match=r"`weight` must have shape \(N, Cw, kernel_size\*\*2"):
        aggregation(x, torch.randn(1, 2, 8, 36), 3)
    with pytest.raises(ValueError, match="multiple of `weight` channels"):
        aggregation(x, torch.randn(1, 3, 9, 36), 3)
    with pytest.raises(TypeError, match="floating-point"):
        aggregation(x.long(), torch.randn(1, 2, 9, 36), 3)
    with pytest.raises(ValueError, match="too small for reflection padding of 3"):
        aggregation(torch.randn(1, 8, 3, 3), torch.randn(1, 2, 49, 9), 7)
    with pytest.raises(ValueError, match="`kernel_size` must be odd"):
        aggregation(x, torch.randn(1, 2, 16, 49), 4)
    with pytest.raises(ValueError, match="`pad_mode`"):
        aggregation(x, torch.randn(1, 2, 9, 36), 3, pad_mode="circular")
    with pytest.raises(ValueError, match="same shape"):
        subtraction2(x, torch.randn(1, 8, 5, 6), 3)
    with pytest.raises(ValueError, match="`relation` for sa_type='pairwise'"):
        SelfAttention2d("pairwise", 32, 4, 16, 8, 3, relation="star_product")


def test_autocast_bf16_runs():
    m = SelfAttention2d("pairwise", 32, 4, 16, 8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 32, 6, 6))
    y.float().sum().backward()
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("native", [True, False], ids=["kernels", "pytorch"])
@pytest.mark.parametrize("sa_type", ["pairwise", "patchwise"])
@pytest.mark.parametrize("k,pad_mode,hw", [(3, "reflect", (9, 8)), (7, "reflect", (11, 13)), (5, "zeros", (6, 7))])
def test_fused_inference_paths_match_reference_fp64(sa_type, k, pad_mode, hw, native):
    """Inference (no autograd, BN with running statistics) runs the fused paths, through the CPU kernels or the
    PyTorch ones (relzoo.layers.san_native.disabled()); both equal the unfold reference."""
    import contextlib
    from unittest import mock

    import relzoo.layers.san as san
    from relzoo.layers import san_native

    torch.manual_seed(k)
    fast = SelfAttention2d(sa_type, 32, 4, 16, 8, k, pad_mode=pad_mode).double().eval()
    _randomise_bn(fast)
    ref = SelfAttention2d(sa_type, 32, 4, 16, 8, k, pad_mode=pad_mode, implementation="reference").double().eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(3, 32, *hw, dtype=torch.float64) * 2
    fused = ("pairwise_subtraction_attention_eval" if sa_type == "pairwise" else
             "patchwise_concat_attention_eval" if native else "patchwise_concat_hidden_eval")
    path = contextlib.nullcontext if native else san_native.disabled
    with path(), mock.patch.object(san, fused, wraps=getattr(san, fused)) as spy, torch.no_grad():
        y = fast(x)
        assert spy.call_count == 1  # the fused path ran
        torch.testing.assert_close(y, ref(x), rtol=0, atol=1e-10)
    with path(), mock.patch.object(san, fused, wraps=getattr(san, fused)) as spy:
        fast(x)  # with autograd on, the differentiable ops run instead
        assert spy.call_count == 0


def test_fused_pairwise_softmax_is_stable_for_large_logits():
    """The online softmax keeps a running maximum: logits far beyond exp's range give the reference's weights."""
    torch.manual_seed(0)
    m = SelfAttention2d("pairwise", 32, 4, 16, 8, 5).eval()
    ref = SelfAttention2d("pairwise", 32, 4, 16, 8, 5, implementation="reference").eval()
    with torch.no_grad():
        m.conv_w[5].weight.mul_(400.0)  # logits spread over thousands: a fixed shift would overflow float32
        ref.load_state_dict(m.state_dict())
        x = torch.randn(2, 32, 9, 9)
        y, y_ref = m(x), ref(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


def test_fused_pairwise_never_holds_the_relation_or_the_weights():
    """Peak memory of the fused pairwise inference stays far below the (N, C_rel + 2, K, L) relation it avoids."""
    from torch.profiler import profile

    m = SelfAttention2d("pairwise", 256, 16, 64, 8, 7).eval()
    x = torch.randn(2, 256, 56, 56)
    relation_bytes = 2 * (16 + 2) * 49 * 56 * 56 * 4  # 22 MB; the fused working set is bounded by its 4 MiB chunks
    peaks = {}
    for name, grad in (("fused", False), ("autograd", True)):
        with torch.set_grad_enabled(grad), profile(profile_memory=True) as prof:
            m(x)
        current = peak = 0
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        for e in sorted(events, key=lambda e: e.start_ns()):
            current += e.nbytes()
            peak = max(peak, current)
        peaks[name] = peak
    assert peaks["fused"] < relation_bytes and peaks["fused"] * 6 < peaks["autograd"], peaks


def test_fused_pairwise_under_bf16_autocast():
    torch.manual_seed(0)
    m = SelfAttention2d("pairwise", 32, 4, 16, 8, 3).eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        expected = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.05)


def test_operators_are_fx_leaves_and_scriptable():
    """fx graphs call the operators (checks run at call time); TorchScript compiles them (unfold under script)."""
    import torch.fx

    m = SelfAttention2d("pairwise", 16, 4, 16, 8, 3)
    gm = torch.fx.symbolic_trace(m)
    called = {n.target.__name__ for n in gm.graph.nodes if n.op == "call_function" and hasattr(n.target, "__name__")}
    assert {"subtraction2", "subtraction", "aggregation", "position_grid", "conv1x1"} <= called
    x = torch.randn(2, 16, 6, 7)
    torch.testing.assert_close(gm(x), m(x))
    with pytest.raises(ValueError, match="`a` spatial size"):
        gm(torch.randn(2, 16, 1, 7))  # the operators' checks run inside the traced graph

    def f(x, w):  # user code calling an operator: list it in autowrap_functions to keep it a leaf
        return aggregation(x, w, 3)

    gm = torch.fx.GraphModule({}, torch.fx.Tracer(autowrap_functions=(aggregation,)).trace(f))
    x, w = torch.randn(1, 4, 5, 5), torch.randn(1, 2, 9, 25)
    torch.testing.assert_close(gm(x, w), aggregation(x, w, 3))
    scripted = torch.jit.script(aggregation)
    torch.testing.assert_close(scripted(x, w, 3), aggregation(x, w, 3))
    torch.testing.assert_close(torch.jit.script(subtraction2)(x, x.flip(-1), 3), subtraction2(x, x.flip(-1), 3))
