"""HSNet feature taps: the official tap sets on timm's ResNet-50/101 and VGG-16 (pre-ReLU where the official ones
are), and the generic rule for other timm CNNs."""
import pytest
import timm
import torch

from relzoo.models.hsnet_taps import FeatureTaps, builtin_taps, generic_taps, resolve_taps


@pytest.mark.parametrize("name,counts", [("resnet50", [4, 6, 3]), ("resnet101", [4, 23, 3]), ("vgg16", [3, 3, 1])])
def test_builtin_tap_sets_have_the_official_sizes_and_strides(name, counts):
    model = timm.create_model(name).eval()
    for module in model.modules():          # timm zero-initialises each block's last BN: make the sums non-trivial
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    taps = builtin_taps(name)
    assert [len(level) for level in taps] == counts
    with FeatureTaps(model, sum(taps, [])) as ft, torch.no_grad():
        feats = ft.run(torch.randn(1, 3, 128, 96))
    sizes = [tuple(f.shape[-2:]) for f in feats]
    expected = [(16, 12)] * counts[0] + [(8, 6)] * counts[1] + [(4, 3)] * counts[2]
    assert sizes == expected
    assert all((f < 0).any() for f in feats[:-1])                  # pre-ReLU (VGG's pool5 is after ReLU)


def test_resnet_taps_are_the_bottleneck_sums_before_the_final_relu():
    model = timm.create_model("resnet50").eval()
    block = model.layer3[2]
    with torch.no_grad():
        x = torch.randn(1, 512, 8, 8)
        features = model.layer3[1](model.layer3[0](x))
        with FeatureTaps(block, ["act3:input"]) as ft:
            tap = ft.run(features)[0]
        manual = block.bn3(block.conv3(block.act2(block.bn2(block.conv2(block.act1(block.bn1(block.conv1(
            features)))))))) + features
        torch.testing.assert_close(tap, manual)
        torch.testing.assert_close(block(features), torch.relu(manual))


@pytest.mark.parametrize("name", ["convnext_nano", "efficientnet_b0", "regnety_004", "resnet18"])
def test_generic_rule_taps_every_block_of_the_last_three_stages(name):
    model = timm.create_model(name).eval()
    taps = resolve_taps(name, model)
    assert builtin_taps(name) is None and all(len(level) >= 1 for level in taps)
    assert sum(len(level) for level in taps) > 3 or name == "regnety_004" and taps == generic_taps(model)
    with FeatureTaps(model, sum(taps, [])) as ft, torch.no_grad():
        feats = ft.run(torch.randn(1, 3, 64, 96))
    strides = [64 // f.shape[-2] for f in feats]
    assert strides == sorted(strides) and set(strides) == {8, 16, 32}


def test_regnet_stages_are_split_into_their_blocks():
    taps = generic_taps(timm.create_model("regnety_004"))
    assert [len(level) for level in taps] == [3, 6, 6] and taps[0][0] == "s2.b1"


def test_unknown_or_unreached_taps_are_named():
    model = timm.create_model("resnet18").eval()
    with pytest.raises(ValueError, match=r"\['layer9.0'\] name no module"):
        FeatureTaps(model, ["layer2.0", "layer9.0"])
    net = torch.nn.ModuleDict({"used": torch.nn.Conv2d(3, 3, 1), "unused": torch.nn.Conv2d(3, 3, 1)})
    net.forward = lambda x: net["used"](x)
    with FeatureTaps(net, ["used", "unused"]) as ft, pytest.raises(RuntimeError, match=r"\['unused'\] were not"):
        ft.run(torch.randn(1, 3, 4, 4))
