"""API-Net layers: pair mining against a loop reference (and named errors where the official code silently pairs
with image 0), the mutual-vector MLP's official shape, the four gated features and the loss written out by hand."""
import pytest
import torch
import torch.nn.functional as F

from relzoo.layers.apinet import MutualVector, apinet_loss, attentive_features, mine_pairs, mine_pairs_reference


def test_pairs_equal_the_loop_reference_and_are_detached():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        labels = torch.arange(6).repeat_interleave(3)[torch.randperm(18, generator=g)]
        feats = torch.randn(18, 7, generator=g, requires_grad=True)
        anchors, partners = mine_pairs(feats, labels)
        ref_a, ref_p = mine_pairs_reference(feats, labels)
        assert torch.equal(anchors, ref_a) and torch.equal(partners, ref_p)
        n = len(labels)
        assert (labels[partners[:n]] == labels).all() and (partners[:n] != torch.arange(n)).all()   # intra
        assert (labels[partners[n:]] != labels).all()                                               # inter
        assert not anchors.requires_grad and not partners.requires_grad


@pytest.mark.parametrize("labels,message", [
    ([3], "at least 2 images, got 1"),
    ([1, 1, 1], r"at least 2 classes .* only class \[1\]"),
    ([0, 0, 1, 2, 2], r"classes \[1\] have one"),
])
def test_batches_that_cannot_be_paired_are_named(labels, message):
    labels = torch.tensor(labels)
    with pytest.raises(ValueError, match=message):
        mine_pairs(torch.randn(len(labels), 4), labels)


def test_mutual_vector_has_the_official_shape_and_no_activation():
    mv = MutualVector(2048)
    assert [type(m).__name__ for m in mv.children()] == ["Linear", "Dropout", "Linear"]
    assert (mv.map1.in_features, mv.map1.out_features, mv.map2.out_features, mv.drop.p) == (4096, 512, 2048, 0.5)
    assert sum(p.numel() for p in mv.parameters()) == 4096 * 512 + 512 + 512 * 2048 + 2048
    mv.eval()
    a, b = torch.randn(3, 2048), torch.randn(3, 2048)
    # linear in its input (no activation): f(2u) - f(0) = 2 (f(u) - f(0))
    zero = mv(torch.zeros(3, 2048), torch.zeros(3, 2048))
    torch.testing.assert_close(mv(2 * a, 2 * b) - zero, 2 * (mv(a, b) - zero), rtol=1e-4, atol=1e-4)


def test_attentive_features_and_loss_by_hand():
    torch.manual_seed(0)
    mv = MutualVector(5, hidden=4).double().eval()
    x1, x2 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    xm = mv.map2(mv.map1(torch.cat([x1, x2], 1)))
    g1, g2 = torch.sigmoid(xm * x1), torch.sigmoid(xm * x2)
    feats = attentive_features(x1, x2, mv)
    for got, want in zip(feats, (x1 + x1 * g1, x1 + x1 * g2, x2 + x2 * g2, x2 + x2 * g1)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    fc = torch.nn.Linear(5, 4).double()
    logits = tuple(fc(f) for f in feats)
    y1, y2 = torch.tensor([0, 1, 3]), torch.tensor([0, 2, 3])
    total, ce, rank = apinet_loss(logits, y1, y2)
    rows = torch.cat([logits[0], logits[2], logits[1], logits[3]])
    want_ce = F.cross_entropy(rows, torch.cat([y1, y2, y1, y2]))
    t = torch.cat([y1, y2])
    p_self = torch.cat([logits[0], logits[2]]).softmax(1)[torch.arange(6), t]
    p_other = torch.cat([logits[1], logits[3]]).softmax(1)[torch.arange(6), t]
    want_rank = (p_other - p_self + 0.05).clamp(min=0).mean()
    torch.testing.assert_close(ce, want_ce, rtol=0, atol=1e-12)
    torch.testing.assert_close(rank, want_rank, rtol=0, atol=1e-12)
    torch.testing.assert_close(total, want_ce + want_rank, rtol=0, atol=1e-12)
