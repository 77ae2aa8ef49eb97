"""API-Net on any timm classifier: the plug-in leaves the network's forward untouched (bit-identical), the training
loss is the official one on mined pairs, the transformers class round-trips through the Auto classes, and batches
or labels that cannot work are refused by name before the backbone runs."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from relzoo import APINetConfig, APINetForImageClassification, add_apinet, apinet_training_loss, remove_apinet
from relzoo.layers.apinet import apinet_loss, attentive_features, mine_pairs
from relzoo.models.apinet import has_apinet

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_plugin_keeps_the_network_and_the_loss_is_the_official_one():
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=3)
    model = add_apinet(copy.deepcopy(plain))
    assert has_apinet(model) and model.apinet.mutual.map1.in_features == 2 * 512
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) < set(model.state_dict()) and all(k.startswith("apinet.") for k in extra)
    x = torch.randn(6, 3, 64, 64)
    for mode in ("eval", "train"):                                  # its forward is the plain network's, always
        getattr(plain, mode)(), getattr(model, mode)()
        with torch.no_grad():
            assert torch.equal(model(x), plain(x))
    torch.manual_seed(3)
    out = apinet_training_loss(model, x, LABELS)
    torch.manual_seed(3)                                            # the same dropout draws, by hand
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    logits = model.fc(pooled)
    anchors, partners = mine_pairs(pooled, LABELS)
    four = attentive_features(pooled[anchors], pooled[partners], model.apinet.mutual)
    total, ce, rank = apinet_loss(tuple(model.fc(f) for f in four), LABELS[anchors], LABELS[partners])
    torch.testing.assert_close(out.loss, total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.ce, ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.rank, rank, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-6)
    assert out.logits.shape == (6, 3) and out.pooled.shape == (6, 512)
    out.loss.backward()
    assert model.apinet.mutual.map1.weight.grad.abs().sum() > 0 and model.conv1.weight.grad.abs().sum() > 0
    stripped = remove_apinet(model)
    assert set(stripped.state_dict()) == set(plain.state_dict()) and not has_apinet(stripped)


def test_vit_and_label_smoothing_are_accepted():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                            num_classes=3)
    add_apinet(vit, hidden=16)
    smooth = apinet_training_loss(vit, torch.randn(6, 3, 32, 32), LABELS,
                                  cross_entropy=lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1))
    assert smooth.loss.isfinite() and smooth.features.shape[:2] == (6, 17)


class _Counting(nn.Module):
    calls = 0

    def forward(self, x):
        _Counting.calls += 1
        return x


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, 0, 0, 0]), "at least 2 classes"),
    (torch.tensor([0, 0, 1, 2]), r"classes \[1, 2\] have one"),
    (torch.tensor([1]), "at least 2 images"),
    (torch.tensor([0, 0, 7, 7]), r"`labels` must be class ids in \[0, 2\]"),
])
def test_bad_batches_are_refused_before_the_backbone(labels, message):
    model = add_apinet(timm.create_model("resnet18", num_classes=3))
    model.conv1 = nn.Sequential(_Counting(), model.conv1)
    _Counting.calls = 0
    with pytest.raises(ValueError, match=message):
        apinet_training_loss(model.train(), torch.randn(len(labels), 3, 32, 32), labels)
    assert _Counting.calls == 0


def test_bad_calls_are_named():
    model = timm.create_model("resnet18", num_classes=3)
    with pytest.raises(ValueError, match="has no API-Net plug-in"):
        apinet_training_loss(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 1, 1]))
    headless = add_apinet(timm.create_model("resnet18", num_classes=0))   # waits for reset_classifier()
    with pytest.raises(ValueError, match="API-Net needs a classifier; ResNet has none"):
        apinet_training_loss(headless, torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 1, 1]))
    headless.reset_classifier(2)
    assert apinet_training_loss(headless, torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 1, 1])).loss.isfinite()
    add_apinet(model)
    with pytest.raises(ValueError, match="already has an API-Net"):
        add_apinet(model)
    with pytest.raises(ValueError, match="integer class ids"):
        apinet_training_loss(model, torch.randn(4, 3, 32, 32), torch.zeros(4))
    with pytest.raises(ValueError, match="`hidden` must be a positive int"):
        add_apinet(timm.create_model("resnet18", num_classes=3), hidden=0)

    class Unsplit(nn.Module):                                       # a head that is not pre-logits + classifier
        def __init__(self):
            super().__init__()
            self.fc, self.in_chans = nn.Linear(4, 2), 4

        def forward_features(self, x):
            return x.mean((2, 3))

        def forward_head(self, x, pre_logits=False):
            return x if pre_logits else self.fc(x) * 2

        def get_classifier(self):
            return self.fc

    with pytest.raises(ValueError, match="followed by get_classifier"):
        add_apinet(Unsplit())


def test_transformers_model_is_the_timm_model_at_inference_and_round_trips(tmp_path):
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    model = APINetForImageClassification(APINetConfig(backbone="resnet18", num_labels=3, hidden_size=64))
    plain = timm.create_model("resnet18", num_classes=3)
    plain.load_state_dict({k: v for k, v in model.classifier.state_dict().items() if not k.startswith("apinet.")})
    x = torch.randn(6, 3, 64, 64)
    model.eval(), plain.eval()
    with torch.no_grad():
        out = model(x, labels=LABELS, output_hidden_states=True)
        assert torch.equal(out.logits, plain(x))
        torch.testing.assert_close(out.loss, F.cross_entropy(plain(x), LABELS))
    assert [h.shape for h in out.hidden_states] == [(6, 512, 2, 2), (6, 512)]
    torch.manual_seed(1)
    train = model.train()(x, labels=LABELS)
    torch.manual_seed(1)
    torch.testing.assert_close(train.loss, apinet_training_loss(model.classifier, x, LABELS).loss)
    assert model(x).logits.shape == (6, 3)                          # training without labels: the plain network
    model.save_pretrained(tmp_path)
    again = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(again, APINetForImageClassification)
    with torch.no_grad():
        assert torch.equal(again(x).logits, model.eval()(x).logits)
    model.config.problem_type = "regression"
    with pytest.raises(ValueError, match="API-Net trains single-label classifiers"):
        model.train()(x, labels=LABELS.float())
    with pytest.raises(ValueError, match="`mutual_dropout` must be in"):
        APINetConfig(mutual_dropout=1.0)
