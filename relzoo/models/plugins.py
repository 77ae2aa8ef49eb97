"""What the training-only plug-ins (BatchFormer, API-Net) share: finding a timm classifier's final layer, checking
that the head splits into ``forward_head(pre_logits=True)`` then that layer, taking a plug-in off again, and the
weight initialisation of their transformers classes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

__all__ = ["check_split_head", "classifier_of", "init_plugin_weights", "pooled_width", "remove_plugin",
           "TrainingPlugin", "register_plugin", "get_plugin", "plugin_names"]


@dataclass(frozen=True)
class TrainingPlugin:
    """A training-only relation plug-in as relzoo's classification trainer uses it (``--plugin NAME``), declared by
    its family's model file with :func:`register_plugin`; the trainer never names one.

    ``add(model, args) -> model`` puts it on a timm classifier in place (``args``: the trainer's arguments), and
    ``remove(model) -> model`` takes it off (the plain inference network); ``loss(net, pixel_values, labels,
    loss_fn) -> loss`` is the training loss with the trainer's ``loss_fn`` as its cross-entropy; ``attribute`` is
    where its parameters live on the model (their learning rate is scaled by ``--plugin_lr_scale``).
    ``batch_sampler(labels, args)``, if given, builds the training batches (an object with ``set_epoch``);
    ``check_arguments(args)`` raises ``ValueError`` for arguments it cannot work with; ``options`` are the trainer
    arguments only this plug-in reads (one that defaults to ``None``, given with another plug-in, is refused)."""
    name: str
    attribute: str
    description: str
    add: Callable
    remove: Callable
    loss: Callable
    batch_sampler: Callable | None = None
    check_arguments: Callable | None = None
    options: tuple[str, ...] = ()

    def parameters(self, net: nn.Module) -> list[nn.Parameter]:
        module = getattr(net, self.attribute, None)
        return [] if module is None else list(module.parameters())


_PLUGINS: dict[str, TrainingPlugin] = {}


def register_plugin(plugin: TrainingPlugin) -> TrainingPlugin:
    _PLUGINS[plugin.name] = plugin
    return plugin


def plugin_names() -> list[str]:
    return list(_PLUGINS)


def get_plugin(name: str) -> TrainingPlugin | None:
    """The plug-in called ``name``; ``None`` for ``"none"``."""
    if name == "none":
        return None
    if name not in _PLUGINS:
        raise ValueError(f"`plugin` must be one of {('none', *_PLUGINS)}, got {name!r}")
    return _PLUGINS[name]


def probe_input(model: nn.Module) -> torch.Tensor:
    """A small random batch of 2 images the model accepts: its pretrained cfg's input size (a ViT's fixed size), and
    the channels of its first convolution (a model built with ``in_chans=1`` keeps the cfg's 3)."""
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)    # ViTs built for one image size
    if fixed is not None:
        size = (size[0], *fixed)
    channels = getattr(model, "in_chans", None)
    if not isinstance(channels, int):
        channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), size[0])
    param = next(model.parameters())
    x = torch.randn(2, channels, *size[1:], generator=torch.Generator().manual_seed(0))
    return x.to(device=param.device, dtype=param.dtype)


def pooled_width(model: nn.Module, plugin: str) -> int:
    """Width of the pooled features that reach the classifier: the classifier's ``in_features`` when there is one,
    else timm's ``head_hidden_size`` / ``num_features`` (a headless model)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    for width in (getattr(classifier, "in_features", None), getattr(model, "head_hidden_size", None),
                  getattr(model, "num_features", None)):
        if isinstance(width, int) and width > 0:
            return width
    raise ValueError(f"{plugin} works on a timm classifier's pooled features: {type(model).__name__} has no "
                     "get_classifier(), head_hidden_size or num_features")


def classifier_of(model: nn.Module, plugin: str) -> nn.Module:
    """``model.get_classifier()``, with a named error when the model has none."""
    if not hasattr(model, "get_classifier"):
        raise ValueError(f"{plugin} works on a timm classifier's pooled features: {type(model).__name__} has no "
                         "get_classifier()")
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Identity) or not isinstance(classifier, nn.Module):
        raise ValueError(f"{plugin} needs a classifier; {type(model).__name__} has none (num_classes=0?)")
    return classifier


@torch.no_grad()
def check_split_head(model: nn.Module, plugin: str) -> int:
    """The plug-ins compute ``classifier(forward_head(features, pre_logits=True))``; make sure that equals the
    model's own ``forward_head(features)`` (one small eval-mode forward) so that training and inference agree.
    Returns the width of the pooled features."""
    classifier = classifier_of(model, plugin)
    x = probe_input(model)
    param = next(model.parameters())
    was = model.training
    try:
        model.eval()
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        split = classifier(pooled)
        whole = model.forward_head(features)
    finally:
        model.train(was)
    # on the meta device (transformers builds models there before loading weights) only the shapes can be checked
    differ = split.shape != whole.shape or (not param.is_meta and not torch.allclose(split, whole, rtol=1e-4,
                                                                                     atol=1e-5))
    if differ:
        raise ValueError(f"{plugin} needs a head that is forward_head(x, pre_logits=True) followed by "
                         f"get_classifier(); {type(model).__name__}'s is not ({type(classifier).__name__} gives "
                         f"{tuple(split.shape)}, forward_head {tuple(whole.shape)})")
    if pooled.dim() != 2:
        raise ValueError(f"{plugin} needs pooled features (B, C) before the classifier; {type(model).__name__}'s "
                         f"forward_head(pre_logits=True) gives {tuple(pooled.shape)}")
    return int(pooled.shape[1])


def remove_plugin(model: nn.Module, attribute: str) -> nn.Module:
    """Take the plug-in stored at ``model.<attribute>`` off ``model`` in place (its forward hooks and pre-hooks too)
    and return the model: the plain network, with exactly its original keys."""
    plugin = getattr(model, attribute, None)
    if not isinstance(plugin, nn.Module):
        raise ValueError(f"{type(model).__name__} has no plug-in at `{attribute}`")
    owned = {id(m) for m in plugin.modules()}
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key, hook in list(hooks.items()):
                if id(getattr(hook, "__self__", None)) in owned:
                    del hooks[key]
    delattr(model, attribute)
    return model


@torch.no_grad()
def init_plugin_weights(module: nn.Module) -> None:
    """``_init_weights`` of the plug-in models: PyTorch's own initialisation for every module (a pretrained backbone
    is marked initialised and kept), timm's ``trunc_normal_(std=0.02)`` for a module's own tensors (a ViT's tokens)."""
    if isinstance(module, nn.MultiheadAttention):
        module._reset_parameters()              # its packed input projection (out_proj resets itself)
    elif hasattr(module, "reset_parameters") and not isinstance(module, PreTrainedModel):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            nn.init.trunc_normal_(p, std=0.02)
