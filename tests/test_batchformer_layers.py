"""BatchFormer V1/V2 layers: attention runs across the batch (permutation-equivariant, per token position for V2),
the official layer shape, V1's two streams with duplicated labels, V2's DETR-style insertion points, identity at
evaluation, batch of 1, named errors."""
import pytest
import torch

from relzoo.layers.batchformer import BatchFormer, BatchFormerV2Insertion, batchformer_v1_streams


def _bf(dim=8, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return BatchFormer(dim, num_heads=4, dropout=dropout).double().train()


def test_official_layer_shape():
    bf = BatchFormer(512)
    layer = bf.encoder
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 512 and layer.dropout.p == 0.5
    assert not layer.norm_first and not layer.self_attn.batch_first            # post-LN, sequence-first
    assert sum(p.numel() for p in bf.parameters()) == 4 * 512 * 512 + 4 * 512 + 2 * 512 * 512 + 512 + 512 + 4 * 512


@pytest.mark.parametrize("shape", [(6, 8), (6, 5, 8), (6, 8, 3, 4)])
def test_permuting_the_batch_permutes_the_outputs(shape):
    bf = _bf()
    x = torch.randn(*shape, dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(bf(x[perm]), bf(x)[perm], rtol=0, atol=1e-12)


def test_v1_one_sample_changes_every_other_sample():
    bf = _bf()
    x = torch.randn(5, 8, dtype=torch.float64)
    y = x.clone()
    y[2] += 1.0
    changed = (bf(x) - bf(y)).abs().amax(dim=1) > 1e-9
    assert changed.all()                                                       # attention runs across the batch


@pytest.mark.parametrize("layout", ["tokens", "maps"])
def test_v2_one_sample_changes_the_others_only_at_the_same_position(layout):
    bf = _bf()
    x = torch.randn(4, 6, 8, dtype=torch.float64) if layout == "tokens" else torch.randn(4, 8, 2, 3,
                                                                                      dtype=torch.float64)
    y = x.clone()
    if layout == "tokens":
        y[1, 4] += 1.0                                                         # sample 1, token 4
        diff = (bf(x) - bf(y)).abs().amax(dim=2)                               # (N, L)
        expected = torch.zeros(4, 6, dtype=torch.bool)
        expected[:, 4] = True
    else:
        y[1, :, 1, 2] += 1.0                                                   # sample 1, position (1, 2)
        diff = (bf(x) - bf(y)).abs().amax(dim=1)                               # (N, H, W)
        expected = torch.zeros(4, 2, 3, dtype=torch.bool)
        expected[:, 1, 2] = True
    assert torch.equal(diff > 1e-9, expected)


def test_batch_of_one_is_the_layer_on_that_sample_alone():
    bf = _bf()
    x = torch.randn(1, 8, dtype=torch.float64)
    # one sample attends only to itself: the attention output is its own value projection
    torch.testing.assert_close(bf(x), bf.encoder(x[:, None]).squeeze(1), rtol=0, atol=0)
    assert torch.isfinite(bf(x)).all()


def test_v1_streams_duplicate_labels_in_training_and_do_nothing_in_evaluation():
    bf = _bf()
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.arange(5)
    feats, labels = batchformer_v1_streams(x, y, bf, training=True)
    assert feats.shape == (10, 8) and torch.equal(labels, torch.cat([y, y]))
    assert torch.equal(feats[:5], x) and torch.equal(feats[5:], bf(x))
    feats, labels = batchformer_v1_streams(x, y, bf, training=False)
    assert feats is x and labels is y                                          # untouched: bit-identical downstream


def test_v2_insertion_points_form_two_streams_and_vanish_in_evaluation():
    bf = _bf()
    first, later = BatchFormerV2Insertion(bf, first=True), BatchFormerV2Insertion(bf, first=False)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    two = first.train()(x)
    assert two.shape == (6, 5, 8) and torch.equal(two[:3], x) and torch.equal(two[3:], bf(x))
    after = later.train()(two)
    assert torch.equal(after[:3], two[:3]) and torch.equal(after[3:], bf(two[3:]))   # only the BF stream
    with pytest.raises(ValueError, match="expects the two-stream batch"):
        later(x)
    first.eval(), later.eval()
    assert first(x) is x and later(x) is x


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"`dim` \(10\) must be divisible by `num_heads` \(4\)"):
        BatchFormer(10)
    with pytest.raises(ValueError, match="`dropout` must be in"):
        BatchFormer(8, dropout=1.0)
    with pytest.raises(ValueError, match=r"BatchFormer\(8\) takes .* got shape \(2, 3\)"):
        BatchFormer(8)(torch.randn(2, 3))
