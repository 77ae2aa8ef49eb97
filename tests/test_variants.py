"""The catalogue of published variants (hub_configs/*.json, relzoo.variants): every file matches the model it
describes, list_models / the `relzoo` command tell the truth, and export_variant writes for each family a folder that
loads, with a card stating what the weights are (converted, trained by relzoo, none)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard

import relzoo
from relzoo.hub import check_export_folder, push_to_hub, save_hub_folder
from relzoo.variants import (
    NO_WEIGHTS_MARK,
    build_variant,
    export_variant,
    load_variant,
    variant_card,
    variant_names,
)

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_hub_publish import BLOCK_RELZOO  # noqa: E402


def test_the_package_ships_every_hub_config():
    on_disk = sorted(p.stem for p in (ROOT / "hub_configs").glob("*.json"))
    assert variant_names() == on_disk and len(on_disk) == 14
    families = {load_variant(n)["family"] for n in on_disk}
    assert families == {"san", "crosstransformer", "protonet", "hsnet", "batchformer", "apinet"}
    hsnet = {load_variant(n)["config"]["backbone"] for n in on_disk if n.startswith("hsnet")}
    assert hsnet == {"vgg16", "resnet50", "resnet101"}


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "hub_configs").glob("*.json")))
def test_each_hub_config_describes_its_model(name):
    spec = load_variant(name)
    card = spec["card"]
    assert spec["variant"] == name and spec["repo_id"] == f"relzoo/{name}"
    assert card["paper"]["arxiv"].count(".") == 1 and card["paper"]["title"] and card["license"]
    assert card["reported"] and all(r["source"] and isinstance(r["value"], (int, float)) for r in card["reported"])
    assert spec["weights"]["published"] is False  # nothing has been uploaded: nothing may claim a download
    with torch.device("meta"):
        model = build_variant(spec)
    published = model.to_timm() if spec["family"] in ("batchformer", "apinet") else model  # SAN: the same tensors
    assert sum(p.numel() for p in published.parameters()) == spec["params"]
    if "training_params" in spec:
        assert sum(p.numel() for p in model.parameters()) == spec["training_params"]
    if spec["family"] == "san":
        from relzoo.models.san import HUB_REPOS

        with torch.device("meta"):
            timm_model = timm.create_model(spec["timm_architecture"])
        assert sum(p.numel() for p in timm_model.parameters()) == spec["params"]
        assert HUB_REPOS[spec["timm_architecture"]] == spec["repo_id"]  # what timm's pretrained_cfg notes name
        assert timm_model.arch_args["layers"] == spec["config"]["layers"]
        assert 70 < spec["card"]["reported"][0]["value"] < spec["card"]["reported"][1]["value"] < 100
    if spec["family"] in ("batchformer", "apinet"):  # published as the plain timm network
        assert type(published).__module__.startswith("timm.")
        assert published.default_cfg["architecture"] == spec["timm_architecture"]
    names = spec["class_names"]
    if names is not None:
        assert model.config.num_labels == {"imagenet-1k": 1000, "fashion-mnist": 10}[names]


def test_list_models_and_the_relzoo_command_tell_the_truth():
    rows = relzoo.list_models()
    assert [r["variant"] for r in rows] == variant_names()
    assert all(r["weights"] == "none yet" for r in rows)
    assert {r["variant"] for r in rows if r["convertible"]} == {n for n in variant_names() if n.startswith(("san",
                                                                                                            "hsnet"))}
    assert timm.list_pretrained("san*") == []  # timm does not list weights no one can download either
    assert [r["variant"] for r in relzoo.list_models("hsnet")] == ["hsnet_resnet101.pascal5i",
                                                                  "hsnet_resnet50.pascal5i", "hsnet_vgg16.pascal5i"]
    with pytest.raises(ValueError, match="`family` must be one of .*got 'nope'"):
        relzoo.list_models("nope")
    out = subprocess.run([sys.executable, "-m", "relzoo.cli", "list", "--json"], capture_output=True, text=True,
                         check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    assert json.loads(out) == rows


def test_load_variant_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"`variant` must be one of \[.*san10_pair.in1k.*got 'san11'"):
        load_variant("san11")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"variant": "x", "family": "san"}))
    with pytest.raises(ValueError, match="lacks repo_id, transformers_class"):
        load_variant(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_variant(bad)


def _small(spec: dict, **config) -> dict:
    """The same variant with a smaller network (fast tests); the export code path is unchanged."""
    return {**spec, "config": {**spec["config"], **config}}


def test_no_weights_folder_is_flagged_and_never_pushed(tmp_path, monkeypatch):
    spec = _small(load_variant("resnet18_apinet.fashion-mnist"))
    folder = export_variant(spec, tmp_path / "out")
    assert sorted(check_export_folder(folder)) == ["README.md", "checksums.json", "config.json", "model.safetensors",
                                                   "preprocessor_config.json"]
    card = ModelCard.load(folder / "README.md")
    assert "**No weights yet.**" in card.text and NO_WEIGHTS_MARK in card.text and "no-weights" in card.data.tags
    assert card.data.eval_results is None  # no numbers claimed for a random initialisation
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may be contacted: the refusal comes first
    with pytest.raises(ValueError, match="holds no weights"):
        push_to_hub(folder, "me/x")


sys.path.insert(0, str(ROOT / "scripts"))


def test_push_script_refuses_to_upload_without_weights(capsys):
    from push_to_hub import main

    with pytest.raises(SystemExit) as exc:
        main(["--variant", "san10_pair.in1k"])
    assert exc.value.code == 2 and "--weights is required to push san10_pair.in1k" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--folder", "x"])
    assert "--folder needs --repo-id" in capsys.readouterr().err


def test_converted_official_san_checkpoint_gets_the_reported_numbers(tmp_path):
    from test_san_models import _official_state_dict

    torch.manual_seed(0)
    source = timm.create_model("san10_pair", num_classes=1000).eval()
    torch.save({"epoch": 100, "state_dict": _official_state_dict(source.state_dict())}, tmp_path / "model_best.pth")
    folder = export_variant("san10_pair.in1k", tmp_path / "out", tmp_path / "model_best.pth")
    card = ModelCard.load(folder / "README.md")
    assert "**Converted official weights.** `model_best.pth` (sha256 `" in card.text
    values = {(r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert values == {("accuracy", 74.9), ("accuracy", 92.1)} and card.data.license == "mit"
    assert all("reported: hszhao/SAN README" in r.metric_name for r in card.data.eval_results)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"][0] == "tench, Tinca tinca" and config["architecture"] == "san10_pair"


def test_converted_official_hsnet_checkpoint(tmp_path):
    from test_hsnet_models import _official_checkpoint

    from relzoo import AutoModelForFewShotSegmentation

    torch.manual_seed(1)
    spec = load_variant("hsnet_resnet50.pascal5i")
    source = build_variant(spec).eval()
    _official_checkpoint(source, tmp_path / "best_model.pt")
    folder = export_variant(spec, tmp_path / "out", tmp_path / "best_model.pt")
    card = ModelCard.load(folder / "README.md")
    assert "**Converted official weights.**" in card.text and card.data.license == "other"
    assert "no license file" in card.text and {r.metric_value for r in card.data.eval_results} == {64.0, 76.7, 69.5,
                                                                                                   80.6}
    loaded = AutoModelForFewShotSegmentation.from_pretrained(folder).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # a checkpoint of another backbone is refused, naming the variant
    other = build_variant(load_variant("hsnet_vgg16.pascal5i"))
    _official_checkpoint(other, tmp_path / "vgg.pt")
    with pytest.raises(ValueError, match="does not match HSNet on resnet50"):
        export_variant(spec, tmp_path / "out2", tmp_path / "vgg.pt")


def _fake_run(tmp_path: Path, spec: dict, **arguments) -> Path:
    """What scripts/train_classifier.py leaves: OUTPUT_DIR/model (the plain timm network) and results.json."""
    torch.manual_seed(2)
    plain = build_variant(spec).to_timm().eval()
    names = [str(n) for n in spec_names(spec)]
    save_hub_folder(plain, tmp_path / "run" / "model", class_names=names, image_size=32, crop_pct=0.875,
                    mean=(0.449,), std=(0.226,))
    results = {"model": "resnet18", "dataset": "fashion_mnist", "top1": 0.8424, "top5": 0.9951, "eval_samples": 10000,
               "arguments": {"model": "resnet18", "dataset": "fashion_mnist", "plugin": "apinet", "in_chans": 1,
                             "samples_per_class": 8, "save_model": True, "pretrained": False, **arguments}}
    (tmp_path / "run" / "results.json").write_text(json.dumps(results))
    return plain


def spec_names(spec):
    from relzoo.variants import class_names_of

    return class_names_of(spec)


def test_trained_plugin_run_is_published_as_the_plain_timm_network(tmp_path):
    spec = load_variant("resnet18_apinet.fashion-mnist")
    plain = _fake_run(tmp_path, spec)
    folder = export_variant(spec, tmp_path / "out", tmp_path / "run" / "model")
    card = ModelCard.load(folder / "README.md")
    assert "**Trained by relzoo**" in card.text and card.data.library_name == "timm"
    assert "python scripts/train_classifier.py --dataset fashion_mnist --in_chans 1 --model resnet18 --plugin apinet " \
           "--pretrained False --samples_per_class 8 --save_model True" in card.text
    assert {(r.metric_value, r.dataset_type) for r in card.data.eval_results} == {(84.24, "fashion_mnist"),
                                                                                  (99.51, "fashion_mnist")}
    assert all(r.metric_name.endswith("(measured by relzoo)") for r in card.data.eval_results)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # plain timm: no relzoo code needed
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), plain(x))
    assert not any(name.endswith(".py") for name in os.listdir(folder))
    # weights of another network are refused, naming what differs
    other = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    save_hub_folder(other, tmp_path / "other", class_names=[str(i) for i in range(10)], image_size=32, crop_pct=1.0,
                    mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="are a resnet10t, not the resnet18 of resnet18_apinet.fashion-mnist"):
        export_variant(spec, tmp_path / "out2", tmp_path / "other")


def test_card_statuses_are_checked():
    with pytest.raises(ValueError, match="`status` must be one of"):
        variant_card(load_variant("san10_pair.in1k"), "maybe")


@pytest.mark.slow
def test_fewshot_and_hsnet_folders_load_without_relzoo(tmp_path):
    """Remote code: the CrossTransformers and HSNet folders load in a process where relzoo cannot be imported."""
    from relzoo import AutoModelForFewShotClassification, AutoModelForFewShotSegmentation

    ctx = export_variant(_small(load_variant("crosstransformer_resnet34.metadataset-ilsvrc"), backbone="resnet18",
                                backbone_kwargs={}), tmp_path / "ctx")
    hs = export_variant(load_variant("hsnet_resnet50.pascal5i"), tmp_path / "hsnet")
    torch.manual_seed(3)
    support, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 0, 1, 1])
    queries = torch.randn(3, 3, 64, 64)
    q, s, m = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 3, 64, 64), (torch.rand(1, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        model = AutoModelForFewShotClassification.from_pretrained(ctx).eval()
        model.set_support(support, labels)
        ctx_logits = model(query_pixel_values=queries).logits
        hs_logits = AutoModelForFewShotSegmentation.from_pretrained(hs).eval()(q, s, m).logits
    torch.save({"support": support, "labels": labels, "queries": queries, "ctx": ctx_logits, "q": q, "s": s, "m": m,
                "hs": hs_logits}, tmp_path / "ref.pt")
    code = BLOCK_RELZOO + f"""
import torch
from transformers import AutoModel
ref = torch.load({str(tmp_path / 'ref.pt')!r})
ctx = AutoModel.from_pretrained({str(ctx)!r}, trust_remote_code=True).eval()
assert type(ctx).__module__.startswith("transformers_modules."), type(ctx).__module__
with torch.no_grad():
    ctx.set_support(ref["support"], ref["labels"])
    assert torch.allclose(ctx(query_pixel_values=ref["queries"]).logits, ref["ctx"], atol=1e-5)
    hs = AutoModel.from_pretrained({str(hs)!r}, trust_remote_code=True).eval()
    assert torch.allclose(hs(ref["q"], ref["s"], ref["m"]).logits, ref["hs"], atol=1e-5)
print("ok")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]


@pytest.mark.slow
def test_plugin_example_round_trip_through_a_hub_needs_neither_relzoo_nor_remote_code(tmp_path):
    """A trained API-Net example pushed to the Hub on 127.0.0.1, then loaded by timm and by transformers (TimmWrapper,
    pipeline) in a fresh process that cannot import relzoo."""
    from fakehub import FakeHub
    from test_hub_publish import _env, _run

    spec = load_variant("resnet18_apinet.fashion-mnist")
    plain = _fake_run(tmp_path, spec)
    folder = export_variant(spec, tmp_path / "out", tmp_path / "run" / "model", repo_id="me/apinet")
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.save({"x": x, "logits": plain(x)}, tmp_path / "ref.pt")
    with FakeHub() as hub:
        env = _env(tmp_path, hub.endpoint)
        _run(f"from relzoo.hub import push_to_hub; push_to_hub({str(folder)!r}, 'me/apinet')", env)
        out = _run(BLOCK_RELZOO + f"""
import torch, timm
from transformers import AutoModelForImageClassification, pipeline
ref = torch.load({str(tmp_path / 'ref.pt')!r})
model = timm.create_model("hf-hub:me/apinet", pretrained=True).eval()
hf = AutoModelForImageClassification.from_pretrained("me/apinet").eval()
with torch.no_grad():
    assert torch.equal(model(ref["x"]), ref["logits"])
    torch.testing.assert_close(hf(ref["x"]).logits, ref["logits"], rtol=0, atol=1e-5)
classify = pipeline("image-classification", model="me/apinet")
print(type(hf).__name__, type(classify.image_processor).__name__, hf.config.id2label[6])
""", env)
    assert out.strip().splitlines()[-1] == "TimmWrapperForImageClassification TimmWrapperImageProcessor Shirt"
