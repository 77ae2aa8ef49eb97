"""timm backbones inside relzoo's transformers models: one config check and one constructor for every family."""
from __future__ import annotations

from torch import nn

__all__ = ["build_backbone", "check_backbone_config", "keep_initialisation"]


def check_backbone_config(backbone, backbone_kwargs, backbone_pretrained, num_channels,
                          reserved: tuple[str, ...] = ("num_classes", "in_chans", "pretrained")) -> dict:
    """Validate a config's backbone fields (named ``ValueError``s); returns ``backbone_kwargs`` as a new dict.
    ``reserved``: ``timm.create_model`` arguments the model sets itself."""
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f"`backbone` must be a timm model name (str), got {backbone!r}")
    if backbone_kwargs is not None and not isinstance(backbone_kwargs, dict):
        raise ValueError(f"`backbone_kwargs` must be a dict of timm.create_model arguments or None, got "
                         f"{backbone_kwargs!r}")
    for key in reserved:
        if key in (backbone_kwargs or {}):
            raise ValueError(f"`backbone_kwargs` must not set {key!r} (the model sets it; use num_channels / "
                             "backbone_pretrained)")
    if not isinstance(backbone_pretrained, bool):
        raise ValueError(f"`backbone_pretrained` must be a bool, got {backbone_pretrained!r}")
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"`num_channels` must be a positive int, got {num_channels!r}")
    return dict(backbone_kwargs or {})


def build_backbone(name: str, kwargs: dict | None = None, in_chans: int = 3, pretrained: bool = False,
                   headless: bool = True) -> nn.Module:
    """A timm model; ``headless``: spatial features kept (no pooling, no classifier), else the whole network.

    With ``pretrained=True`` its modules are marked initialised, so that the owning ``PreTrainedModel``'s
    ``post_init()`` keeps timm's pretrained weights instead of re-initialising them."""
    import timm

    hint = ""
    if not timm.is_model(name):
        try:
            import relzoo  # noqa: F401  (relzoo's own timm models, e.g. SAN, are valid backbones too)
        except ImportError:  # a Hub repo's remote code runs without relzoo: timm's own models only
            hint = "; relzoo is not installed here, so its own models (SAN) are not registered: pip install relzoo"
    if not timm.is_model(name):
        raise ValueError(f"`backbone` must be a timm model name, got {name!r} (see timm.list_models()){hint}")
    head = {"num_classes": 0, "global_pool": ""} if headless else {}
    model = timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **head, **(kwargs or {}))
    if pretrained:
        keep_initialisation(model)
    return model


def keep_initialisation(model: nn.Module) -> nn.Module:
    """Mark every module of ``model`` initialised, so that the owning ``PreTrainedModel``'s ``post_init()`` keeps
    the weights it has (timm's pretrained weights, or timm's own initialisation) instead of re-initialising them."""
    for module in model.modules():
        module._is_hf_initialized = True
    return model
