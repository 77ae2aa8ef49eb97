"""Input gates shared by the model families: named errors for bad image tensors, before any heavy compute."""
from __future__ import annotations

import torch

__all__ = ["check_class_labels", "check_finite", "check_image_batch", "class_names"]


def check_image_batch(name: str, x, channels: int, dtype: torch.dtype, channels_arg: str = "num_channels") -> None:
    """``x`` must be a floating-point ``(B, channels, H, W)`` tensor of the model's ``dtype`` (any floating dtype
    under autocast). Errors name the argument (``name``), the expected and the received value; ``channels_arg`` is
    the config field that sets ``channels``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (B, {channels}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"`{name}` must be 4D (B, {channels}, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor (normalised images), got dtype {x.dtype}")
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"`{name}` must have the model's dtype {dtype}, got {x.dtype}: convert the input "
                        f"(`{name}.to({dtype})`) or the model (`model.to({x.dtype})`), or run under torch.autocast")
    if x.shape[1] != channels:
        raise ValueError(f"`{name}` must have {channels} channels ({channels_arg}), got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")


def check_finite(name: str, x: torch.Tensor, why: str = "in training they would poison every BatchNorm running "
                 "statistic (every later evaluation NaN)") -> None:
    """``x`` must hold no NaN or infinity (skipped under tracing and compilation, where it cannot be data-dependent):
    a ``ValueError`` naming the argument and ``why`` it matters."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` holds NaN or infinite values: {why}")


def check_class_labels(labels: torch.Tensor, num_labels: int) -> None:
    """Integer class labels must lie in ``[0, num_labels)``: a named error instead of an index error deep inside
    the loss (or a device-side assert on a GPU)."""
    if not isinstance(labels, torch.Tensor) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return  # symbolic tracing and compiled graphs: no data-dependent checks
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return  # regression / multi-label targets: the loss checks them
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(f"`labels` must be class ids in [0, {num_labels - 1}] (num_labels={num_labels}), got values "
                         f"from {int(labels.min())} to {int(labels.max())}")


def class_names(config) -> list[str]:
    """The ``num_labels`` class names of a transformers config, whatever the keys of its ``id2label`` are: ints, or
    the strings that transformers' own examples pass (``{"0": "cat"}``); a class without a name is ``LABEL_<i>``,
    as transformers names it (``num_labels`` may differ from ``len(id2label)``)."""
    names = {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v
             for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [str(names.get(i, f"LABEL_{i}")) for i in range(getattr(config, "num_labels", 0) or 0)]
