"""CrossTransformers and ProtoNet heads: the fast path against the per-query, per-class reference (float64, forward and
gradients), the attention's normalisation, the self-match sanity check, and the chunked path's memory bound."""
import pytest
import torch

from relzoo.layers.crosstransformer import (
    CrossAttentionHead,
    check_support_labels,
    cross_attention_logits,
    cross_attention_logits_reference,
    cross_attention_weights,
    prototype_logits,
    prototype_logits_reference,
)


def _inputs(q=5, p=6, s=7, m=9, dk=4, dv=3, seed=0, key_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()  # noqa: E731
    return make(q, p, dk), make(q, p, dv), make(s, m, dk, scale=key_scale), make(s, m, dv)


@pytest.mark.parametrize("labels", [[0, 1, 1, 2, 1, 2, 2], [0, 0, 0, 0, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6]])
@pytest.mark.parametrize("chunk_size", [0, 1, 2, 8])
def test_fast_matches_reference_forward_and_backward(labels, chunk_size):
    """Uneven shots (1 and 7 shots, one shot per class), every chunking; all four inputs get the same gradients."""
    labels = torch.tensor(labels)
    n = int(labels.max()) + 1
    inputs = _inputs()
    fast = cross_attention_logits(*inputs, labels, n, chunk_size=chunk_size)
    ref = cross_attention_logits_reference(*inputs, labels, n)
    assert fast.shape == (5, n)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    g_ref = torch.autograd.grad((ref * weights).sum(), inputs)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_support_and_query_of_different_sizes_and_large_logits():
    """Support maps 3x5, query maps 4x4; keys scaled so that logits reach the hundreds (the per-class maximum keeps
    the softmax finite where one shared maximum would underflow a whole class)."""
    labels = torch.tensor([1, 0, 1, 0])
    inputs = _inputs(q=3, p=16, s=4, m=15, dk=8, dv=5, key_scale=60.0)
    fast = cross_attention_logits(*inputs, labels, 2, chunk_size=2)
    ref = cross_attention_logits_reference(*inputs, labels, 2)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


def test_attention_weights_sum_to_one_per_class_and_query_position():
    labels = torch.tensor([0, 1, 1, 2, 1])
    qk, qv, sk, sv = _inputs(s=5)
    _, att = cross_attention_logits(qk, qv, sk, sv, labels, 3, return_attention=True)
    assert att.shape == (5, 6, 5, 9)
    for c in range(3):
        sums = att[:, :, labels == c].sum((-1, -2))
        torch.testing.assert_close(sums, torch.ones_like(sums))
    torch.testing.assert_close(att, cross_attention_weights(qk, sk, labels, 3))


def test_a_query_that_is_a_support_image_is_at_distance_zero_from_it():
    """The brief's sanity check for tied heads: keys and queries share a projection, values are shared too, so a query
    equal to a support image (its own class) is at distance ~0 once attention picks the identical positions."""
    torch.manual_seed(0)
    channels, side = 32, 4
    feats = torch.nn.functional.normalize(torch.randn(3, channels, side, side, dtype=torch.float64), dim=1)
    head = CrossAttentionHead(channels, key_dim=channels, value_dim=8).double()
    with torch.no_grad():
        head.key_proj.weight.copy_(torch.eye(channels, dtype=torch.float64)[:, :, None, None] * 40)
    logits = head(feats[1:2], feats, torch.tensor([0, 1, 2]), 3)
    distance = -logits[0]
    assert distance[1] < 1e-6 and distance[0] > 1e-2 and distance[2] > 1e-2
    assert head.key_proj.bias is None and head.value_proj.bias is None


def _saved(fn):
    """Sizes in bytes of the distinct tensors autograd keeps for the backward pass of ``fn`` (shared ones counted
    once), largest first."""
    kept = {}

    def pack(t):
        kept[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sorted(kept.values(), reverse=True)


def test_fast_path_never_keeps_attention_weights_and_chunks_bound_memory():
    """Under autograd the fast path keeps no (queries x positions x support positions) attention weights (the
    reference keeps them for every query and class); with chunks, what it keeps grows only like the queries' own
    features."""
    labels = torch.arange(5).repeat_interleave(5)                     # 5-way 5-shot, 49 positions, d = 16
    def run(q, chunk=None, reference=False):
        qk, qv, sk, sv = _inputs(q=q, p=49, s=25, m=49, dk=16, dv=16)
        if reference:
            return _saved(lambda: cross_attention_logits_reference(qk, qv, sk, sv, labels, 5).sum())
        return _saved(lambda: cross_attention_logits(qk, qv, sk, sv, labels, 5, chunk_size=chunk).sum())

    weights_per_query = 49 * 5 * 49 * 8                               # one query's weights over its class, float64
    assert run(64, reference=True)[0] >= weights_per_query            # the reference keeps them, one query at a time
    unchunked = run(64, 0)
    assert unchunked[0] <= 64 * 49 * 5 * 16 * 8                       # largest: the (N, Q*P, d_v) prototypes
    assert sum(unchunked) < sum(run(64, reference=True)) / 2
    small, large = sum(run(8, 4)), sum(run(64, 4))
    per_query_features = 49 * (16 + 16) * 8                           # query keys and values, float64
    assert large - small <= 1.1 * 56 * per_query_features
    assert sum(unchunked) > 3 * large


def test_prototype_logits_match_reference():
    g = torch.Generator().manual_seed(1)
    support = torch.randn(9, 6, generator=g, dtype=torch.float64)
    query = torch.randn(4, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 1, 2, 0, 0, 0, 1])
    torch.testing.assert_close(prototype_logits(query, support, labels, 3),
                               prototype_logits_reference(query, support, labels, 3))


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, 2, 2]), r"class\(es\) \[1\] have none"),
    (torch.tensor([0, -1, 1]), "class indices in 0..1"),
    (torch.tensor([0.0, 1.0, 1.0]), "integer class indices"),
    (torch.tensor([0, 1]), r"shape \(3,\)"),
])
def test_support_label_errors(labels, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_support_labels(labels, 3)


def test_empty_support_is_refused():
    with pytest.raises(ValueError, match="support set is empty"):
        check_support_labels(torch.zeros(0, dtype=torch.long), 0)
