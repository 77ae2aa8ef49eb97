"""API-Net's Hub side: a training-only plug-in, so a published model is the plain timm network it trained (timm's
format, loadable by timm and transformers' ``TimmWrapper`` without relzoo). Read through the family registry."""
from __future__ import annotations

from pathlib import Path

from ..cards import timm_network_usage
from ..hub import write_timm_files

__all__ = ["write_files", "usage"]


def write_files(model, folder: Path, *, class_names: list[str], preprocessing: dict, model_id: str) -> None:
    """The plain timm network of ``model`` (the plug-in removed: ``model.to_timm()``) in timm's format."""
    write_timm_files(model.to_timm().eval(), folder, class_names=class_names, preprocessing=preprocessing)


def usage(model_id: str) -> list[str]:
    return timm_network_usage(model_id, "To train another one the same way: `relzoo.add_apinet(timm_model)` or "
                                        "`scripts/train_classifier.py --plugin apinet`.")
