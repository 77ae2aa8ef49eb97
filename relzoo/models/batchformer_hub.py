"""BatchFormer's Hub side: a training-only plug-in, so a published model is the plain timm network it trained (timm's
format, loadable by timm and transformers' ``TimmWrapper`` without relzoo). Read through the family registry."""
from __future__ import annotations

from ..cards import timm_network_usage
from ..hub import write_plain_network_files as write_files

__all__ = ["write_files", "usage"]


def usage(model_id: str) -> list[str]:
    return timm_network_usage(model_id, "To train another one the same way: `relzoo.add_batchformer(timm_model)` or "
                                        "`scripts/train_classifier.py --plugin batchformer`.")
