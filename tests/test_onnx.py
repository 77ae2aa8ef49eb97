"""ONNX export of the classifiers (relzoo.onnx_export, scripts/export_onnx.py, timm's own onnx_export): onnxruntime agrees with PyTorch, the
batch dimension stays dynamic, SAN's custom operators are replaced by their reference implementation."""
import sys
from pathlib import Path

import pytest
import timm
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

import relzoo  # noqa: E402,F401
from relzoo.hub import save_hub_folder  # noqa: E402
from relzoo.onnx_export import check_onnx, export_onnx, load_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL_SAN = dict(widths=(32, 32, 64, 64, 128), stem_width=16)


def _trained_like(model):
    """Give BatchNorm non-trivial statistics and the head larger weights, so logits differ visibly between inputs."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        model.get_classifier().weight.mul_(20)
    return model.eval()


@pytest.mark.parametrize("variant", ["san10_pair", "san10_patch"])
def test_san_exports_through_its_reference_operators(tmp_path, variant):
    model = _trained_like(timm.create_model(variant, num_classes=4, **SMALL_SAN))
    path = export_onnx(model, tmp_path / "m.onnx", image_size=128, exporter="torchscript")
    graph = onnx.load(str(path)).graph
    assert not any(node.domain == "relzoo" for node in graph.node)  # no custom operator left in the graph
    assert graph.input[0].name == "pixel_values" and graph.output[0].name == "logits"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    report = check_onnx(model, path, image_size=128, batch_sizes=(1, 3))
    for r in report.values():
        assert r["max_abs_diff"] < 1e-4 * max(1.0, r["max_abs_logit"]) and r["max_abs_logit"] > 0.1
    # the caller's model keeps its fast operators
    assert all(m.implementation == "fast" for m in model.modules() if hasattr(m, "implementation"))


def test_plugin_classifier_folder_exports_its_plain_network(tmp_path):
    from relzoo import APINetConfig, APINetForImageClassification

    hf = APINetForImageClassification(APINetConfig(backbone="resnet10t", num_channels=1, num_labels=3)).eval()
    hf.save_pretrained(tmp_path / "apinet")
    model = load_classifier(str(tmp_path / "apinet"))
    assert not hasattr(model, "apinet")  # the plug-in is training-only: the export is the plain network
    path = export_onnx(model, tmp_path / "a.onnx", image_size=32, exporter="torchscript")
    assert max(r["max_abs_diff"] for r in check_onnx(model, path, image_size=32).values()) < 1e-4
    timm_folder = save_hub_folder(timm.create_model("resnet10t", num_classes=3), tmp_path / "timm",
                                  class_names=["a", "b", "c"], image_size=48, crop_pct=1.0, mean=(0.5,) * 3,
                                  std=(0.5,) * 3)
    assert load_classifier(str(timm_folder)).pretrained_cfg["input_size"] == (3, 48, 48)
    with pytest.raises(ValueError, match="`image_size` must be a positive int"):
        export_onnx(model, tmp_path / "b.onnx", image_size=0)
    with pytest.raises(ValueError, match="`exporter` must be 'dynamo' or 'torchscript'"):
        export_onnx(model, tmp_path / "b.onnx", exporter="tf")


@pytest.mark.slow
def test_export_script_default_exporter_on_san(tmp_path):
    """The script end to end with PyTorch's default (torch.export-based) exporter."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from export_onnx import main

    model = _trained_like(timm.create_model("san10_patch", num_classes=5, **SMALL_SAN))
    save_hub_folder(model, tmp_path / "san", class_names=list("abcde"), image_size=128, crop_pct=0.875,
                    mean=(0.5,) * 3, std=(0.5,) * 3)
    assert main(["--model", str(tmp_path / "san"), "--output", str(tmp_path / "san.onnx")]) == 0
    assert (tmp_path / "san.onnx").stat().st_size > 100_000


@pytest.mark.parametrize("use_dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_timms_own_onnx_export_works_on_the_default_model(tmp_path, use_dynamo):
    """timm's onnx_export.py (a thin wrapper of timm.utils.onnx.onnx_export, which it calls with the user's flags)
    failed on SAN: `unrecognized namespace relzoo::san_aggregation`. Inside an ONNX export the layers now run their
    standard-operator reference; timm's own forward check (onnxruntime against PyTorch) passes."""
    from timm.utils.onnx import onnx_export

    model = _trained_like(timm.create_model("san10_patch", num_classes=5))
    onnx_export(model, str(tmp_path / "m.onnx"), check_forward=True, use_dynamo=use_dynamo, input_size=(3, 128, 128),
                batch_size=2)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not any(node.domain == "relzoo" for node in graph.node)
    assert all(m.implementation == "fast" for m in model.modules() if hasattr(m, "implementation"))
