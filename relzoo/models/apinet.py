"""API-Net (attentive pairwise interaction) as a training-only plug-in for any timm classifier (issue 8).

``add_apinet(model)`` attaches ``model.apinet`` (the mutual-vector MLP, :class:`relzoo.layers.apinet.MutualVector`)
and nothing else: the model's forward is untouched, so inference is the plain backbone and classifier, bit for bit.
Training goes through :func:`apinet_training_loss` (or :class:`APINetForImageClassification`): one backbone pass, the
pooled features ``x = forward_head(features, pre_logits=True)``, pairs mined in the batch (every image with its
nearest same-class and nearest other-class image on detached features: ``2B`` pairs), the four gated features of each
pair through the model's own classifier, and cross-entropy on all of them plus the score-ranking hinge.

Differences from the official code, by design: the pooled feature and classifier are the timm model's own (any
backbone, any input size, instead of ResNet-101 with a fixed 14x14 pool at 448 px); the official ``Dropout(0.5)``
before the classifier is timm's ``drop_rate`` (``backbone_kwargs={"drop_rate": 0.5}``), which timm applies to the
pooled features, i.e. before the gates rather than after them; a batch that cannot be paired (fewer than 2 images,
one class, a class with a single image) raises a ``ValueError`` instead of pairing with image 0.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils.generic import can_return_tuple

from ..layers.apinet import MutualVector, apinet_loss, attentive_features, check_pairable, mine_pairs
from ..registry import Family, register_family
from .backbones import build_backbone, check_backbone_config
from .checksummed_loading import ChecksummedPretrainedMixin
from .inputs import check_class_labels, check_finite, check_image_batch
from .plugins import (
    TrainingPlugin,
    check_split_head,
    classifier_of,
    init_plugin_weights,
    pooled_width,
    register_plugin,
    remove_plugin,
)

__all__ = ["APINetConfig", "APINetForImageClassification", "APINetLoss", "APINetPlugin", "APINetPreTrainedModel",
           "add_apinet", "apinet_training_loss", "has_apinet", "remove_apinet"]


class APINetLoss(NamedTuple):
    """What one API-Net training step computes: ``loss = ce + rank_weight * rank``, the plain-stream ``logits``
    (``(B, classes)``, the network's own output on the batch), the backbone ``features`` and ``pooled`` features."""

    loss: torch.Tensor
    ce: torch.Tensor
    rank: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor
    pooled: torch.Tensor


def _check_positive(name: str, value, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise ValueError(f"`{name}` must be a positive {'int' if integer else 'number'}, got {value!r}")


class APINetPlugin(nn.Module):
    """``model.apinet``: the mutual-vector MLP and the loss settings (margin 0.05 and weight 1 officially)."""

    def __init__(self, dim: int, hidden: int = 512, dropout: float = 0.5, margin: float = 0.05,
                 rank_weight: float = 1.0):
        super().__init__()
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
        if not (isinstance(margin, (int, float)) and margin >= 0):
            raise ValueError(f"`margin` must be a number >= 0, got {margin!r}")
        if not (isinstance(rank_weight, (int, float)) and rank_weight >= 0):
            raise ValueError(f"`rank_weight` must be a number >= 0, got {rank_weight!r}")
        self.mutual = MutualVector(dim, hidden, dropout)
        self.margin, self.rank_weight = float(margin), float(rank_weight)

    def pair_loss(self, pooled: torch.Tensor, labels: torch.Tensor, classifier: nn.Module,
                  cross_entropy=F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, ce, rank)`` for pooled features ``(B, C)`` and their labels (see the module doc)."""
        anchors, partners = mine_pairs(pooled, labels)
        four = attentive_features(pooled[anchors], pooled[partners], self.mutual)
        logits = classifier(torch.cat(four)).chunk(4)                     # one classifier pass over the 8B rows
        return apinet_loss(logits, labels[anchors], labels[partners], self.margin, self.rank_weight, cross_entropy)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, rank_weight={self.rank_weight}"


def add_apinet(model: nn.Module, hidden: int = 512, dropout: float = 0.5, margin: float = 0.05,
               rank_weight: float = 1.0) -> nn.Module:
    """Attach API-Net to a timm classifier in place and return it. The model's own forward is unchanged; train with
    :func:`apinet_training_loss`. ``hidden``, ``dropout``: the mutual-vector MLP (official 512, 0.5); ``margin``,
    ``rank_weight``: the score-ranking hinge (official 0.05, 1)."""
    if hasattr(model, "apinet"):
        raise ValueError(f"{type(model).__name__} already has an API-Net plug-in (model.apinet)")
    _check_positive("hidden", hidden, integer=True)
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, nn.Module) and not isinstance(classifier, nn.Identity):
        dim = check_split_head(model, "API-Net")
    else:   # headless: training needs a classifier (apinet_training_loss says so), reset_classifier() gives one
        dim = pooled_width(model, "API-Net")
    plugin = APINetPlugin(dim, hidden, dropout, margin, rank_weight)
    param = next(model.parameters())
    model.apinet = plugin.to(device=param.device, dtype=param.dtype)
    return model


def has_apinet(model: nn.Module) -> bool:
    return isinstance(getattr(model, "apinet", None), APINetPlugin)


def remove_apinet(model: nn.Module) -> nn.Module:
    """Take API-Net off a model in place and return the plain network (exactly its original keys)."""
    if not has_apinet(model):
        raise ValueError(f"{type(model).__name__} has no API-Net plug-in (model.apinet)")
    return remove_plugin(model, "apinet")


def apinet_training_loss(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor,
                         cross_entropy=F.cross_entropy) -> APINetLoss:
    """One API-Net training forward of a model carrying the plug-in (:func:`add_apinet`); see :class:`APINetLoss`.
    ``labels`` are class ids; the batch must pair (at least 2 classes, at least 2 images of each: use
    :class:`relzoo.data.sampling.ClassBalancedBatchSampler`), else a ``ValueError`` says so before the backbone
    runs."""
    if not has_apinet(model):
        raise ValueError(f"{type(model).__name__} has no API-Net plug-in: call relzoo.add_apinet(model) first")
    if labels.dim() != 1 or labels.shape[0] != pixel_values.shape[0]:
        raise ValueError(f"`labels` must be one class id per image, shape ({pixel_values.shape[0]},), got "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"API-Net trains single-label classifiers: `labels` must be integer class ids, got dtype "
                         f"{labels.dtype}")
    classifier = classifier_of(model, "API-Net")
    out_features = getattr(classifier, "out_features", None)
    if out_features is not None:
        check_class_labels(labels, out_features)
    check_pairable(labels)                                                  # before the backbone runs
    features = model.forward_features(pixel_values)
    pooled = model.forward_head(features, pre_logits=True)
    logits = classifier(pooled)
    total, ce, rank = model.apinet.pair_loss(pooled, labels, classifier, cross_entropy)
    return APINetLoss(total, ce, rank, logits, features, pooled)


def _check_arguments(args) -> None:
    if isinstance(args.samples_per_class, bool) or not isinstance(args.samples_per_class, int) or \
            args.samples_per_class < 2:
        raise ValueError(f"`samples_per_class` must be an int >= 2 (API-Net needs a same-class partner), got "
                         f"{args.samples_per_class!r}")
    if args.batch_size % args.samples_per_class or args.batch_size // args.samples_per_class < 2:
        raise ValueError(f"`batch_size` must be a multiple of samples_per_class={args.samples_per_class} "
                         f"covering at least 2 classes for --plugin apinet, got {args.batch_size}")


def _batch_sampler(labels, args):
    """n classes x n images per batch, so that every image has both partners."""
    from ..data.sampling import ClassBalancedBatchSampler

    return ClassBalancedBatchSampler(labels, args.batch_size // args.samples_per_class, args.samples_per_class,
                                     seed=args.seed)


register_plugin(TrainingPlugin(
    name="apinet", attribute="apinet", description="pairs within class-balanced batches",
    add=lambda model, args: add_apinet(model), remove=remove_apinet,
    loss=lambda net, pixel_values, labels, loss_fn: apinet_training_loss(net, pixel_values, labels, loss_fn).loss,
    batch_sampler=_batch_sampler, check_arguments=_check_arguments, options=("samples_per_class",)))


# --- transformers ---------------------------------------------------------------------------------------------------

class APINetConfig(PreTrainedConfig):
    r"""A timm classifier trained with API-Net (``model_type="apinet"``).

    Args:
        backbone (`str`, defaults to `"resnet18"`): any timm classifier (official: ResNet-101).
        backbone_kwargs (`dict`, *optional*): extra `timm.create_model` arguments (`{"drop_rate": 0.5}` is the
            official dropout before the classifier).
        backbone_pretrained (`bool`, defaults to `False`): timm's pretrained weights (needs the Hub or its cache).
        num_channels (`int`, defaults to 3): image channels.
        hidden_size (`int`, defaults to 512): the mutual-vector MLP's hidden width.
        mutual_dropout (`float`, defaults to 0.5): dropout between its two linear layers.
        margin (`float`, defaults to 0.05), rank_weight (`float`, defaults to 1.0): the score-ranking hinge.
        num_labels: classes (transformers' own field; API-Net needs at least 2, single-label).
    """

    model_type = "apinet"

    def __init__(self, backbone="resnet18", backbone_kwargs=None, backbone_pretrained=False, num_channels=3,
                 hidden_size=512, mutual_dropout=0.5, margin=0.05, rank_weight=1.0, **kwargs):
        self.backbone_kwargs = check_backbone_config(backbone, backbone_kwargs, backbone_pretrained, num_channels)
        _check_positive("hidden_size", hidden_size, integer=True)
        if not (isinstance(mutual_dropout, (int, float)) and 0 <= mutual_dropout < 1):
            raise ValueError(f"`mutual_dropout` must be in [0, 1), got {mutual_dropout!r}")
        for name, value in (("margin", margin), ("rank_weight", rank_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}")
        self.backbone, self.backbone_pretrained, self.num_channels = backbone, backbone_pretrained, num_channels
        self.hidden_size, self.mutual_dropout, self.margin, self.rank_weight = (hidden_size, mutual_dropout, margin,
                                                                                rank_weight)
        super().__init__(**kwargs)


class APINetPreTrainedModel(ChecksummedPretrainedMixin, PreTrainedModel):
    config_class = APINetConfig
    base_model_prefix = "apinet_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        init_plugin_weights(module)


class APINetForImageClassification(APINetPreTrainedModel):
    """Any timm classifier with API-Net. In training, with ``labels``, the loss is API-Net's (pairs mined in the
    batch, cross-entropy on the four gated features, score ranking); ``logits`` are the plain network's. Otherwise
    (evaluation, or no labels) it is the timm model itself, bit for bit, with transformers' classification loss when
    labels are given. API-Net is single-label classification: training with another ``problem_type`` is refused."""

    def __init__(self, config: APINetConfig):
        super().__init__(config)
        self.classifier = build_backbone(config.backbone, {**config.backbone_kwargs, "num_classes": config.num_labels},
                                         config.num_channels, config.backbone_pretrained, headless=False)
        add_apinet(self.classifier, config.hidden_size, config.mutual_dropout, config.margin, config.rank_weight)
        self.post_init()

    def to_timm(self) -> nn.Module:
        """The plain timm classifier this model trains (a copy, weights included, API-Net taken off): what inference
        runs and what a Hub export publishes (``timm.create_model`` / transformers' ``TimmWrapper`` load it)."""
        import copy

        return remove_apinet(copy.deepcopy(self.classifier))

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
        net = self.classifier
        if self.training and labels is not None:
            if self.config.problem_type not in (None, "single_label_classification") or self.config.num_labels < 2:
                raise ValueError("API-Net trains single-label classifiers with at least 2 classes: "
                                 f"problem_type={self.config.problem_type!r}, num_labels={self.config.num_labels} "
                                 "(evaluation mode computes transformers' loss for any problem_type)")
            out = apinet_training_loss(net, pixel_values, labels)
            loss, logits, features, pooled = out.loss, out.logits, out.features, out.pooled
        else:
            features = net.forward_features(pixel_values)
            pooled = net.forward_head(features, pre_logits=True)
            logits = net.get_classifier()(pooled)
            loss = None if labels is None else self.loss_function(labels, logits, self.config)
        states = (features, pooled) if output_hidden_states else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=states)


APINET_PAPER = ("Zhuang, Wang and Qiao, *Learning Attentive Pairwise Interaction for Fine-Grained Classification*, "
                "AAAI 2020 (arXiv:2002.10191)")


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    AutoConfig.register(APINetConfig.model_type, APINetConfig, exist_ok=True)
    AutoModel.register(APINetConfig, APINetForImageClassification, exist_ok=True)
    AutoModelForImageClassification.register(APINetConfig, APINetForImageClassification, exist_ok=True)
    register_family(Family(name="apinet", title="API-Net (attentive pairwise interaction)", config_class=APINetConfig,
                           model_class=APINetForImageClassification, task="image-classification", paper=APINET_PAPER,
                           hub="relzoo.models.apinet_hub", library_name="timm", plugin=True,
                           plugin_prefixes=("apinet.",), train_script="scripts/train_classifier.py",
                           benchmark="relzoo.benchmarks.plugins"))


_register_auto_classes()
