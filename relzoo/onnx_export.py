"""ONNX export of relzoo's classifiers (SAN, and the plain timm networks that BatchFormer / API-Net train), checked
with onnxruntime against PyTorch.

SAN's fast operators are custom PyTorch operators (``relzoo::san_*``) that ONNX does not know; the export runs the
``reference`` implementation of the same layers instead (pad + unfold, standard operators, same weights; tests hold
the two equal). The exported graph takes ``pixel_values`` ``(batch, C, H, W)`` with a dynamic batch dimension and
returns ``logits``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_classifier", "export_onnx", "check_onnx"]


def load_classifier(source: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """A timm classifier from ``source``: a relzoo transformers folder (SAN, BatchFormer, API-Net: its timm network),
    a timm folder (``local-dir:`` implied), or anything ``timm.create_model`` takes (a name, ``hf-hub:``,
    ``local-dir:``)."""
    import timm

    import relzoo  # noqa: F401  (registers the families)

    from .registry import families, find_family

    path = Path(source)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ValueError(f"`model` {source!r} is a folder without config.json")
        config = json.loads(config_path.read_text())
        model_type = config.get("model_type")
        family = find_family(model_type)
        if (family is not None and family.task == "image-classification" and "architecture" not in config
                and hasattr(family.model_class, "to_timm")):   # a transformers folder (timm's have "architecture")
            return family.model_class.from_pretrained(path).to_timm()
        if model_type is not None and (family is None or family.timm_class is None):
            classifiers = [f.name for f in families() if f.task == "image-classification"]
            raise ValueError(f"`model` {source!r} is a {model_type!r} folder: ONNX export covers the classifiers "
                             f"({', '.join(classifiers)} and timm models)")
        return timm.create_model(f"local-dir:{path}", pretrained=pretrained, **kwargs)
    return timm.create_model(source, pretrained=pretrained, **kwargs)


def _input_shape(model: nn.Module, image_size: int | None) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (getattr(model, "in_chans", 3), 224, 224))
    channels = getattr(model, "in_chans", channels)
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
        height = width = image_size
    return channels, height, width


def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: int | None = None, opset: int = 18,
                exporter: str = "dynamo") -> Path:
    """Write ``model`` (a timm classifier) to ``path`` as ONNX, with a dynamic batch dimension. ``exporter``:
    ``"dynamo"`` (torch.export, PyTorch's default) or ``"torchscript"`` (the older tracer, faster to run)."""
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"`exporter` must be 'dynamo' or 'torchscript', got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # SAN's layers switch to their standard-operator reference inside an export themselves (layers/san.py)
    was_training = model.training
    ready = model.eval()
    shape = _input_shape(model, image_size)
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if exporter == "dynamo":
            torch.onnx.export(ready, (example,), tmp, input_names=["pixel_values"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, opset_version=opset,
                              external_data=False)
        else:
            torch.onnx.export(ready, (example,), tmp, input_names=["pixel_values"], output_names=["logits"],
                              dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                              opset_version=opset)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: int | None = None,
               batch_sizes=(1, 3), seed: int = 0) -> dict:
    """Run the ONNX file with onnxruntime (CPU) and the PyTorch model (its own implementation, fast operators
    included) on the same random batches; return, per batch size, the largest absolute difference and the largest
    absolute logit (the scale it is to be read against)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = _input_shape(model, image_size)
    model = model.eval()
    report = {}
    generator = torch.Generator().manual_seed(seed)
    for batch in batch_sizes:
        x = torch.randn(batch, *shape, generator=generator)
        with torch.no_grad():
            expected = model(x).float()
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {tuple(got.shape)} differs from PyTorch's {tuple(expected.shape)}")
        diff = (got - expected).abs().max().item()
        report[batch] = {"max_abs_diff": diff, "max_abs_logit": expected.abs().max().item()}
    return report
