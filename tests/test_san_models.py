"""SAN models: official parameter counts and key layout, timm conventions, transformers integration."""
import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import group_parameters

import relzoo
from relzoo import SANConfig, SANForImageClassification, SANModel
from relzoo.models.san import (
    HUB_REPOS,
    SAN_ARCHITECTURES,
    SAN_VARIANTS,
    checkpoint_filter_fn,
    min_input_size,
    official_to_timm_key,
)

OFFICIAL = {  # params at 1000 classes, state_dict entries (brief 1.6 / 1.7)
    "san10_pair": (10_531_848, 368), "san10_patch": (11_841_124, 348), "san15_pair": (14_065_436, 533),
    "san15_patch": (16_181_310, 503), "san19_pair": (17_596_156, 665), "san19_patch": (20_518_470, 627),
}
TINY = dict(widths=[32, 32, 64, 64, 128], stem_width=32, layers=[1, 1, 1, 1, 1])  # fast stand-in for tests


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_parameter_counts_and_key_counts_equal_official(variant):
    model = timm.create_model(variant)
    params, entries = OFFICIAL[variant]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == entries


def test_registry_and_pretrained_cfg():
    assert sorted(timm.list_models("san*")) == sorted(OFFICIAL)
    assert [m for m in timm.list_pretrained() if m.startswith("san")] == []  # no weights are published yet
    assert sorted(timm.list_models("san*", include_tags=True)) == sorted(f"{v}.untrained" for v in OFFICIAL)
    cfg = timm.create_model("san10_patch").pretrained_cfg
    assert cfg["tag"] == "untrained" and not cfg.get("hf_hub_id") and not cfg.get("url")
    assert HUB_REPOS["san10_patch"] == "relzoo/san10_patch.in1k"  # kept for publishing
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406) and cfg["first_conv"] == "stem.conv"
    assert cfg["classifier"] == "fc"


def test_block_key_shapes_follow_official_layout():
    pair = timm.create_model("san10_pair").state_dict()
    patch = timm.create_model("san10_patch").state_dict()
    b = "stages.1.blocks.0."
    assert pair[b + "sam.conv_w.0.weight"].shape == (18,)
    assert pair[b + "sam.conv_w.2.weight"].shape == (16, 18, 1, 1)
    assert pair[b + "sam.conv_w.5.weight"].shape == (8, 16, 1, 1)
    assert pair[b + "sam.conv_p.weight"].shape == (2, 2, 1, 1)
    assert patch[b + "sam.conv_w.0.weight"].shape == (800,)
    assert patch[b + "sam.conv_w.2.weight"].shape == (8, 800, 1, 1)
    assert patch[b + "sam.conv_w.5.weight"].shape == (392, 8, 1, 1)
    assert b + "sam.conv_p.weight" not in patch
    assert patch[b + "conv.weight"].shape == (256, 64, 1, 1) and patch["stages.4.conv.weight"].shape == (2048, 1024, 1, 1)


def test_official_key_renaming():
    assert official_to_timm_key("module.conv_in.weight") == "stem.conv.weight"
    assert official_to_timm_key("module.bn_in.running_var") == "stem.bn.running_var"
    assert official_to_timm_key("module.conv3.weight") == "stages.3.conv.weight"
    assert official_to_timm_key("module.bn4.bias") == "stages.4.norm.bias"
    assert official_to_timm_key("module.layer2.1.sam.conv_w.5.bias") == "stages.2.blocks.1.sam.conv_w.5.bias"
    assert official_to_timm_key("module.fc.weight") == "fc.weight"


def test_timm_conventions():
    model = timm.create_model("san10_patch", num_classes=7, **TINY).eval()
    x = torch.randn(2, 3, 128, 128)
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 4, 4)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    assert model(x).shape == (2, 7)
    assert model.get_classifier().out_features == 7 and model.get_classifier(name_only=True) == "fc"
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    groups = group_parameters(model, model.group_matcher())
    assert len(groups) >= 6 and len(group_parameters(model, model.group_matcher(coarse=True))) == 6
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]


def test_features_only_over_five_stages():
    model = timm.create_model("san10_pair", features_only=True, **TINY)
    outs = model(torch.randn(1, 3, 128, 128))
    assert [o.shape[1:] for o in outs] == [(32, 64, 64), (32, 32, 32), (64, 16, 16), (64, 8, 8), (128, 4, 4)]
    assert model.feature_info.channels() == [32, 32, 64, 64, 128]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    sub = timm.create_model("san10_pair", features_only=True, out_indices=(2, 4), **TINY)
    assert len(sub(torch.randn(1, 3, 128, 128))) == 2
    fx = timm.create_model("san10_pair", features_only=True, feature_cls="fx", out_indices=(1, 3), **TINY).eval()
    with torch.no_grad():
        assert [o.shape[1:] for o in fx(torch.randn(1, 3, 128, 128))] == [(32, 32, 32), (64, 8, 8)]


def test_forward_intermediates_and_pruning():
    model = timm.create_model("san10_patch", **TINY).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == [32, 32, 64, 64, 128]
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[-1] for t in last2] == [8, 4]
        getter = timm.create_model("san10_patch", features_only=True, feature_cls="getter", out_indices=(1, 3), **TINY)
        assert [t.shape[1] for t in getter(x)] == [32, 64]
        kept = model.prune_intermediate_layers([0, 2])
        assert kept == [0, 2] and len(model.stages) == 3 and model.num_features == 64
        assert [t.shape[1] for t in model.forward_intermediates(x, [0, 2], intermediates_only=True)] == [32, 64]
    with pytest.raises(ValueError, match="`output_fmt`"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_grad_checkpointing_gives_same_gradients():
    x = torch.randn(2, 3, 128, 128)
    torch.manual_seed(0)
    a = timm.create_model("san10_patch", num_classes=4, **TINY)
    torch.manual_seed(0)
    b = timm.create_model("san10_patch", num_classes=4, **TINY)
    b.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in b.stages)
    a(x).sum().backward()
    b(x).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["timm", "transformers-reentrant", "transformers-non-reentrant"])
def test_checkpointed_training_leaves_the_same_batchnorm_statistics_and_gradients(how):
    """The recomputation in backward must not count the batch again in BatchNorm's running statistics."""
    x, labels = torch.randn(2, 3, 128, 128), torch.tensor([0, 2])

    def build():
        torch.manual_seed(0)
        return SANForImageClassification(SANConfig(sa_type="pairwise", num_labels=3, **TINY)).train()

    plain, checkpointed = build(), build()
    if how == "timm":
        plain, checkpointed = plain.to_timm().train(), checkpointed.to_timm().train()
        checkpointed.set_grad_checkpointing(True)
    else:
        checkpointed.gradient_checkpointing_enable({"use_reentrant": how == "transformers-reentrant"})
    for _ in range(2):  # two steps: statistics and momentum must be back in place after each recomputation
        for model in (plain, checkpointed):
            out = model(x) if how == "timm" else model(x, labels=labels).logits
            torch.nn.functional.cross_entropy(out, labels).backward()
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name  # num_batches_tracked 2, not 4; running means moved twice, not four times
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert {m.momentum for m in checkpointed.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
@pytest.mark.parametrize("training", [True, False])
def test_model_fast_equals_reference_fp64(variant, training):
    torch.manual_seed(0)
    fast = timm.create_model(variant, num_classes=5, **TINY).double()
    with torch.no_grad():  # away from initialisation (weight 1, bias 0), where the centre tap's position difference
        for m in fast.modules():  # (exactly 0) puts BN0's output at ReLU's kink and rounding picks the subgradient
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    ref = timm.create_model(variant, num_classes=5, implementation="reference", **TINY).double()
    ref.load_state_dict(fast.state_dict())
    fast.train(training)
    ref.train(training)
    x = torch.randn(2, 3, 128, 136, dtype=torch.float64)
    y, y2 = fast(x), ref(x)
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-9)
    y.sum().backward()
    y2.sum().backward()
    for (name, p), p2 in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p2.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_bad_input_errors_name_the_problem():
    model = timm.create_model("san10_patch", num_classes=3, **TINY).eval()
    with pytest.raises(ValueError, match="must have 3 channels"):
        model(torch.randn(1, 1, 128, 128))
    with pytest.raises(ValueError, match="must be 4D"):
        model(torch.randn(3, 128, 128))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 128"):
        model(torch.randn(1, 3, 127, 200))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0]])
    for dtype in (torch.float64, torch.float16):  # another float dtype than the model's
        with pytest.raises(TypeError, match=f"must have the model's dtype torch.float32, got {dtype}"):
            model(torch.randn(1, 3, 128, 128, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 3)  # autocast mixes dtypes on purpose
    with torch.no_grad():
        assert model(torch.randn(0, 3, 128, 128)).shape == (0, 3)  # an empty batch is fine in inference
    assert model(torch.randn(0, 3, 128, 128)).shape == (0, 3)
    with pytest.raises(ValueError, match="holds no image .* training needs a batch"):
        model.train()(torch.randn(0, 3, 128, 128))
    model.eval()
    assert min_input_size([3, 7, 7, 7, 7]) == 128 and min_input_size([3, 7, 7, 7, 3]) == 64
    assert min_input_size([3, 7, 7, 7, 7], "zeros") == 32
    grey = timm.create_model("san10_patch", in_chans=1, num_classes=3, **TINY).eval()
    assert grey(torch.randn(1, 1, 128, 128)).shape == (1, 3)


def test_pretrained_without_weights_fails_fast_with_instructions():
    with pytest.raises(RuntimeError, match="scripts/convert.py san --architecture san10_patch"):
        timm.create_model("san10_patch", pretrained=True)


def test_pretrained_from_local_file_and_head_adaptation(tmp_path):
    src = timm.create_model("san10_pair", **TINY)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    same = timm.create_model("san10_pair", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")),
                             **TINY)
    for k, v in src.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k
    other = timm.create_model("san10_pair", pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")), **TINY)
    assert other.fc.out_features == 4
    assert torch.equal(other.stem.conv.weight, src.stem.conv.weight)


def test_config_validation_and_serialisation():
    cfg = SANConfig.from_architecture("san15_pair", num_labels=4)
    assert SANConfig.from_variant("san15_pair", num_labels=4).to_dict() == cfg.to_dict()  # the former name
    assert SAN_VARIANTS is SAN_ARCHITECTURES
    assert cfg.layers == [3, 2, 3, 5, 2] and cfg.sa_type == "pairwise" and cfg.num_labels == 4
    again = SANConfig.from_dict(json.loads(cfg.to_json_string()))
    assert again.to_timm_kwargs() == cfg.to_timm_kwargs()
    with pytest.raises(ValueError, match="`sa_type`"):
        SANConfig(sa_type="global")
    with pytest.raises(ValueError, match="`relation`"):
        SANConfig(sa_type="patchwise", relation="subtraction")
    with pytest.raises(ValueError, match="same length"):
        SANConfig(layers=[1, 1], kernels=[3, 7, 7, 7, 7])
    with pytest.raises(ValueError, match="`architecture` must be one of .*got 'san11_pair'"):
        SANConfig.from_architecture("san11_pair")


@pytest.mark.parametrize("field,value,message", [
    ("layers", [2, 1, 2, 4, -1], r"`layers` must be a list of positive ints \(blocks per stage\), got \[2, 1, 2, 4, -1\]: entry 4 is -1"),
    ("layers", [0, 0, 0, 0, 0], r"`layers` .* entry 0 is 0"),
    ("kernels", "3,7,7,7,3", r"`kernels` must be a non-empty list of odd positive ints .* got '3,7,7,7,3' \(str\)"),
    ("kernels", [3, 7, 6, 7, 7], r"`kernels` .* entry 2 is 6"),
    ("widths", [64, 256, 512, 1024], r"one entry per stage"),
    ("widths", [64, 256, 500, 1024, 2048], r"`widths` must be divisible"),
    ("stem_width", 0, r"`stem_width` must be a positive int, got 0"),
    ("num_channels", "3", r"`num_channels` must be a positive int, got '3' \(str\)"),
    ("share_planes", 2.5, r"`share_planes` must be a positive int, got 2.5"),
    ("global_pool", "median", r"`global_pool` must be one of timm's pool types .* got 'median'"),
    ("drop_rate", 1.5, r"`drop_rate` must be a number in \[0, 1\), got 1.5"),
    ("pad_mode", "circular", r"`pad_mode` must be one of"),
])
def test_bad_config_json_fails_on_load_naming_the_field(tmp_path, field, value, message):
    from transformers import AutoModelForImageClassification

    config = SANConfig(num_labels=3, **TINY).to_dict()
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        SANConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        AutoModelForImageClassification.from_pretrained(tmp_path)
    timm_field = {"num_channels": "in_chans"}.get(field, field)
    with pytest.raises(ValueError, match=message.replace("num_channels", timm_field)):
        timm.create_model("san10_pair", **{**TINY, timm_field: value})


def test_transformers_round_trip_and_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    torch.manual_seed(0)
    timm_model = timm.create_model("san10_patch", num_classes=3, **TINY).eval()
    hf = SANForImageClassification.from_timm(timm_model, id2label={0: "a", 1: "b", 2: "c"},
                                             label2id={"a": 0, "b": 1, "c": 2}).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(hf(x).logits, timm_model(x))
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "san"
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SANForImageClassification) and loaded.config.id2label[2] == "c"
    for k, v in hf.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, hf(x).logits)
        back = loaded.to_timm().eval()
        assert torch.equal(back(x), timm_model(x))
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, SANModel)
    with torch.no_grad():
        out = base(x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 128, 4, 4) and out.pooler_output.shape == (2, 128)
    assert len(out.hidden_states) == 6


def test_transformers_loss_tuple_and_checkpointing():
    torch.manual_seed(0)
    model = SANForImageClassification(SANConfig(num_labels=3, **TINY))
    x, labels = torch.randn(2, 3, 128, 128), torch.tensor([0, 2])
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert model(x).loss is None
    tup = model(x, labels=labels, return_dict=False)
    assert isinstance(tup, tuple) and tup[0].ndim == 0
    model.gradient_checkpointing_enable()
    model.train()
    model(x, labels=labels).loss.backward()
    assert model.san.stem.conv.weight.grad is not None


def test_image_classification_pipeline(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    model = SANForImageClassification(SANConfig(num_labels=2, id2label={0: "cat", 1: "dog"},
                                                label2id={"cat": 0, "dog": 1}, **TINY))
    model.save_pretrained(tmp_path)
    relzoo.san_image_processor(128, 1.0).save_pretrained(tmp_path)
    classify = pipeline("image-classification", model=str(tmp_path))
    preds = classify(Image.fromarray((np.random.default_rng(0).random((90, 150, 3)) * 255).astype("uint8")))
    assert {p["label"] for p in preds} == {"cat", "dog"}
    assert abs(sum(p["score"] for p in preds) - 1) < 1e-4


def _official_state_dict(timm_state: dict) -> dict:
    """The inverse renaming, written independently of relzoo's rules: relzoo timm keys -> official `module.` keys."""
    out = {}
    for k, v in timm_state.items():
        parts = k.split(".")
        if parts[0] == "stem":
            name = {"conv": "conv_in", "bn": "bn_in"}[parts[1]] + "." + ".".join(parts[2:])
        elif parts[0] == "stages" and parts[2] == "blocks":
            name = f"layer{parts[1]}." + ".".join(parts[3:])
        elif parts[0] == "stages":
            name = {"conv": f"conv{parts[1]}", "norm": f"bn{parts[1]}"}[parts[2]] + "." + ".".join(parts[3:])
        else:
            name = k
        out["module." + name] = v
    return out


@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
def test_convert_official_checkpoint(tmp_path, variant):
    import subprocess
    import sys

    torch.manual_seed(0)
    src = timm.create_model(variant).eval()
    official = _official_state_dict(src.state_dict())
    assert len(official) == OFFICIAL[variant][1]
    assert "module.layer1.0.sam.conv_w.5.weight" in official and "module.conv_in.weight" in official
    ckpt = tmp_path / "model_best.pth"
    torch.save({"epoch": 100, "state_dict": official, "top1_val": 0.77}, ckpt)
    out = tmp_path / "converted"
    subprocess.run([sys.executable, "scripts/convert.py", "san", "--architecture", variant, "--checkpoint",
                    str(ckpt), "--output", str(out)], check=True, capture_output=True)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json",
                                               "README.md", "checksums.json"}
    hf = SANForImageClassification.from_pretrained(out).eval()
    assert hf.config.id2label[0] == "tench, Tinca tinca" and hf.config.label2id["goldfish, Carassius auratus"] == 1
    for k, v in src.state_dict().items():
        hf_key = "classifier." + k[3:] if k.startswith("fc.") else "san." + k
        assert torch.equal(hf.state_dict()[hf_key], v), k
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, src(x))  # fp32; weights are compared bit-exactly below
    # the timm loader reads the same folder through checkpoint_filter_fn
    again = timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")))
    assert torch.equal(again.state_dict()["stages.2.blocks.1.sam.conv_w.2.weight"],
                       src.state_dict()["stages.2.blocks.1.sam.conv_w.2.weight"])
    assert checkpoint_filter_fn({"state_dict": official}).keys() == src.state_dict().keys()


def test_convert_rejects_wrong_variant_naming_the_file_keys(tmp_path):
    import subprocess
    import sys

    from relzoo.hub import convert_official_san

    src = timm.create_model("san10_pair", num_classes=10)
    ckpt = tmp_path / "c.pth"
    torch.save({"state_dict": _official_state_dict(src.state_dict())}, ckpt)
    with pytest.raises(ValueError, match="does not match san10_patch") as err:
        convert_official_san(ckpt, "san10_patch", tmp_path / "out")
    message = str(err.value)
    assert "module.layer0.0.sam.conv_w.0.weight: expected (40,), found (6,)" in message  # the file's own names
    assert "unexpected (module.layer0.0.sam.conv_p.weight;" in message
    assert "It matches san10_pair: pass --architecture san10_pair." in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, "scripts/convert.py", "san", "--variant", "san10_patch", "--checkpoint",
                           str(ckpt), "--output", str(tmp_path / "out")], capture_output=True, text=True)  # former flag
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("convert.py san: error: checkpoint") and proc.stderr.count("\n") == 1


def test_convert_refuses_pickled_code_damaged_files_and_existing_output(tmp_path):
    import argparse
    import os

    from relzoo.hub import convert_official_san

    state = _official_state_dict(timm.create_model("san10_pair", num_classes=10).state_dict())
    code = tmp_path / "code.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(arch="san")}, code)  # what train scripts often save
    with pytest.raises(ValueError, match="holds Python code or objects besides tensors") as err:
        convert_official_san(code, "san10_pair", tmp_path / "out")
    assert "argparse.Namespace" in str(err.value) and "weights_only=False" not in str(err.value)
    damaged = tmp_path / "damaged.pth"
    good = tmp_path / "good.pth"
    torch.save({"state_dict": state}, good)
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
        convert_official_san(damaged, "san10_pair", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_official_san(tmp_path / "nope.pth", "san10_pair", tmp_path / "out")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert_official_san(good, "san10_pair", out)
    assert (out / "mine.txt").read_text() == "keep me"
    old_umask = os.umask(0o022)
    try:
        convert_official_san(good, "san10_pair", out, overwrite=True)
    finally:
        os.umask(old_umask)
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}


def test_variants_table_is_consistent():
    assert set(SAN_VARIANTS) == set(OFFICIAL)


def test_factory_device_dtype_and_reset_classifier():
    model = timm.create_model("san10_pair", num_classes=4, dtype=torch.float64, **TINY)
    assert model.in_chans == 3 and {p.dtype for p in model.parameters()} == {torch.float64}
    meta = timm.create_model("san10_patch", device="meta", **TINY)
    assert {p.device.type for p in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    model.eval()
    model.reset_classifier(7)
    assert model.fc.weight.dtype == torch.float64 and not model.fc.training
    model.reset_classifier(2, "catavgmax")
    assert model.head_hidden_size == 256 and model.fc.in_features == 256
    assert model(torch.randn(1, 3, 128, 128, dtype=torch.float64)).shape == (1, 2)


@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
def test_torchscript_save_load_matches_eager(variant, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=3, **TINY).eval()
    scripted = torch.jit.script(model)
    scripted.save(str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
def test_fx_graph_reads_batchnorm_statistics_at_run_time(variant):
    """Traced graphs keep BatchNorm buffers as graph inputs (no constants baked at trace time)."""
    import torch.fx

    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=3, **TINY).eval()
    with torch.no_grad():
        graph = torch.fx.symbolic_trace(model)
        assert not [n for n in graph.graph.nodes if n.op == "get_attr" and "_tensor_constant" in str(n.target)]
        for module in (model, graph):  # new statistics after tracing: the graph must see them
            for name, buf in module.named_buffers():
                if name.endswith("running_mean"):
                    buf.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(len(name)))
        x = torch.randn(2, 3, 128, 128)
        torch.testing.assert_close(graph(x), model(x))
    with pytest.raises(ValueError, match="must have 3 channels"):
        graph(torch.randn(1, 1, 128, 128))  # the input check runs inside the graph


@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
def test_torch_export_matches_eager(variant):
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 128, 128)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hw", [(128, 128), (131, 137)])
def test_banded_stem_and_fusion_switch_match_the_plain_path_fp64(hw):
    """Inference runs the banded stem (conv + BN + ReLU + max-pool per band of rows) and the fused attention;
    both equal the layer-by-layer computation, which set_fused_inference(False) and autograd select."""
    from relzoo.layers import set_fused_inference
    from relzoo.models.san import stem_eval

    torch.manual_seed(0)
    model = timm.create_model("san10_pair", num_classes=3, **TINY).double().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    stem = model.stem
    with torch.no_grad():
        plain_stem = stem.pool(stem.act(stem.bn(stem.conv(x))))
        stats = [stem.bn.weight, stem.bn.bias, stem.bn.running_mean, stem.bn.running_var]
        for band_bytes in (1, 50_000, 1 << 30):  # one row per band, a few rows, everything at once
            torch.testing.assert_close(stem_eval(x, stem.conv.weight, stats, stem.bn.eps, band_bytes), plain_stem,
                                       rtol=0, atol=1e-12)
        fused = model(x)
        unfused = set_fused_inference(model, False)(x)
        set_fused_inference(model, True)
    with torch.enable_grad():
        differentiable = model(x)
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-10)
    torch.testing.assert_close(fused, differentiable.detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
def test_torch_jit_trace_matches_eager(variant, tmp_path):
    import warnings

    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 128, 128)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-derived Python ints (a trace fixes shapes)
        torch.jit.save(torch.jit.trace(model, x), str(tmp_path / "t.pt"))
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "t.pt"))(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
def test_torch_compile_fullgraph_matches_eager(variant):
    """The operators are opaque custom ops: the whole model compiles as one graph (no breaks, no unrolled tap
    loops), in inference and in training, and gives eager's outputs and gradients. Inference goes through inductor's
    code generation; training through dynamo + AOT autograd (the operators' fake kernels, the joint forward/backward
    graph, functionalised BatchNorm updates) without inductor's C++ build, which alone takes two minutes per model on
    a cold cache here (the inductor training compile is exercised by `scripts/benchmark.py san --compile`)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=3, dtype=torch.float64, **TINY)  # fp64: fusion reorders sums
    with torch.no_grad():  # away from initialisation, where the centre tap's position difference (exactly 0) puts
        for m in model.modules():  # BN outputs at ReLU's kink and compiled/eager rounding picks either subgradient
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-9, atol=1e-10)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.load_state_dict(state)  # same BatchNorm statistics for the eager step
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-7, atol=1e-9, msg=n)


def test_unsettled_batchnorm_statistics_warn_with_the_remedy():
    """timm's train.py + validate.py on san10_patch gave NaN validation after a short run: inference activations grew
    block after block from BatchNorm running statistics that had not settled. Eval-mode features that are not finite
    warn, naming the remedy; re-estimating the statistics (torch.optim.swa_utils.update_bn) gives finite outputs."""
    import warnings

    torch.manual_seed(0)
    model = timm.create_model("san10_patch", num_classes=3, widths=[32, 32, 64, 64, 128], stem_width=16,
                              layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3])
    images = torch.randn(8, 3, 64, 64) * 3 + 1
    for module in model.modules():                     # running statistics far from what the data gives
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.fill_(1e-12)
    model.eval()
    with pytest.warns(RuntimeWarning, match="BatchNorm running statistics do not describe these activations"), torch.no_grad():
        assert not torch.isfinite(model(images)).all()
    with warnings.catch_warnings():                    # one warning per evaluation, not one per batch
        warnings.simplefilter("error")
        with torch.no_grad():
            model(images)
    with torch.device("meta"):                         # timm's shape checks run on the meta device: no read there
        meta = timm.create_model("san10_patch", num_classes=3, device="meta", dtype=torch.float32).eval()
    assert meta.forward_features(torch.randn(1, 3, 224, 224, device="meta")).shape == (1, 2048, 7, 7)
    torch.optim.swa_utils.update_bn([images[:4], images[4:]], model)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            assert torch.isfinite(model(images)).all()


def test_unsettled_statistics_are_found_in_any_batch_and_when_finite_but_huge():
    """timm's validate.py on a san10_patch trained 1 epoch: the first validation batch had loss 2.38, later ones
    logits near 1e28 (finite): features are checked in every inference batch until one warns, and features far above
    what a BatchNorm + ReLU output can be (1e6) warn as well as NaN / infinity."""
    import warnings

    from relzoo.models.san import UNSETTLED_FEATURE_LIMIT, warn_if_unsettled

    assert not warn_if_unsettled(torch.full((2, 8), UNSETTLED_FEATURE_LIMIT))
    for bad in (float("nan"), float("inf"), -float("inf"), 1e27):
        x = torch.zeros(2, 8)
        x[1, 3] = bad
        with pytest.warns(RuntimeWarning, match="do not describe these activations"):
            assert warn_if_unsettled(x)
    torch.manual_seed(0)
    model = timm.create_model("san10_patch", num_classes=3, widths=[32, 32, 64, 64, 128], stem_width=16,
                              layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3])
    images = torch.randn(8, 3, 64, 64)
    torch.optim.swa_utils.update_bn([images[:4], images[4:]], model)
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        model(images)                                   # settled: silent
        model(images)
    first_bn = model.stages[0].blocks[0].bn1
    first_bn.running_var.fill_(1e-12)                   # the statistics stop describing later batches
    with pytest.warns(RuntimeWarning, match=r"reach .* \(NaN, infinite or above 1e6\)"), torch.no_grad():
        model(images)


def test_timm_train_py_arguments_reach_san():
    """timm's train.py passes drop_path_rate (--drop-path) to every model; SAN refused it with a TypeError. It is
    stochastic depth on the residual branches, rising linearly over the blocks (0 by default, the official model)."""
    model = timm.create_model("san10_patch", drop_path_rate=0.2, num_classes=2, widths=[32, 32, 64, 64, 128],
                              stem_width=16, layers=[1, 1, 1, 1, 2], kernels=[3, 3, 3, 3, 3])
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 6).tolist())
    model.train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))                       # random depth in training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    from relzoo import SANConfig, SANForImageClassification

    hf = SANForImageClassification.from_timm(model)
    assert hf.config.drop_path_rate == 0.2 and hf.config.timm_fields()["model_args"]["drop_path_rate"] == 0.2
    with pytest.raises(ValueError, match=r"`drop_path_rate` must be a number in \[0, 1\)"):
        SANConfig(drop_path_rate=1.5)
