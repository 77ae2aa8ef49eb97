"""BatchFormer added to timm models in one call: bit-identical in evaluation, two streams in training (2B rows,
targets duplicated), V1 in front of the classifier, V2 after named ViT blocks / CNN stages, deepcopy-safe hooks,
pretrained keys unchanged, named errors."""
import copy

import pytest
import timm
import torch

from relzoo.models.batchformer import add_batchformer, batchformer_targets, has_batchformer


def test_v1_resnet_eval_is_bit_identical_and_training_has_two_streams():
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=5)
    model = add_batchformer(copy.deepcopy(plain), version=1)
    assert has_batchformer(model) and model.batchformer.module.dim == 512
    assert set(plain.state_dict()) < set(model.state_dict())                 # existing keys unchanged
    assert all(k.startswith("batchformer.") for k in set(model.state_dict()) - set(plain.state_dict()))
    x = torch.randn(4, 3, 64, 64)
    plain.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))                                # no cost, no batch dependence
    plain.train(), model.train()
    out = model(x)
    assert out.shape == (8, 5)
    torch.testing.assert_close(out[:4], plain(x), rtol=0, atol=1e-6)          # the plain stream is the network
    y = torch.arange(4)
    loss = torch.nn.functional.cross_entropy(out, batchformer_targets(model, y))
    loss.backward()
    assert model.batchformer.module.encoder.linear1.weight.grad is not None
    assert torch.equal(batchformer_targets(model, y), torch.cat([y, y]))
    model.eval()
    assert torch.equal(batchformer_targets(model, y), y)
    model.train()
    assert model(x[:1]).shape == (2, 5)                                        # a batch of one works


def test_v2_vit_after_two_blocks_shares_one_batchformer():
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=5)
    plain = timm.models.vision_transformer.VisionTransformer(**kw)
    model = add_batchformer(copy.deepcopy(plain), version=2, after=["blocks.1", "blocks.2"])
    assert model.batchformer.module.dim == 64 and len(model.batchformer.insertions) == 2
    x = torch.randn(3, 3, 32, 32)
    plain.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    plain.train(), model.train()
    seen = []
    hook = model.blocks[3].register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    out = model(x)
    hook.remove()
    assert out.shape == (6, 5) and seen == [6]                                 # 2B after the first insertion point
    torch.testing.assert_close(out[:3], plain(x), rtol=0, atol=1e-5)          # the plain stream never sees BF
    out.sum().backward()
    assert model.batchformer.module.encoder.self_attn.in_proj_weight.grad is not None


def test_v2_on_cnn_maps_and_deepcopy_keeps_hooks_on_the_copy():
    torch.manual_seed(0)
    model = add_batchformer(timm.create_model("resnet18", num_classes=5), version=2, after="layer3")
    assert model.batchformer.module.dim == 256
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.batchformer.parameters():
            p.zero_()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    a = model.train()(x)
    torch.manual_seed(1)
    b = twin.train()(x)
    assert a.shape == b.shape == (4, 5)
    assert not torch.equal(a, b)                                               # the copy uses its own BatchFormer
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5)


def test_bad_calls_are_named():
    model = timm.create_model("resnet18", num_classes=5)
    with pytest.raises(ValueError, match=r"`after` names no module of ResNet: \['blocks.8'\]"):
        add_batchformer(model, version=2, after=["blocks.8"])
    with pytest.raises(ValueError, match="`version` must be 1 or 2"):
        add_batchformer(model, version=3)
    with pytest.raises(ValueError, match="different channel counts"):
        add_batchformer(model, version=2, after=["layer2", "layer3"])
    with pytest.raises(ValueError, match="has no get_classifier"):
        add_batchformer(torch.nn.Conv2d(3, 3, 1), version=1)
    add_batchformer(model)
    with pytest.raises(ValueError, match="already has a BatchFormer"):
        add_batchformer(model)


def test_transformers_model_equals_the_timm_model_in_evaluation_and_round_trips(tmp_path):
    from transformers import AutoModelForImageClassification

    from relzoo import BatchFormerConfig, BatchFormerForImageClassification

    model = BatchFormerForImageClassification(BatchFormerConfig(backbone="resnet18", num_labels=4)).eval()
    plain = timm.create_model("resnet18", num_classes=4).eval()
    state = {k: v for k, v in model.classifier.state_dict().items() if not k.startswith("batchformer.")}
    plain.load_state_dict(state)
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 3])
    with torch.no_grad():
        assert torch.equal(model(x).logits, plain(x))                         # inference is the plain network
    torch.manual_seed(5)                                                       # BatchFormer's dropout
    out = model.train()(x, labels=y)                                           # training: both streams in the loss
    torch.manual_seed(5)
    streams = model.classifier(x)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(streams, torch.cat([y, y])),
                               rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path)
    again = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(x).logits, model.eval()(x).logits)
    with pytest.raises(ValueError, match="`insert_after` must name at least one module for version 2"):
        BatchFormerConfig(version=2)


@pytest.mark.parametrize("version, after", [(1, None), (2, ["layer3.0", "layer3.1"])])
def test_remove_batchformer_gives_back_the_plain_network(version, after):
    from relzoo import remove_batchformer

    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=3)
    model = remove_batchformer(copy.deepcopy(add_batchformer(copy.deepcopy(plain), version=version, after=after)))
    assert set(model.state_dict()) == set(plain.state_dict()) and not has_batchformer(model)
    x = torch.randn(2, 3, 32, 32)
    plain.train(), model.train()                                       # no hook left: training has one stream
    assert torch.equal(model(x), plain(x))
    with pytest.raises(ValueError, match="has no BatchFormer plug-in"):
        remove_batchformer(model)


def test_v1_follows_reset_classifier_and_waits_on_a_headless_model():
    torch.manual_seed(0)
    model = add_batchformer(timm.create_model("resnet18", num_classes=5), version=1)
    x = torch.randn(3, 3, 32, 32)
    model.reset_classifier(7)                                           # a new classifier module
    assert model.train()(x).shape == (6, 7)                             # BatchFormer still in front of it
    model.reset_classifier(0)
    assert model(x).shape == (3, 512)                                   # headless: nothing to do
    headless = add_batchformer(timm.create_model("resnet18", num_classes=0), version=1)
    assert headless.batchformer.module.dim == 512 and headless.train()(x).shape == (3, 512)
    headless.reset_classifier(4)
    assert headless(x).shape == (6, 4)


def test_grey_models_are_probed_with_their_own_channels():
    from relzoo import add_apinet

    grey = add_batchformer(timm.create_model("resnet18", num_classes=3, in_chans=1), version=2, after="layer3")
    assert grey.batchformer.module.dim == 256 and grey.train()(torch.randn(2, 1, 32, 32)).shape == (4, 3)
    assert add_apinet(timm.create_model("resnet18", num_classes=3, in_chans=1)).apinet.mutual.map2.out_features == 512
