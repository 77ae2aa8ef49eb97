"""Bad input found by the probes of issue 21, at the model level: named errors instead of silent poisoning, raw torch
errors, unbounded allocations or misleading messages."""
import json

import pytest
import timm
import torch

from relzoo import (
    HSNetConfig,
    HSNetForFewShotSegmentation,
    SANConfig,
    SANForImageClassification,
    add_batchformer,
    batchformer_targets,
)

TINY_SAN = dict(widths=[32, 32, 64, 64, 128], stem_width=16, layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3])


def test_a_nan_pixel_in_training_is_refused_before_it_poisons_batchnorm():
    model = timm.create_model("san10_patch", num_classes=3, **TINY_SAN).train()
    x = torch.randn(2, 3, 64, 64)
    x[1, 0, 5, 5] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with pytest.raises(ValueError, match="`pixel_values` holds NaN or infinite values: in training they would poison "
                                         "every BatchNorm running statistic"):
        model(x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        assert torch.isnan(model.eval()(x)).any()            # inference: the NaN just propagates, nothing is kept


def test_labels_outside_the_classes_are_named():
    model = SANForImageClassification(SANConfig.from_variant("san10_pair", num_labels=5, **{
        "widths": TINY_SAN["widths"], "stem_width": 16, "layers": [1] * 5, "kernels": [3] * 5}))
    with pytest.raises(ValueError, match=r"`labels` must be class ids in \[0, 4\] \(num_labels=5\), got values from 0 "
                                         r"to 7"):
        model(torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 7]))


@pytest.fixture(scope="module")
def hsnet():
    return HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet18"))


def _episode(size=64, shots=1):
    return (torch.randn(1, 3, size, size), torch.randn(1, shots, 3, size, size), torch.ones(1, shots, size, size),
            torch.zeros(1, size, size, dtype=torch.long))


def test_hsnet_refuses_labels_that_give_a_nan_loss(hsnet):
    q, s, m, y = _episode()
    with pytest.raises(ValueError, match=r"`labels` hold only ignored pixels \(255\): the loss would be NaN"):
        hsnet(q, s, m, torch.full_like(y, 255))
    q[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="`query_pixel_values` holds NaN or infinite values: the loss would be NaN"):
        hsnet(q, s, m, y)


def test_hsnet_refuses_a_correlation_that_cannot_fit_before_allocating(hsnet, monkeypatch):
    """A 1600 px query on resnet18 (full mask) tried one 6.4 GB allocation; the limit is checked before the backbone
    runs, and it is a setting."""
    calls = []
    monkeypatch.setattr(hsnet, "extract_features", lambda x: calls.append(x.shape) or [])
    big = torch.zeros(1, 3, 1600, 1600)
    with pytest.raises(ValueError, match=r"query 1600x1600 and support 1600x1600 need a 11.9 GiB correlation at "
                                         r"stride 8 \(1 episode\(s\) x 2 taps\), above max_correlation_gib=4"):
        hsnet(big, big[:, None], torch.ones(1, 1, 1600, 1600))
    assert calls == []
    with pytest.raises(ValueError, match="`max_correlation_gib` must be a positive number"):
        HSNetConfig(max_correlation_gib=0)


def test_batchformer_targets_checks_their_length():
    model = add_batchformer(timm.create_model("resnet10t", num_classes=3), version=1).train()
    model(torch.randn(4, 3, 32, 32))
    assert batchformer_targets(model, torch.arange(4)).shape == (8,)
    with pytest.raises(ValueError, match="`targets` has 3 entries but the model's last forward pass had 4 images"):
        batchformer_targets(model, torch.arange(3))
    with pytest.raises(ValueError, match="one entry per image"):
        batchformer_targets(model, torch.tensor(1))


@pytest.mark.parametrize("config_text, expected", [
    (None, r"config.json' is missing: .* is not a model folder written by save_pretrained"),
    ("null", r"config.json' must hold a JSON object \(a model config\), got NoneType"),
    ("[" * 100_000 + "]" * 100_000, r"config.json' is not readable JSON \(RecursionError"),
    ("{not json", r"config.json' is not readable JSON \(JSONDecodeError"),
])
def test_a_broken_config_json_is_named_in_one_line(tmp_path, config_text, expected):
    from relzoo import HSNetForFewShotSegmentation as cls

    cls(HSNetConfig(backbone="resnet18")).save_pretrained(tmp_path)
    if config_text is None:
        (tmp_path / "config.json").unlink()
    else:
        (tmp_path / "config.json").write_text(config_text)
    with pytest.raises((OSError, ValueError), match=expected) as err:
        cls.from_pretrained(tmp_path)
    assert "\n" not in str(err.value)


def test_a_flipped_header_byte_is_named(tmp_path):
    model = SANForImageClassification(SANConfig.from_variant("san10_pair", num_labels=2, **{
        "widths": TINY_SAN["widths"], "stem_width": 16, "layers": [1] * 5, "kernels": [3] * 5}))
    model.save_pretrained(tmp_path)
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    header = data.index(b'"dtype"')
    data[header + 1] = ord("X")                                  # "Xtype": still JSON, no longer a tensor entry
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors' is not a safetensors file of tensors: entry .* is not a "
                                         r"tensor"):
        SANForImageClassification.from_pretrained(tmp_path)
    json.loads((tmp_path / "config.json").read_text())         # (the config itself is fine)
