"""BatchFormer V1 / V2 added to any timm model in one call (issue 8, first part).

``add_batchformer(model, version=1)`` puts a :class:`relzoo.layers.batchformer.BatchFormer` in front of the model's
classifier (V1: on the pooled features; the classifier sees ``cat([x, BatchFormer(x)])`` in training);
``add_batchformer(model, version=2, after=["blocks.8"])`` inserts it after the named modules (ViT blocks, CNN
stages), DETR-style: the first insertion point turns the batch of B into the two streams ``[x, BatchFormer(x)]``, later
ones pass only the second stream through it. Either way the model returns ``2 * B`` rows in training, so the targets
are duplicated (:func:`batchformer_targets`), and in evaluation nothing runs: outputs are bit-identical to the model
without the plug-in.

The plug-in lives in ``model.batchformer`` (its parameters appear under ``batchformer.*``; every existing key is
unchanged, so pretrained weights load as before) and acts through forward hooks that are bound methods of it, so
``copy.deepcopy`` gives a copy whose hooks use the copy's own plug-in.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils.generic import can_return_tuple

from ..layers.batchformer import BatchFormer, BatchFormerV2Insertion
from ..registry import Family, register_family
from .backbones import build_backbone, check_backbone_config
from .checksummed_loading import ChecksummedPretrainedMixin
from .inputs import check_class_labels, check_finite, check_image_batch
from .plugins import (
    TrainingPlugin,
    check_split_head,
    init_plugin_weights,
    pooled_width,
    probe_input,
    register_plugin,
    remove_plugin,
)

__all__ = ["BatchFormerConfig", "BatchFormerForImageClassification", "BatchFormerPlugin", "BatchFormerPreTrainedModel",
           "add_batchformer", "batchformer_targets", "has_batchformer", "remove_batchformer"]


class BatchFormerPlugin(nn.Module):
    """What :func:`add_batchformer` attaches as ``model.batchformer``: the shared :class:`BatchFormer`, the version
    and, for V2, one :class:`BatchFormerV2Insertion` per insertion point (in order)."""

    def __init__(self, module: BatchFormer, version: int, after: list[str]):
        super().__init__()
        self.module, self.version, self.after = module, version, list(after)
        self.insertions = nn.ModuleList(BatchFormerV2Insertion(module, first=i == 0) for i in range(len(after)))

    def classifier_pre_hook(self, classifier: nn.Module, args: tuple) -> tuple | None:
        """V1: the classifier's input ``x`` becomes ``cat([x, BatchFormer(x)])`` in training."""
        if not self.training:
            return None
        x = args[0]
        return (torch.cat([x, self.module(x)], dim=0), *args[1:])

    def hook_classifier(self, model: nn.Module) -> None:
        """V1: make sure the classifier the model has now carries :meth:`classifier_pre_hook` (``reset_classifier``
        replaces the classifier; a headless model has none, and V1 then waits for one)."""
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        if not isinstance(classifier, nn.Module) or isinstance(classifier, nn.Identity):
            return
        if not any(getattr(h, "__self__", None) is self for h in classifier._forward_pre_hooks.values()):
            classifier.register_forward_pre_hook(self.classifier_pre_hook)

    def model_pre_hook(self, model: nn.Module, args: tuple) -> None:
        """On the model's own forward: remember the batch size (:func:`batchformer_targets` checks against it); V1:
        :meth:`hook_classifier` first."""
        if args and isinstance(args[0], torch.Tensor) and args[0].dim():
            self.last_batch_size = int(args[0].shape[0])
        if self.version == 1:
            self.hook_classifier(model)

    def make_insertion_hook(self, index: int):
        return self.insertions[index].after_hook

    def extra_repr(self) -> str:
        return f"version={self.version}, after={self.after}" if self.version == 2 else "version=1"


def _probe_channels(model: nn.Module, names: list[str]) -> list[int]:
    """Channels of each named module's output, from one small no-grad forward in eval mode."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"`after` names no module of {type(model).__name__}: {unknown} (e.g. 'blocks.8' for a ViT, "
                         "'layer3' or 'stages.2' for a CNN)")
    seen: dict[str, torch.Size] = {}
    hooks = [modules[n].register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, out.shape)) for n in names]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe_input(model)[:1])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    channels = []
    for n in names:
        shape = seen[n]
        if len(shape) == 3:
            channels.append(shape[-1])          # tokens (N, L, C)
        elif len(shape) == 4:
            channels.append(shape[1])           # maps (N, C, H, W)
        else:
            raise ValueError(f"BatchFormer V2 goes after modules that output tokens (N, L, C) or maps (N, C, H, W); "
                             f"{n!r} outputs {tuple(shape)}")
    return channels


def add_batchformer(model: nn.Module, version: int = 1, after: list[str] | str | None = None, num_heads: int = 4,
                    dim_feedforward: int | None = None, dropout: float = 0.5) -> nn.Module:
    """Add BatchFormer to a timm model in place and return it (see the module doc).

    Args:
        model: a timm model. V1 acts in front of whatever ``get_classifier()`` is at each forward (it follows
            ``reset_classifier``; while the model is headless it does nothing).
        version: 1 (before the classifier, on pooled features) or 2 (after the modules named in ``after``).
        after: V2 only: module names (``model.named_modules()``), in forward order; all must output features with
            the same channel count (one BatchFormer is shared by all insertion points, as in the official DeiT code).
        num_heads, dim_feedforward, dropout: the BatchFormer layer (official: 4, the channel count, 0.5).
    """
    if hasattr(model, "batchformer"):
        raise ValueError(f"{type(model).__name__} already has a BatchFormer plug-in (model.batchformer)")
    if version not in (1, 2):
        raise ValueError(f"`version` must be 1 or 2, got {version!r}")
    if version == 1:
        if after is not None:
            raise ValueError(f"`after` is for version 2 (V1 always sits in front of the classifier), got {after!r}")
        dim = pooled_width(model, "BatchFormer V1")
        plugin = BatchFormerPlugin(BatchFormer(dim, num_heads, dim_feedforward, dropout), 1, [])
        plugin.to(next(model.parameters()).device)
        model.batchformer = plugin
        model.register_forward_pre_hook(plugin.model_pre_hook)     # follows reset_classifier()
        plugin.hook_classifier(model)
        return model
    names = [after] if isinstance(after, str) else list(after or [])
    if not names:
        raise ValueError("`after` must name at least one module for version 2 (e.g. ['blocks.8'])")
    channels = _probe_channels(model, names)
    if len(set(channels)) != 1:
        raise ValueError(f"the modules in `after` output different channel counts {dict(zip(names, channels))}; one "
                         "BatchFormer is shared by all insertion points")
    plugin = BatchFormerPlugin(BatchFormer(channels[0], num_heads, dim_feedforward, dropout), 2, names)
    plugin.to(next(model.parameters()).device)
    model.batchformer = plugin
    model.register_forward_pre_hook(plugin.model_pre_hook)     # records the batch size
    modules = dict(model.named_modules())
    for i, name in enumerate(names):
        modules[name].register_forward_hook(plugin.make_insertion_hook(i))
    return model


def remove_batchformer(model: nn.Module) -> nn.Module:
    """Take BatchFormer off a model in place (hooks and ``model.batchformer``) and return the plain network, with
    exactly its original keys: what inference and publishing need."""
    if not has_batchformer(model):
        raise ValueError(f"{type(model).__name__} has no BatchFormer plug-in (model.batchformer)")
    return remove_plugin(model, "batchformer")


def has_batchformer(model: nn.Module) -> bool:
    return isinstance(getattr(model, "batchformer", None), BatchFormerPlugin)


def batchformer_targets(model: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """The targets for the model's output: duplicated (``cat([y, y])``, the two streams) when the model carries a
    BatchFormer and is training, unchanged otherwise. ``targets`` must have one entry per image of the model's last
    forward pass (a ``ValueError`` says so, instead of a shape error inside the loss)."""
    if not isinstance(targets, torch.Tensor) or targets.dim() == 0:
        raise ValueError(f"`targets` must be a tensor with one entry per image (N, ...), got "
                         f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    if has_batchformer(model) and model.training:
        last = getattr(model.batchformer, "last_batch_size", None)
        if last is not None and targets.shape[0] != last:
            raise ValueError(f"`targets` has {targets.shape[0]} entries but the model's last forward pass had {last} "
                             "images: pass the targets of that batch")
        return torch.cat([targets, targets], dim=0)
    return targets


def default_plugin_after(model: nn.Module) -> list[str]:
    """BatchFormer V2's default insertion point: the block two thirds deep of a ViT (official DeiT: 8 of 12),
    ``layer3`` of a ResNet; other models must name one (``--plugin_after``)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) > 0:
        return [f"blocks.{min(2 * len(blocks) // 3, len(blocks) - 1)}"]
    if hasattr(model, "layer3"):
        return ["layer3"]
    raise ValueError(f"`plugin_after`: no default insertion point for {type(model).__name__}; name module(s) of "
                     "model.named_modules(), e.g. --plugin_after stages.2")


def _add_v2(model: nn.Module, args) -> nn.Module:
    after = args.plugin_after.split(",") if args.plugin_after else default_plugin_after(model)
    return add_batchformer(model, version=2, after=[a.strip() for a in after])


def _training_loss(net: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, loss_fn) -> torch.Tensor:
    """``loss_fn`` over both streams (the labels duplicated for the batch-attended copy)."""
    return loss_fn(net(pixel_values), batchformer_targets(net, labels))


register_plugin(TrainingPlugin(name="batchformer", attribute="batchformer", description="V1, before the classifier",
                               add=lambda model, args: add_batchformer(model, version=1), remove=remove_batchformer,
                               loss=_training_loss))
register_plugin(TrainingPlugin(name="batchformer_v2", attribute="batchformer", description="after --plugin_after",
                               add=_add_v2, remove=remove_batchformer, loss=_training_loss, options=("plugin_after",)))


# --- transformers ---------------------------------------------------------------------------------------------------

class BatchFormerConfig(PreTrainedConfig):
    r"""A timm classifier trained with BatchFormer (``model_type="batchformer"``).

    Args:
        backbone (`str`, defaults to `"resnet18"`): any timm classifier.
        backbone_kwargs (`dict`, *optional*): extra `timm.create_model` arguments.
        backbone_pretrained (`bool`, defaults to `False`): timm's pretrained weights (needs the Hub or its cache).
        num_channels (`int`, defaults to 3): image channels.
        version (`int`, defaults to 1): 1 (in front of the classifier) or 2 (after the modules in `insert_after`).
        insert_after (`list[str]`, *optional*): version 2: module names of the timm model, e.g. `["blocks.8"]`.
        num_heads, dim_feedforward, dropout: the BatchFormer layer (official 4, the channel count, 0.5).
        num_labels: classes (transformers' own field).
    """

    model_type = "batchformer"

    def __init__(self, backbone="resnet18", backbone_kwargs=None, backbone_pretrained=False, num_channels=3, version=1,
                 insert_after=None, num_heads=4, dim_feedforward=None, dropout=0.5, **kwargs):
        kwargs_checked = check_backbone_config(backbone, backbone_kwargs, backbone_pretrained, num_channels)
        if version not in (1, 2):
            raise ValueError(f"`version` must be 1 or 2, got {version!r}")
        if version == 2 and not insert_after:
            raise ValueError("`insert_after` must name at least one module for version 2 (e.g. ['blocks.8'])")
        if version == 1 and insert_after:
            raise ValueError(f"`insert_after` is for version 2, got {insert_after!r} with version 1")
        self.backbone, self.backbone_kwargs, self.backbone_pretrained = backbone, kwargs_checked, backbone_pretrained
        self.num_channels, self.version = num_channels, version
        self.insert_after = [insert_after] if isinstance(insert_after, str) else list(insert_after or [])
        self.num_heads, self.dim_feedforward, self.dropout = num_heads, dim_feedforward, dropout
        super().__init__(**kwargs)


class BatchFormerPreTrainedModel(ChecksummedPretrainedMixin, PreTrainedModel):
    config_class = BatchFormerConfig
    base_model_prefix = "batchformer_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        init_plugin_weights(module)


def _plain_stream(x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(plain, x)``: the first ``batch`` rows, and ``x`` rebuilt from them, so that the plain stream's tensor (a
    hidden state) lies on the path to the logits."""
    if x.shape[0] == batch:
        return x, x
    plain = x[:batch]
    return plain, torch.cat([plain, x[batch:]], dim=0)


class BatchFormerForImageClassification(BatchFormerPreTrainedModel):
    """Any timm classifier with BatchFormer V1 or V2 (see :func:`add_batchformer`). In training the network produces
    both streams and the loss is the cross-entropy over all of them with the labels duplicated; ``logits`` are the
    plain stream's (B rows). In evaluation the plug-in does nothing: outputs equal the timm model's bit for bit."""

    def __init__(self, config: BatchFormerConfig):
        super().__init__(config)
        self.classifier = build_backbone(config.backbone, {**config.backbone_kwargs, "num_classes": config.num_labels},
                                         config.num_channels, config.backbone_pretrained, headless=False)
        check_split_head(self.classifier, "BatchFormer")
        add_batchformer(self.classifier, config.version, config.insert_after or None, config.num_heads,
                        config.dim_feedforward, config.dropout)
        self.post_init()

    def to_timm(self) -> nn.Module:
        """The plain timm classifier this model trains (a copy, weights included, BatchFormer taken off): what inference
        runs and what a Hub export publishes (``timm.create_model`` / transformers' ``TimmWrapper`` load it)."""
        import copy

        return remove_batchformer(copy.deepcopy(self.classifier))

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, **kwargs) -> ImageClassifierOutput:
        check_image_batch("pixel_values", pixel_values, self.config.num_channels, self.dtype)
        if self.training:
            check_finite("pixel_values", pixel_values)
        if labels is not None and (labels.dim() == 0 or labels.shape[0] != pixel_values.shape[0]):
            raise ValueError(f"`labels` must have one row per image ({pixel_values.shape[0]}), got shape "
                             f"{tuple(labels.shape)}")
        if labels is not None:
            check_class_labels(labels, self.config.num_labels)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        batch = pixel_values.shape[0]
        net = self.classifier
        plain_features, features = _plain_stream(net.forward_features(pixel_values), batch)
        plain_pooled, pooled = _plain_stream(net.forward_head(features, pre_logits=True), batch)
        if self.config.version == 1:
            net.batchformer.hook_classifier(net)
        streams = net.get_classifier()(pooled)                                  # (2B, classes) in training
        loss = None
        if labels is not None:
            # transformers' classification loss (config.problem_type), over both streams with the targets duplicated
            loss = self.loss_function(batchformer_targets(net, labels), streams, self.config)
        states = (plain_features, plain_pooled) if output_hidden_states else None
        return ImageClassifierOutput(loss=loss, logits=streams if streams.shape[0] == batch else streams[:batch],
                                     hidden_states=states)


BATCHFORMER_PAPER = ("Hou, Yu and Tao, *BatchFormer: Learning to Explore Sample Relationships for Robust Representation "
                     "Learning*, CVPR 2022 (arXiv:2203.01522)")


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    AutoConfig.register(BatchFormerConfig.model_type, BatchFormerConfig, exist_ok=True)
    AutoModel.register(BatchFormerConfig, BatchFormerForImageClassification, exist_ok=True)
    AutoModelForImageClassification.register(BatchFormerConfig, BatchFormerForImageClassification, exist_ok=True)
    register_family(Family(name="batchformer", title="BatchFormer V1 / V2 (attention across the mini-batch)",
                           config_class=BatchFormerConfig, model_class=BatchFormerForImageClassification,
                           task="image-classification", paper=BATCHFORMER_PAPER, hub="relzoo.models.batchformer_hub",
                           library_name="timm", plugin=True, plugin_prefixes=("batchformer.",),
                           train_script="scripts/train_classifier.py",
                           benchmark="relzoo.benchmarks.plugins"))


_register_auto_classes()
