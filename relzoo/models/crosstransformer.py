"""Few-shot classifiers on any timm backbone: CrossTransformers (Doersch, Gupta, Zisserman, "CrossTransformers:
spatially-aware few-shot transfer", NeurIPS 2020) and the ProtoNet baseline it is measured against (Snell et al.,
"Prototypical Networks for Few-shot Learning", NeurIPS 2017).

transformers:  ``CrossTransformerConfig`` (model_type ``"crosstransformer"``) /
               ``CrossTransformerForFewShotClassification`` and ``ProtoNetConfig`` (``"protonet"``) /
               ``ProtoNetForFewShotClassification``, registered with ``AutoConfig``, ``AutoModel`` and relzoo's
               ``AutoModelForFewShotClassification``.

An episode is ``support_pixel_values (S, C, H, W)`` with ``support_labels (S,)`` in ``0..N-1`` (any number of shots
per class) and ``query_pixel_values (Q, C, H', W')`` (another size is fine). ``model.set_support(...)`` embeds a
support set once; ``model(query_pixel_values=...)`` then classifies any number of query batches against it.

The backbone is any timm model by name, with its spatial features kept (``num_classes=0, global_pool=""``); the
default is the official ``resnet34`` with ``output_stride=16`` (a 14x14x512 map at 224 px). In training, queries can
be normalised with the support set's BatchNorm statistics, gradients flowing through them, as the official model
does (``query_bn_stats="support"``, the default); evaluation uses the running statistics.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from ..layers.crosstransformer import HEAD_INITS, CrossAttentionHead, check_support_labels, prototype_logits
from ..registry import Family, register_family
from .backbones import build_backbone, check_backbone_config, keep_initialisation
from .checksummed_loading import ChecksummedPretrainedMixin
from .inputs import check_finite, check_image_batch

__all__ = ["AutoModelForFewShotClassification", "CrossTransformerConfig", "CrossTransformerForFewShotClassification",
           "FewShotClassifierOutput", "FewShotPreTrainedModel", "ProtoNetConfig", "ProtoNetForFewShotClassification",
           "SupportBatchNorm", "build_backbone", "spatial_features"]

QUERY_BN_STATS = ("support", "batch")
TEST_BN_STATS = ("running", "support")
BACKBONE_INITS = ("official", "timm")
DEFAULT_BACKBONE_KWARGS = {"output_stride": 16}


# ----------------------------------------------------------------------------------------------------------------
# backbone
# ----------------------------------------------------------------------------------------------------------------
def spatial_features(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``backbone.forward_features`` as a map ``(B, C, h, w)``. Token outputs ``(B, L, C)`` (ViTs) lose their prefix
    tokens and are laid out on a square grid when ``L`` is a square, else as ``(B, C, L, 1)``."""
    x = backbone.forward_features(pixel_values)
    if x.ndim == 4:
        return x
    if x.ndim != 3:
        raise ValueError(f"backbone {type(backbone).__name__} returned features of shape {tuple(x.shape)}; expected a "
                         "map (B, C, h, w) or tokens (B, L, C)")
    x = x[:, getattr(backbone, "num_prefix_tokens", 0):]
    side = math.isqrt(x.shape[1])
    grid = (side, side) if side * side == x.shape[1] else (x.shape[1], 1)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class SupportBatchNorm:
    """Normalise queries with the support set's BatchNorm moments: run the support images under ``recording()`` and
    the queries under ``applying()``.

    Forward hooks on every BatchNorm of a backbone: while ``recording``, each BatchNorm keeps the batch mean and
    variance of its input; while ``applying``, each normalises its input with the kept moments (gradients flow
    through them) instead of its own statistics, and leaves the running statistics alone.

    In training (``BatchNorm.training``) the support images are normalised by BatchNorm itself with their batch
    statistics, which also updates the running statistics. ``in_eval=True`` covers BatchNorms in eval mode too: the
    support images are then normalised with their own moments as well, and no running statistic changes (the
    official ProtoNet's test-time normalisation)."""

    def __init__(self, backbone: nn.Module, in_eval: bool = False):
        self.norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.in_eval = in_eval

    def _record(self, module, args):
        x = args[0]
        dims = [0, *range(2, x.ndim)]
        self.moments[id(module)] = (x.mean(dims), x.var(dims, unbiased=False))

    def _apply(self, module, args, output):
        x = args[0]
        mean, var = self.moments[id(module)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
        if module.affine:
            y = y * module.weight.view(shape) + module.bias.view(shape)
        for extra in ("drop", "act"):  # timm's BatchNormAct2d: batch norm, then dropout, then activation
            if isinstance(getattr(module, extra, None), nn.Module):
                y = getattr(module, extra)(y)
        return y

    @contextlib.contextmanager
    def recording(self):
        self.moments.clear()
        handles = []
        for m in self.norms:
            if m.training or self.in_eval:
                handles.append(m.register_forward_pre_hook(self._record))
            if not m.training and self.in_eval:  # eval mode: normalise with the recorded moments, not running ones
                handles.append(m.register_forward_hook(self._apply))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def applying(self):
        active = [m for m in self.norms if id(m) in self.moments]
        handles = [m.register_forward_hook(self._apply) for m in active]
        training = [m for m in active if m.training]
        for m in training:
            m.train(False)  # its own forward then neither uses nor updates batch statistics
        try:
            yield
        finally:
            for m in training:
                m.train(True)
            for h in handles:
                h.remove()


# ----------------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------------
def check_images(name: str, x, channels: int, dtype: torch.dtype, allow_empty: bool = False) -> None:
    """``x`` must be a floating-point ``(B, channels, H, W)`` tensor of the model's dtype (any float under autocast)."""
    check_image_batch(name, x, channels, dtype)
    if x.shape[0] == 0 and not allow_empty:
        what = "support set is empty" if name.startswith("support") else "query batch is empty"
        raise ValueError(f"`{name}` holds no image (shape {tuple(x.shape)}): the {what}")


def check_query_labels(query_labels, num_queries: int, num_classes: int) -> None:
    if not isinstance(query_labels, torch.Tensor) or query_labels.dtype.is_floating_point \
            or query_labels.dtype == torch.bool:
        raise TypeError(f"`query_labels` must be an integer tensor ({num_queries},), got "
                        f"{getattr(query_labels, 'dtype', type(query_labels).__name__)}")
    if query_labels.shape != (num_queries,):
        raise ValueError(f"`query_labels` must have shape ({num_queries},) (one per query image), got "
                         f"{tuple(query_labels.shape)}")
    if num_queries and (int(query_labels.min()) < 0 or int(query_labels.max()) >= num_classes):
        raise ValueError(f"`query_labels` must be class indices in 0..{num_classes - 1} (the episode has {num_classes} "
                         f"classes), got values in {int(query_labels.min())}..{int(query_labels.max())}")


# ----------------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------------
def _check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


class _FewShotConfig(PreTrainedConfig):
    def _set_common(self, backbone, backbone_kwargs, backbone_pretrained, num_channels, query_bn_stats,
                    test_bn_stats, backbone_init):
        kwargs = check_backbone_config(backbone, backbone_kwargs, backbone_pretrained, num_channels,
                                       reserved=("num_classes", "global_pool", "in_chans", "pretrained"))
        _check_choice("query_bn_stats", query_bn_stats, QUERY_BN_STATS)
        _check_choice("test_bn_stats", test_bn_stats, TEST_BN_STATS)
        _check_choice("backbone_init", backbone_init, BACKBONE_INITS)
        self.backbone_kwargs = dict(DEFAULT_BACKBONE_KWARGS) if backbone_kwargs is None and backbone == "resnet34" \
            else kwargs
        self.backbone, self.backbone_pretrained = backbone, backbone_pretrained
        self.num_channels, self.query_bn_stats, self.test_bn_stats = num_channels, query_bn_stats, test_bn_stats
        self.backbone_init = backbone_init


class CrossTransformerConfig(_FewShotConfig):
    r"""Configuration of a CrossTransformers few-shot classifier (``model_type="crosstransformer"``). Defaults are the
    official model except `head_init`: the released truncated-normal heads (std 0.1) start with one-hot attention
    over 512-channel features, which at small budgets does not train (see `head_init` and the README).

    Args:
        backbone (`str`, defaults to `"resnet34"`): timm model name; its spatial feature map is kept.
        backbone_kwargs (`dict`, *optional*): extra `timm.create_model` arguments; `None` gives `{"output_stride": 16}`
            for the default `resnet34` (14x14 maps at 224 px, as the official model) and `{}` otherwise.
        backbone_pretrained (`bool`, defaults to `False`): start the backbone from timm's pretrained weights (the
            released configuration trains from scratch).
        num_channels (`int`, defaults to 3): input image channels.
        key_dim (`int`, defaults to 128): d_k of the bias-free key/query projection (one weight for both).
        value_dim (`int`, defaults to 128): d_v of the bias-free value projection (one weight for support and query).
        chunk_size (`int`, defaults to 16): queries computed (and recomputed for gradients) together; bounds the
            head's peak memory. 0: all queries at once, no recomputation.
        query_bn_stats (`str`, defaults to `"support"`): in training, normalise queries with the support set's
            BatchNorm moments (`"support"`, official) or with their own batch statistics (`"batch"`).
        test_bn_stats (`str`, defaults to `"running"`): in evaluation, normalise with BatchNorm's running statistics
            (`"running"`, the official CrossTransformers' `bn.use_ema`) or with the support set's moments, queries
            included (`"support"`, the official ProtoNet's; every episode then runs the backbone again).
        backbone_init (`str`, defaults to `"official"`): `"official"`: every backbone convolution from a truncated
            normal with std 0.1 (cut at 2 std), BatchNorm scale 1 and offset 0, as the released model; `"timm"`: the
            backbone as timm initialises it. Not used with `backbone_pretrained`.
        head_init (`str`, defaults to `"small"`): `"small"`: key projection N(0, 1/C), value projection
            N(0, 1/(C d_v)), so that attention logits start at O(1) and distances at O(1); `"official"`: the released
            truncated normal with std 0.1 (attention logits with a standard deviation in the tens at 512 channels:
            one-hot attention from the first step).
        implementation (`str`, defaults to `"fast"`): `"fast"` batched head or `"reference"` per-query loop.
    """

    model_type = "crosstransformer"

    def __init__(self, backbone="resnet34", backbone_kwargs=None, backbone_pretrained=False, num_channels=3,
                 key_dim=128, value_dim=128, chunk_size=16, query_bn_stats="support", test_bn_stats="running",
                 backbone_init="official", head_init="small", implementation="fast", **kwargs):
        self._set_common(backbone, backbone_kwargs, backbone_pretrained, num_channels, query_bn_stats, test_bn_stats,
                         backbone_init)
        _check_choice("head_init", head_init, HEAD_INITS)
        self.head_init = head_init
        for name, value, low in (("key_dim", key_dim, 1), ("value_dim", value_dim, 1), ("chunk_size", chunk_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
        if implementation not in ("fast", "reference"):
            raise ValueError(f"`implementation` must be 'fast' or 'reference', got {implementation!r}")
        self.key_dim, self.value_dim, self.chunk_size, self.implementation = key_dim, value_dim, chunk_size, \
            implementation
        super().__init__(**kwargs)


class ProtoNetConfig(_FewShotConfig):
    r"""Configuration of a ProtoNet few-shot classifier (``model_type="protonet"``): mean-pooled backbone features,
    class prototypes as means, logits = minus the squared Euclidean distance.

    Args:
        backbone (`str`, defaults to `"resnet34"`): timm model name.
        backbone_kwargs (`dict`, *optional*): extra `timm.create_model` arguments; `None` gives `{"output_stride": 16}`
            for `resnet34` (the same backbone as CrossTransformers, as in its paper's comparison) and `{}` otherwise.
        backbone_pretrained (`bool`, defaults to `False`): start from timm's pretrained weights.
        num_channels (`int`, defaults to 3): input image channels.
        query_bn_stats (`str`, defaults to `"support"`): in training, normalise queries with the support set's
            BatchNorm moments (`"support"`) or with their own batch statistics (`"batch"`).
        test_bn_stats (`str`, defaults to `"support"`): in evaluation, normalise support and queries with the support
            set's BatchNorm moments (`"support"`, the official ProtoNet: its config does not set `bn.use_ema`; every
            episode runs the backbone again) or with the running statistics (`"running"`).
        backbone_init (`str`, defaults to `"official"`): `"official"`: every backbone convolution from a truncated
            normal with std 0.1 (cut at 2 std), BatchNorm 1 / 0, as the released model; `"timm"`: timm's own.
    """

    model_type = "protonet"

    def __init__(self, backbone="resnet34", backbone_kwargs=None, backbone_pretrained=False, num_channels=3,
                 query_bn_stats="support", test_bn_stats="support", backbone_init="official", **kwargs):
        self._set_common(backbone, backbone_kwargs, backbone_pretrained, num_channels, query_bn_stats, test_bn_stats,
                         backbone_init)
        super().__init__(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class FewShotClassifierOutput(ModelOutput):
    """Output of a few-shot classifier.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy of the query logits, when `query_labels`
            are given.
        logits (`torch.FloatTensor` of shape `(Q, N)`): scores of each query image for the episode's N classes
            (minus a squared distance).
        attentions (`torch.FloatTensor` of shape `(Q, h'*w', S, h*w)`, *optional*): CrossTransformers only, with
            `output_attentions=True`: the weight of every support position (of every support image) for every query
            position; over the support images of one class they sum to 1.
        query_feature_size (`tuple[int, int]`, *optional*): `(h', w')` of the query feature map (to lay out
            `attentions`).
        support_feature_size (`tuple[int, int]`, *optional*): `(h, w)` of the support feature map.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): with `output_hidden_states=True`, the backbone's
            feature map of the queries, `(Q, C, h', w')`, as a 1-tuple.
        support_hidden_states (`tuple(torch.FloatTensor)`, *optional*): likewise for the support set, `(S, C, h, w)`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    attentions: torch.FloatTensor | None = None
    query_feature_size: tuple[int, int] | None = None
    support_feature_size: tuple[int, int] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    support_hidden_states: tuple[torch.FloatTensor, ...] | None = None


class FewShotPreTrainedModel(ChecksummedPretrainedMixin, PreTrainedModel):
    """Shared by both few-shot classifiers: backbone, support handling, input checks, loss."""

    main_input_name = "query_pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "fewshot"
    supports_gradient_checkpointing = False

    def _build_backbone(self, config) -> None:
        self.backbone = build_backbone(config.backbone, config.backbone_kwargs, config.num_channels,
                                       config.backbone_pretrained)
        if config.backbone_init == "timm":
            keep_initialisation(self.backbone)
        self._support = None

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # the official initialisation: truncated normal (std 0.1, cut at 2 std) for every backbone convolution,
        # PyTorch's defaults (BatchNorm 1 / 0) for the rest; CrossTransformers' projections follow `head_init`.
        # (transformers skips modules without parameters of their own, such as the head itself: go by the conv.)
        head = getattr(self, "head", None)
        if isinstance(head, CrossAttentionHead) and (module is head.key_proj or module is head.value_proj):
            head.init_projection(module, self.config.head_init)
        elif isinstance(module, nn.Conv2d):
            nn.init.trunc_normal_(module.weight, std=0.1, a=-0.2, b=0.2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters") and not isinstance(module, PreTrainedModel):
            module.reset_parameters()

    def _uses_support_moments(self) -> bool:
        """Whether this forward normalises with the support set's BatchNorm moments (training: `query_bn_stats`;
        evaluation: `test_bn_stats`)."""
        if self.training:
            return self.config.query_bn_stats == "support"
        return getattr(self.config, "test_bn_stats", "running") == "support"

    # -- support handling ------------------------------------------------------------------------------------------
    def _embed_support(self, support_pixel_values, support_labels) -> dict:
        check_images("support_pixel_values", support_pixel_values, self.config.num_channels, self.dtype)
        num_classes = check_support_labels(support_labels, support_pixel_values.shape[0])
        moments = None
        if self._uses_support_moments():
            moments = SupportBatchNorm(self.backbone, in_eval=not self.training)
            with moments.recording():
                features = spatial_features(self.backbone, support_pixel_values)
        else:
            features = spatial_features(self.backbone, support_pixel_values)
        support = {"labels": support_labels.to(features.device), "num_classes": num_classes, "moments": moments,
                   "feature_size": tuple(features.shape[-2:]), "features": features}
        support.update(self._project_support(features))
        return support

    def _query_features(self, query_pixel_values, support) -> torch.Tensor:
        """Backbone maps of already-checked query images (support moments applied in training when recorded)."""
        moments = support["moments"]
        if moments is not None and self._uses_support_moments():
            with moments.applying():
                return spatial_features(self.backbone, query_pixel_values)
        return spatial_features(self.backbone, query_pixel_values)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone feature maps ``(B, C, h, w)`` of images ``(B, num_channels, H, W)``. In eval mode with
        ``test_bn_stats="running"`` they do not depend on the episode (:attr:`episode_independent_features`), so an
        evaluation can embed every image once and reuse the maps with :meth:`logits_from_features`."""
        check_images("pixel_values", pixel_values, self.config.num_channels, self.dtype)
        return spatial_features(self.backbone, pixel_values)

    @property
    def episode_independent_features(self) -> bool:
        """Whether an image's backbone features are the same in every episode (eval mode with running BatchNorm
        statistics); with the support set's moments (``test_bn_stats="support"``) every episode runs the backbone."""
        return not self.training and not self._uses_support_moments()

    def logits_from_features(self, query_features: torch.Tensor, support_features: torch.Tensor,
                             support_labels: torch.Tensor, output_attentions: bool = False):
        """Episode logits ``(Q, N)`` from feature maps made by :meth:`embed` (and the attention weights, or
        ``None``)."""
        num_classes = check_support_labels(support_labels, support_features.shape[0])
        support = {"labels": support_labels, "num_classes": num_classes, **self._project_support(support_features)}
        return self._classify(query_features, support, output_attentions)

    def set_support(self, support_pixel_values: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Embed a support set once (``(S, C, H, W)`` images, ``(S,)`` labels in ``0..N-1``); later calls of
        ``model(query_pixel_values=...)`` classify against it until ``set_support`` or ``clear_support``."""
        self._support = self._embed_support(support_pixel_values, support_labels)

    def clear_support(self) -> None:
        """Forget the support set stored by :meth:`set_support`."""
        self._support = None

    def _episode(self, query_pixel_values, support_pixel_values, support_labels, query_labels):
        if (support_pixel_values is None) != (support_labels is None):
            missing = "support_labels" if support_labels is None else "support_pixel_values"
            raise ValueError(f"`support_pixel_values` and `support_labels` go together: `{missing}` is missing")
        # every check before any backbone runs
        if support_pixel_values is not None:
            check_images("support_pixel_values", support_pixel_values, self.config.num_channels, self.dtype)
            num_classes = check_support_labels(support_labels, support_pixel_values.shape[0])
        elif self._support is not None:
            num_classes = self._support["num_classes"]
        else:
            raise ValueError("no support set: pass `support_pixel_values` and `support_labels`, or call "
                             "`model.set_support(support_pixel_values, support_labels)` first")
        if query_pixel_values is None:
            raise ValueError("`query_pixel_values` (Q, C, H, W) is required")
        check_images("query_pixel_values", query_pixel_values, self.config.num_channels, self.dtype)
        if self.training:
            for name, x in (("support_pixel_values", support_pixel_values), ("query_pixel_values", query_pixel_values)):
                if x is not None:
                    check_finite(name, x)
        if query_labels is not None:
            check_query_labels(query_labels, query_pixel_values.shape[0], num_classes)
        support = self._embed_support(support_pixel_values, support_labels) if support_pixel_values is not None \
            else self._support
        return support, self._query_features(query_pixel_values, support)

    def _output(self, logits, query_labels, query_features, support, output_hidden_states=None, attentions=None):
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        loss = F.cross_entropy(logits.float(), query_labels.to(logits.device).long()) if query_labels is not None \
            else None
        return FewShotClassifierOutput(
            loss=loss, logits=logits, attentions=attentions, query_feature_size=tuple(query_features.shape[-2:]),
            support_feature_size=support["feature_size"],
            hidden_states=(query_features,) if output_hidden_states else None,
            support_hidden_states=(support["features"],) if output_hidden_states else None)


class CrossTransformerForFewShotClassification(FewShotPreTrainedModel):
    """CrossTransformers: query-aligned prototypes from spatial cross-attention (see
    :mod:`relzoo.layers.crosstransformer`). ``forward(query_pixel_values (Q, C, H', W'), support_pixel_values
    (S, C, H, W), support_labels (S,), query_labels (Q,) optional)`` -> :class:`FewShotClassifierOutput` with
    ``logits (Q, N)``."""

    config_class = CrossTransformerConfig

    def __init__(self, config: CrossTransformerConfig):
        super().__init__(config)
        self._build_backbone(config)
        self.head = CrossAttentionHead(self.backbone.num_features, config.key_dim, config.value_dim,
                                       config.chunk_size, config.implementation)
        self.post_init()

    def _project_support(self, features) -> dict:
        keys, values = self.head.project(features)
        return {"keys": keys, "values": values}

    @can_return_tuple
    def forward(self, query_pixel_values: torch.Tensor | None = None, support_pixel_values: torch.Tensor | None = None,
                support_labels: torch.Tensor | None = None, query_labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                **kwargs) -> FewShotClassifierOutput:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        support, query_features = self._episode(query_pixel_values, support_pixel_values, support_labels,
                                                query_labels)
        logits, attentions = self._classify(query_features, support, bool(output_attentions))
        return self._output(logits, query_labels, query_features, support, output_hidden_states, attentions)

    def _classify(self, query_features, support, output_attentions=False):
        out = self.head(query_features, None, support["labels"], support["num_classes"],
                        return_attention=output_attentions, support_projection=(support["keys"], support["values"]))
        return out if output_attentions else (out, None)


class ProtoNetForFewShotClassification(FewShotPreTrainedModel):
    """Prototypical Networks on a timm backbone: mean-pooled embeddings, class means as prototypes, logits = minus the
    squared Euclidean distance. Same inputs and output as :class:`CrossTransformerForFewShotClassification`."""

    config_class = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig):
        super().__init__(config)
        self._build_backbone(config)
        self.post_init()

    def _project_support(self, features) -> dict:
        return {"embeddings": features.mean((-2, -1))}

    @can_return_tuple
    def forward(self, query_pixel_values: torch.Tensor | None = None, support_pixel_values: torch.Tensor | None = None,
                support_labels: torch.Tensor | None = None, query_labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, **kwargs) -> FewShotClassifierOutput:
        support, query_features = self._episode(query_pixel_values, support_pixel_values, support_labels,
                                                query_labels)
        logits, _ = self._classify(query_features, support)
        return self._output(logits, query_labels, query_features, support, output_hidden_states)

    def _classify(self, query_features, support, output_attentions=False):
        logits = prototype_logits(query_features.mean((-2, -1)), support["embeddings"], support["labels"],
                                  support["num_classes"])
        return logits, None


# ----------------------------------------------------------------------------------------------------------------
# Auto classes
# ----------------------------------------------------------------------------------------------------------------
class AutoModelForFewShotClassification(_BaseAutoModelClass):
    """``AutoModelForFewShotClassification.from_pretrained(folder)`` picks the few-shot class from the config
    (transformers has no few-shot task; relzoo adds this Auto class for it)."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())


CTX_PAPER = ("Doersch, Gupta and Zisserman, *CrossTransformers: spatially-aware few-shot transfer*, NeurIPS 2020 "
             "(arXiv:2007.11498)")
PROTONET_PAPER = "Snell, Swersky and Zemel, *Prototypical Networks for Few-shot Learning*, NeurIPS 2017 (arXiv:1703.05175)"


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel

    for config_class, model_class in ((CrossTransformerConfig, CrossTransformerForFewShotClassification),
                                      (ProtoNetConfig, ProtoNetForFewShotClassification)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForFewShotClassification.register(config_class, model_class, exist_ok=True)
    for config_class, model_class, title, paper in (
            (CrossTransformerConfig, CrossTransformerForFewShotClassification,
             "CrossTransformers (spatially-aware few-shot classification)", CTX_PAPER),
            (ProtoNetConfig, ProtoNetForFewShotClassification, "Prototypical Networks (the few-shot baseline)",
             PROTONET_PAPER)):
        register_family(Family(name=config_class.model_type, title=title, config_class=config_class,
                               model_class=model_class, task="few-shot-image-classification", paper=paper,
                               hub="relzoo.models.crosstransformer_hub", train_script="scripts/train_fewshot.py",
                               benchmark="relzoo.benchmarks.crosstransformer"))


_register_auto_classes()
