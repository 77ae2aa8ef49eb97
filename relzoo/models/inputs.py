"""Input gates shared by the model families: named errors for bad image tensors, before any heavy compute."""
from __future__ import annotations

import torch

__all__ = ["check_image_batch"]


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
