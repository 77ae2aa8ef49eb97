"""HSNet model: shapes (non-square too), frozen eval-mode backbone, official trainable parameter count, K-shot vote
with query features computed once, Auto classes and save/load, bad input named before the backbone runs."""
import pytest
import torch
from transformers import AutoConfig, AutoModel

from relzoo import AutoModelForFewShotSegmentation, HSNetConfig, HSNetForFewShotSegmentation
from relzoo.models.hsnet import official_order_forward


@pytest.fixture(scope="module")
def resnet50_hsnet():
    torch.manual_seed(0)
    return HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet50"))


def _episode(b=2, k=1, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, h, w, generator=g), torch.randn(b, k, 3, h, w, generator=g),
            (torch.rand(b, k, h, w, generator=g) > 0.5).float(), torch.randint(0, 2, (b, h, w), generator=g))


def test_forward_training_step_and_frozen_backbone(resnet50_hsnet):
    model = resnet50_hsnet.train()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2_573_794   # the official learner
    assert not model.backbone.training and not any(p.requires_grad for p in model.backbone.parameters())
    stats = model.backbone.bn1.running_mean.clone()
    q, s, m, y = _episode()
    y[0, :4] = 255                                                    # ignored pixels are allowed in labels
    out = model(q, s, m, y)
    assert out.logits.shape == (2, 2, 64, 96) and out.predicted_mask.shape == (2, 64, 96)
    assert out.shot_logits is None and torch.equal(out.predicted_mask, out.logits.argmax(1))
    out.loss.backward()
    assert model.learner.encoder_layer2[0].conv1.weight.grad is not None
    assert torch.equal(model.backbone.bn1.running_mean, stats)


def test_k_shot_vote_reads_query_features_once(resnet50_hsnet):
    model = resnet50_hsnet.eval()
    q, s, m, _ = _episode(k=3, seed=1)
    calls = []
    hook = model.backbone.conv1.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            out = model(q, s, m)
    finally:
        hook.remove()
    assert calls == [2, 6]                                            # queries once, all B*K supports once
    assert out.shot_logits.shape == (2, 3, 2, 64, 96)
    with torch.no_grad():
        for k in range(3):                                            # each shot = the 1-shot model on that shot
            single = model(q, s[:, k:k + 1], m[:, k:k + 1]).logits
            torch.testing.assert_close(out.shot_logits[:, k], single, rtol=1e-5, atol=1e-5)
    votes = out.shot_logits.argmax(2).sum(1).float()
    expected = (votes / votes.flatten(1).max(1).values.clamp(min=1)[:, None, None] >= 0.5).long()
    assert torch.equal(out.predicted_mask, expected)
    torch.testing.assert_close(out.logits, out.shot_logits.mean(1))


@pytest.mark.parametrize("b,k", [(1, 1), (2, 1), (1, 5), (2, 5)])
def test_fast_path_equals_the_official_order(resnet50_hsnet, b, k):
    model = resnet50_hsnet.eval()
    q, s, m, _ = _episode(b=b, k=k, seed=4)
    m[:, 0] = 0
    m[:, 0, 10:30, 20:50] = 1                                          # a small object: most columns are skipped
    if k > 1:
        m[0, 1] = 0                                                    # an empty mask
    with torch.no_grad():
        out = model(q, s, m)
    predicted, shot_logits = official_order_forward(model, q, s, m)
    fast = out.shot_logits if k > 1 else out.logits[:, None]
    torch.testing.assert_close(fast, shot_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.predicted_mask, predicted)


def test_support_mask_matters_and_dagger_variant_ignores_it(resnet50_hsnet):
    model = resnet50_hsnet.eval()
    q, s, m, _ = _episode(seed=2)
    with torch.no_grad():
        a, b = model(q, s, m).logits, model(q, s, 1 - m).logits
    assert not torch.allclose(a, b)
    unmasked = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet50", use_support_mask=False)).eval()
    with torch.no_grad():
        torch.testing.assert_close(unmasked(q, s, m).logits, unmasked(q, s, 1 - m).logits)


def test_save_load_through_the_auto_classes(tmp_path):
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone="vgg16")).eval()
    assert [len(level) for level in model.config.feature_taps] == [3, 3, 1]
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).feature_taps == model.config.feature_taps
    q, s, m, _ = _episode(b=1, h=64, w=64, seed=3)
    for loader in (AutoModel, AutoModelForFewShotSegmentation):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is HSNetForFewShotSegmentation
        with torch.no_grad():
            torch.testing.assert_close(loaded(q, s, m).logits, model(q, s, m).logits)


def test_backbone_is_frozen_on_every_load_path(tmp_path):
    """from_pretrained builds new parameters: the backbone must come out frozen from every loader (it came out with
    28 M trainable parameters on ResNet-50), so an optimiser over model.parameters() trains the learner only."""
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet50"))
    model.save_pretrained(tmp_path)
    for loader in (HSNetForFewShotSegmentation, AutoModel, AutoModelForFewShotSegmentation):
        loaded = loader.from_pretrained(tmp_path)
        for mode in (False, True):
            loaded.train(mode)
            assert sum(p.numel() for p in loaded.parameters() if p.requires_grad) == 2_573_794, (loader, mode)
            assert not loaded.backbone.training


def test_boolean_support_masks_are_accepted(resnet50_hsnet):
    model = resnet50_hsnet.eval()
    q, s, m, _ = _episode(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(q, s, m.bool()).logits, model(q, s, m).logits)


def test_the_backbone_keeps_nothing_after_its_last_tap(tmp_path):
    """HSNet never runs the backbone's classifier: VGG-16's 123.6 M parameters of pre_logits and head made a 564 MB
    folder. The model holds the backbone up to its taps (VGG-16 backbone 14.7 M + learner 2.57 M)."""
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone="vgg16")).eval()
    assert model.pruned_backbone_modules == ["pre_logits", "head"]
    assert sum(p.numel() for p in model.parameters()) == 14_714_688 + 2_570_018
    assert not any(k.startswith(("backbone.pre_logits", "backbone.head")) for k in model.state_dict())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 80e6
    resnet = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet18"))
    assert resnet.pruned_backbone_modules == ["global_pool", "fc"]
    q, s, m, _ = _episode(b=1, h=64, w=64, seed=8)
    with torch.no_grad():
        assert model(q, s, m).logits.shape == (1, 2, 64, 64)


def test_generic_backbone_and_non_square_images():
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone="convnext_nano")).eval()
    q, s, m, _ = _episode(b=1, h=64, w=160, seed=4)
    with torch.no_grad():
        assert model(q, s, m).logits.shape == (1, 2, 64, 160)


BAD = [
    (lambda q, s, m, y: (q, s, m[..., :-1], y), ValueError, r"`support_masks` must have shape \(2, 1, 64, 96\)"),
    (lambda q, s, m, y: (q, s, m * 2, y), ValueError, r"`support_masks` must hold only \(0, 1\)"),
    (lambda q, s, m, y: (q, s, m, y * 7), ValueError, r"`labels` must hold only \(0, 1, 255\)"),
    (lambda q, s, m, y: (q, s, m, y[:, :-1]), ValueError, r"`labels` must have shape \(2, 64, 96\)"),
    (lambda q, s, m, y: (q, s, m, y.float()), TypeError, "`labels` must be an integer tensor"),
    (lambda q, s, m, y: (q[:1], s, m, None), ValueError, "must have the query's batch size 1"),
    (lambda q, s, m, y: (q, s[:, :0], m[:, :0], y), ValueError, r"holds no shot \(K = 0"),
    (lambda q, s, m, y: (q, s[:, 0], m, y), ValueError, r"5D tensor \(B, K, 3, H, W\)"),
    (lambda q, s, m, y: (q[:, :1], s, m, y), ValueError, r"`query_pixel_values` must have 3 channels"),
    (lambda q, s, m, y: ((q * 255).to(torch.uint8), s, m, y), TypeError, "floating-point"),
    (lambda q, s, m, y: (q[..., :20, :20], s[..., :20, :20], m[..., :20, :20], y[..., :20, :20]), ValueError,
     "at least 32 px"),
]


@pytest.mark.parametrize("change,error,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_is_named_before_the_backbone_runs(resnet50_hsnet, change, error, message):
    calls = []
    hook = resnet50_hsnet.backbone.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error, match=message):
            resnet50_hsnet(*change(*_episode()))
    finally:
        hook.remove()
    assert not calls


@pytest.mark.parametrize("field,value,message", [("feature_taps", [["a"], []], "three non-empty lists"),
                                                 ("backbone_kwargs", {"num_classes": 3}, "must not set"),
                                                 ("image_size", 16, "`image_size` must be an int >= 32"),
                                                 ("use_support_mask", "yes", "must be a bool")])
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        HSNetConfig(**{field: value})


def _official_checkpoint(model, path, extra=None):
    """A state dict in the official layout: DataParallel's `module.` prefix, `hpn_learner.`, backbone included."""
    state = {}
    for key, value in model.state_dict().items():
        official = "module." + ("hpn_learner." + key.removeprefix("learner.") if key.startswith("learner.") else key)
        state[official] = value.clone()
    state.update(extra or {})
    torch.save(state, path)


@pytest.mark.parametrize("backbone,extra", [
    ("resnet50", {"module.backbone.fc.weight": torch.zeros(1000, 2048), "module.backbone.fc.bias": torch.zeros(1000)}),
    ("vgg16", {"module.backbone.classifier.0.weight": torch.zeros(4096, 25088 // 64)}),  # torchvision's heads
])
def test_official_checkpoint_converts_to_an_equal_model(tmp_path, backbone, extra):
    from relzoo.hub import convert_official_hsnet

    torch.manual_seed(5)
    source = HSNetForFewShotSegmentation(HSNetConfig(backbone=backbone)).eval()
    _official_checkpoint(source, tmp_path / "best_model.pt", extra)
    folder = convert_official_hsnet(tmp_path / "best_model.pt", backbone, tmp_path / "out")
    loaded = AutoModelForFewShotSegmentation.from_pretrained(folder).eval()
    q, s, m, _ = _episode(b=1, h=64, w=64, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(q, s, m).logits, source(q, s, m).logits)
    assert (folder / "README.md").read_text().count("converted official weights") == 1


def test_converter_names_what_does_not_match(tmp_path):
    from relzoo.hub import convert_official_hsnet

    source = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet50"))
    _official_checkpoint(source, tmp_path / "rn50.pt")
    with pytest.raises(ValueError, match=r"does not match HSNet on resnet101: .*missing \(module\.backbone\.layer3\.6"):
        convert_official_hsnet(tmp_path / "rn50.pt", "resnet101", tmp_path / "out")
    with pytest.raises(ValueError, match="must be one of"):
        convert_official_hsnet(tmp_path / "rn50.pt", "resnet18", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_official_hsnet(tmp_path / "rn50.pt", "resnet50", tmp_path / "out")


def test_convert_script_reports_errors_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "scripts" / "convert.py"), "hsnet", "--backbone", "resnet50",
                           "--checkpoint", str(tmp_path / "none.pt"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("does not exist or is not a file")
