"""HSNet layers: centre-pivot 4D convolution against a dense 4D convolution (float64, forward and gradients),
hypercorrelation, support masking, and the learner's shapes, parameter counts and official module names."""
import pytest
import torch
import torch.nn.functional as F

from relzoo.layers.hsnet import (
    CenterPivotConv4d,
    HypercorrelationLearner,
    center_pivot_conv4d_reference,
    correlation,
    hypercorrelation,
    masked_features,
    shot_hypercorrelation,
    upsample_query_dims,
)


@pytest.mark.parametrize("kernel,stride,shape", [(3, 2, (2, 3, 5, 6, 7, 9)), (5, 4, (1, 2, 4, 3, 9, 6)),
                                                 (3, 1, (1, 2, 3, 4, 5, 4)), (3, (2, 3), (1, 2, 4, 4, 7, 7)),
                                                 (5, 2, (1, 1, 2, 2, 1, 1))])
def test_center_pivot_conv4d_equals_the_dense_4d_convolution(kernel, stride, shape):
    torch.manual_seed(0)
    layer = CenterPivotConv4d(shape[1], 3, kernel, stride).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    out, ref = layer(x), center_pivot_conv4d_reference(x, layer)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    params = [x, *layer.parameters()]
    fast = torch.autograd.grad(out, params, grad)
    slow = torch.autograd.grad(ref, params, grad)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_center_pivot_conv4d_skips_all_zero_support_positions_exactly():
    # the first layer's input is zero outside the support mask: conv1 gives its bias there without running
    torch.manual_seed(2)
    layer = CenterPivotConv4d(3, 5, 3, stride=2).double()
    x = torch.randn(2, 3, 6, 5, 9, 8, dtype=torch.float64)
    x[..., :4, :] = 0                                          # support rows 0..3 of every query position
    x[1, ..., 6:, 4:] = 0
    calls = []
    hook = layer.conv1.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    fast = layer(x)                                            # no input gradient wanted: positions skipped
    hook.remove()
    assert calls == [2 * 5 * 4 - 2 * 2 * 4 - 4]                # of 2 x 5 x 4 pruned positions, 20 are all zero
    ref = center_pivot_conv4d_reference(x, layer)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    params = list(layer.parameters())
    grads = torch.autograd.grad(fast.square().sum(), params)
    refs = torch.autograd.grad(ref.square().sum(), params)
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-9)
    zero = torch.zeros(1, 3, 4, 4, 3, 3, dtype=torch.float64)  # every position skipped: conv1 still takes part,
    layer.zero_grad()                                          # so data-parallel training sees its gradient
    layer(zero).sum().backward()
    assert layer.conv1.weight.grad is not None and layer.conv1.weight.grad.abs().sum() == 0
    x.requires_grad_(True)                                     # an input gradient is wanted: nothing skipped
    grads = torch.autograd.grad(layer(x).square().sum(), [x, *params])
    refs = torch.autograd.grad(center_pivot_conv4d_reference(x, layer).square().sum(), [x, *params])
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-9)


def test_center_pivot_conv4d_follows_each_inputs_support_size():
    """The official layer caches its pruning indices from the first input; ours follows every input's size."""
    layer = CenterPivotConv4d(2, 2, 3, 2).double()
    for hb, wb in ((8, 8), (5, 7), (9, 4)):
        x = torch.randn(1, 2, 3, 3, hb, wb, dtype=torch.float64)
        out = layer(x)
        assert out.shape[-2:] == (-(-hb // 2), -(-wb // 2))
        torch.testing.assert_close(out, center_pivot_conv4d_reference(x, layer), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        CenterPivotConv4d(2, 2, 4)
    with pytest.raises(ValueError, match=r"\(B, C, Ha, Wa, Hb, Wb\)"):
        layer(torch.randn(1, 2, 3, 3))


def test_correlation_is_clamped_cosine_with_eps_on_the_norm():
    torch.manual_seed(1)
    q = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    s = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    s[:, :, 0, 0] = 0                                               # a masked-out support position
    corr = correlation(q, s)
    assert corr.shape == (2, 3, 4, 2, 3)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                for k in range(2):
                    for m in range(3):
                        u, v = q[b, :, i, j], s[b, :, k, m]
                        want = max(0.0, float(u @ v / ((u.norm() + 1e-5) * (v.norm() + 1e-5))))
                        assert abs(float(corr[b, i, j, k, m]) - want) < 1e-12
    assert torch.all(corr[:, :, :, 0, 0] == 0) and not torch.isnan(corr).any()


def test_hypercorrelation_groups_levels_deepest_first():
    shapes = [(8, 8)] * 4 + [(4, 4)] * 6 + [(2, 3)] * 3             # ResNet-50: (4, 6, 3) taps, shallow first
    q = [torch.rand(2, 6, *s) for s in shapes]
    s = [torch.rand(2, 6, *s) for s in shapes]
    levels = hypercorrelation(q, s, (4, 6, 3))
    assert [tuple(t.shape) for t in levels] == [(2, 3, 2, 3, 2, 3), (2, 6, 4, 4, 4, 4), (2, 4, 8, 8, 8, 8)]
    torch.testing.assert_close(levels[1][:, 2], correlation(q[6], s[6]))
    with pytest.raises(ValueError, match="13 in all"):
        hypercorrelation(q[:-1], s[:-1], (4, 6, 3))


@pytest.mark.parametrize("masked", [True, False])
def test_shot_hypercorrelation_equals_per_shot_masked_hypercorrelation(masked):
    # the fast path: B queries x K shots, query taps normalised once, columns outside the mask never computed
    g = torch.Generator().manual_seed(3)
    b, k, groups = 2, 3, (2, 1, 1)
    shapes = [(8, 12, 10), (8, 12, 10), (16, 6, 5), (32, 3, 3)]
    q = [torch.randn(b, c, h, w, generator=g, dtype=torch.float64) for c, h, w in shapes]
    s = [torch.randn(b * k, c, h + 1, w, generator=g, dtype=torch.float64) for c, h, w in shapes]
    masks = torch.zeros(b, k, 40, 30, dtype=torch.float64)
    masks[0, 0, 5:15, 3:9] = 1                                 # a small object
    masks[0, 1] = 1                                            # everything
    masks[1, 0, 30:, 20:] = 1                                  # a corner
    masks[1, 2, ::7, ::5] = 1                                  # scattered pixels; masks[0, 2] and [1, 1] stay empty
    fast = shot_hypercorrelation(q, s, groups, masks if masked else None)
    repeated = [f.repeat_interleave(k, dim=0) for f in q]
    supports = masked_features(s, masks.flatten(0, 1)) if masked else s
    slow = hypercorrelation(repeated, supports, groups)
    assert [tuple(f.shape) for f in fast] == [(6, 1, 3, 3, 4, 3), (6, 1, 6, 5, 7, 5), (6, 2, 12, 10, 13, 10)]
    for a, r in zip(fast, slow):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)
    if masked:
        assert fast[0][2].abs().sum() == 0 and fast[2][4].abs().sum() == 0   # empty masks: all zero


def test_support_mask_is_resized_bilinearly_with_aligned_corners():
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:5, 3:6] = 1
    feats = [torch.ones(1, 3, 8, 8), torch.ones(1, 3, 3, 5)]
    out = masked_features(feats, mask)
    torch.testing.assert_close(out[0], mask[:, None].expand(1, 3, 8, 8))
    want = F.interpolate(mask[:, None], (3, 5), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out[1], want.expand(1, 3, 3, 5))
    assert ((out[1] > 0) & (out[1] < 1)).any()                      # soft at the boundary


def test_upsample_query_dims_leaves_support_dims():
    x = torch.randn(2, 3, 4, 5, 2, 3)
    up = upsample_query_dims(x, (7, 9))
    assert up.shape == (2, 3, 7, 9, 2, 3)
    torch.testing.assert_close(up[..., 1, 2], F.interpolate(x[..., 1, 2], (7, 9), mode="bilinear",
                                                            align_corners=True))


@pytest.mark.parametrize("taps,expected", [((1, 3, 3), 2_570_018), ((3, 6, 4), 2_573_794), ((3, 23, 4), 2_587_394)])
def test_learner_parameter_counts_equal_the_official_ones(taps, expected):
    """VGG-16, ResNet-50 and ResNet-101 learners (brief §2.5)."""
    assert sum(p.numel() for p in HypercorrelationLearner(taps).parameters()) == expected


def test_learner_module_names_and_shapes_follow_the_official_layout():
    learner = HypercorrelationLearner((3, 6, 4))
    shapes = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
    assert shapes["encoder_layer4.0.conv1.weight"] == (16, 3, 3, 3)
    assert shapes["encoder_layer3.0.conv2.weight"] == (16, 6, 5, 5)
    assert shapes["encoder_layer2.3.conv1.weight"] == (64, 16, 5, 5)
    assert shapes["encoder_layer4to3.7.weight"] == (128,)
    assert shapes["decoder2.2.weight"] == (2, 64, 3, 3)
    corr = [torch.rand(1, 3, 4, 4, 4, 4), torch.rand(1, 6, 7, 7, 7, 7), torch.rand(1, 4, 13, 13, 13, 13)]
    assert learner(corr).shape == (1, 2, 26, 26)


def test_learner_takes_non_square_maps():
    """The official decoder doubles the last side for both dims (square maps only); ours doubles each side."""
    learner = HypercorrelationLearner((1, 3, 3))
    corr = [torch.rand(2, 1, 4, 6, 4, 6), torch.rand(2, 3, 7, 12, 7, 12), torch.rand(2, 3, 13, 23, 13, 23)]
    out = learner(corr)
    assert out.shape == (2, 2, 26, 46)
    out.sum().backward()
    assert all(p.grad is not None for p in learner.parameters())
