"""HSNet few-shot segmentation as a transformers model on any timm CNN backbone.

``HSNetForFewShotSegmentation(query_pixel_values (B, C, H, W), support_pixel_values (B, K, C, H', W'),
support_masks (B, K, H', W'), labels (B, H, W) optional)`` -> :class:`FewShotSegmentationOutput` with two-class
``logits (B, 2, H, W)`` at the query's input size, the predicted mask and the loss.

The backbone is frozen and stays in eval mode (its BatchNorm statistics never change); its taps
(:mod:`relzoo.models.hsnet_taps`) are read once for the queries and once for all ``B * K`` support images, whatever
``K``. Each shot's support features are masked by its mask (bilinear, ``align_corners=True``), correlated with the
query's (:func:`relzoo.layers.hsnet.shot_hypercorrelation`: query taps normalised once, support positions outside the
mask never computed since their correlation is exactly 0) and squeezed by the learner, one shot per pass (on a CPU,
5 shots in one pass took twice as long as 5 passes);
:func:`official_order_forward` is the reference in the official order. Logits are resized bilinearly
(``align_corners=True``) to the query's size. With ``K > 1`` the prediction is the official vote: each shot's argmax
mask is summed, divided by the image's largest vote, and thresholded at 0.5; ``logits`` are then the mean of the
shots' logits (what the loss uses when training with several shots; the official model trains with one).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from ..layers.hsnet import HypercorrelationLearner, hypercorrelation, masked_features, shot_hypercorrelation
from ..registry import Family, register_family
from .backbones import build_backbone, check_backbone_config
from .checksummed_loading import ChecksummedPretrainedMixin
from .hsnet_taps import LEVEL_STRIDES, FeatureTaps, prune_after_taps, resolve_taps
from .inputs import check_finite, check_image_batch

__all__ = ["AutoModelForFewShotSegmentation", "FewShotSegmentationOutput", "HSNetConfig",
           "HSNetForFewShotSegmentation", "HSNetPreTrainedModel", "official_order_forward", "vote"]

IGNORE_INDEX = 255


class HSNetConfig(PreTrainedConfig):
    r"""Configuration of an HSNet few-shot segmenter (``model_type="hsnet"``).

    Args:
        backbone (`str`, defaults to `"resnet50"`): timm CNN name. `resnet50*`, `resnet101*` and `vgg16` get the
            official taps; other CNNs the generic rule of :func:`relzoo.models.hsnet_taps.generic_taps`.
        backbone_kwargs (`dict`, *optional*): extra `timm.create_model` arguments.
        backbone_pretrained (`bool`, defaults to `False`): load timm's pretrained backbone weights (HSNet uses
            ImageNet weights and keeps them frozen; `False` gives a random frozen backbone, for tests).
        feature_taps (`list[list[str]]`, *optional*): the taps per level, shallowest first (`"module"` = its output,
            `"module:input"` = its input). `None`: resolved from the backbone when the model is built and stored.
        num_channels (`int`, defaults to 3): image channels.
        use_support_mask (`bool`, defaults to `True`): mask the support features (official); `False` is the
            paper's unmasked (dagger) variant.
        image_size (`int`, defaults to 400): the side this model's episodes are resized to, as its image processor
            says: 400 for the official models, the run's `--image_size` for a relzoo fine-tuning.
        max_correlation_gib (`float`, defaults to 4.0): the largest 4D correlation (all taps of the finest level, one
            shot of the batch, in GiB) the model builds; larger query x support sizes are refused before the
            backbone runs (a 1600 px query and support on ResNet-18 need 12 GiB; the official 400 px ResNet-50 0.1).
    """

    model_type = "hsnet"

    def __init__(self, backbone="resnet50", backbone_kwargs=None, backbone_pretrained=False, feature_taps=None,
                 num_channels=3, use_support_mask=True, image_size=400, max_correlation_gib=4.0, **kwargs):
        kwargs_checked = check_backbone_config(backbone, backbone_kwargs, backbone_pretrained, num_channels)
        if feature_taps is not None and not (
                isinstance(feature_taps, (list, tuple)) and len(feature_taps) == 3
                and all(isinstance(level, (list, tuple)) and level and all(isinstance(t, str) for t in level)
                        for level in feature_taps)):
            raise ValueError(f"`feature_taps` must be three non-empty lists of module names (shallowest level "
                             f"first), got {feature_taps!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < LEVEL_STRIDES[-1]:
            raise ValueError(f"`image_size` must be an int >= {LEVEL_STRIDES[-1]}, got {image_size!r}")
        if not isinstance(use_support_mask, bool):
            raise ValueError(f"`use_support_mask` must be a bool, got {use_support_mask!r}")
        self.backbone, self.backbone_kwargs = backbone, kwargs_checked
        self.backbone_pretrained, self.num_channels = backbone_pretrained, num_channels
        self.feature_taps = [list(level) for level in feature_taps] if feature_taps is not None else None
        if isinstance(max_correlation_gib, bool) or not isinstance(max_correlation_gib, (int, float)) \
                or not max_correlation_gib > 0:
            raise ValueError(f"`max_correlation_gib` must be a positive number, got {max_correlation_gib!r}")
        self.use_support_mask, self.image_size = use_support_mask, image_size
        self.max_correlation_gib = float(max_correlation_gib)
        super().__init__(**kwargs)


@dataclass
class FewShotSegmentationOutput(ModelOutput):
    """Output of a few-shot segmenter.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy of `logits` against `labels` (255
            ignored), when `labels` are given.
        logits (`torch.FloatTensor` of shape `(B, 2, H, W)`): background / foreground scores at the query's size
            (with several shots: the mean over shots).
        predicted_mask (`torch.LongTensor` of shape `(B, H, W)`): the prediction (one shot: the argmax; several:
            the official vote).
        shot_logits (`torch.FloatTensor` of shape `(B, K, 2, H, W)`, *optional*): every shot's logits when K > 1.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): with `output_hidden_states=True`, the learner's
            encoding of each shot (the 4D features mixed over levels and averaged over the support dims, before the
            decoder), `K` tensors of shape `(B, 128, h, w)`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    predicted_mask: torch.LongTensor | None = None
    shot_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class HSNetPreTrainedModel(ChecksummedPretrainedMixin, PreTrainedModel):
    config_class = HSNetConfig
    base_model_prefix = "hsnet"
    main_input_name = "query_pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default initialisation, as the official learner (a pretrained backbone is not re-initialised)
        if hasattr(module, "reset_parameters") and not isinstance(module, PreTrainedModel):
            module.reset_parameters()


def _check_binary(name: str, x: torch.Tensor, allowed: tuple[int, ...]) -> None:
    if not bool(torch.isin(x, torch.tensor(allowed, dtype=x.dtype, device=x.device)).all()):
        raise ValueError(f"`{name}` must hold only {allowed}, got values {sorted(torch.unique(x).tolist())[:10]}")


class HSNetForFewShotSegmentation(HSNetPreTrainedModel):
    """HSNet (Min, Kang, Cho, ICCV 2021): hypercorrelation squeeze on a frozen timm backbone. See the module doc."""

    def __init__(self, config: HSNetConfig):
        super().__init__(config)
        # the network up to its last tap: what a forward never reaches before it (the classifier; VGG's 120 M
        # parameter pre_logits) is dropped, and keys of official checkpoints for it are left out on conversion
        self.backbone = build_backbone(config.backbone, config.backbone_kwargs, config.num_channels,
                                       config.backbone_pretrained, headless=False)
        self.backbone.requires_grad_(False).eval()
        if config.feature_taps is None:
            config.feature_taps = resolve_taps(config.backbone, self.backbone, config.num_channels)
        taps = [t for level in config.feature_taps for t in level]
        self.pruned_backbone_modules = prune_after_taps(self.backbone, taps, config.num_channels)
        self._taps = FeatureTaps(self.backbone, taps)
        self.learner = HypercorrelationLearner([len(level) for level in config.feature_taps][::-1])
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen, BatchNorm statistics included; requires_grad again too: loading weights (from_pretrained, which
        # ends with eval()) builds new parameters that would be trainable
        self.backbone.requires_grad_(False).eval()
        return self

    @torch.no_grad()
    def extract_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The taps of ``pixel_values (N, C, H, W)``, shallowest level first, without gradients."""
        with self._taps:
            return self._taps.run(pixel_values)

    def _check_inputs(self, query, support, masks, labels) -> None:
        channels = self.config.num_channels
        check_image_batch("query_pixel_values", query, channels, self.dtype)
        if not isinstance(support, torch.Tensor) or support.dim() != 5:
            raise ValueError(f"`support_pixel_values` must be a 5D tensor (B, K, {channels}, H, W), got "
                             f"{tuple(support.shape) if isinstance(support, torch.Tensor) else type(support).__name__}")
        if support.shape[1] == 0:
            raise ValueError(f"`support_pixel_values` holds no shot (K = 0, shape {tuple(support.shape)}): every "
                             "episode needs at least one support image with its mask")
        check_image_batch("support_pixel_values", support.flatten(0, 1), channels, self.dtype)
        batch = query.shape[0]
        if batch == 0:
            raise ValueError(f"`query_pixel_values` holds no image (shape {tuple(query.shape)})")
        if support.shape[0] != batch:
            raise ValueError(f"`support_pixel_values` must have the query's batch size {batch} (B, K, C, H, W), got "
                             f"{support.shape[0]}")
        small = min(min(query.shape[-2:]), min(support.shape[-2:]))
        if small < LEVEL_STRIDES[-1]:
            raise ValueError(f"images must be at least {LEVEL_STRIDES[-1]} px on each side (the deepest taps have "
                             f"stride {LEVEL_STRIDES[-1]}), got query {tuple(query.shape[-2:])} and support "
                             f"{tuple(support.shape[-2:])}")
        self._check_correlation_size(batch, tuple(query.shape[-2:]), tuple(support.shape[-2:]))
        if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (*support.shape[:2], *support.shape[-2:]):
            raise ValueError(f"`support_masks` must have shape {(*support.shape[:2], *support.shape[-2:])} (B, K, H, "
                             f"W of the support images), got "
                             f"{tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__}")
        if masks.dtype != torch.bool:   # a bool mask is binary by construction (the official code accepts it)
            _check_binary("support_masks", masks, (0, 1))
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise TypeError(f"`labels` must be an integer tensor (B, H, W), got "
                                f"{getattr(labels, 'dtype', type(labels).__name__)}")
            if tuple(labels.shape) != (batch, *query.shape[-2:]):
                raise ValueError(f"`labels` must have shape {(batch, *query.shape[-2:])} (the query images' B, H, W), "
                                 f"got {tuple(labels.shape)}")
            _check_binary("labels", labels, (0, 1, IGNORE_INDEX))
            if labels.numel() and bool((labels == IGNORE_INDEX).all()):
                raise ValueError(f"`labels` hold only ignored pixels ({IGNORE_INDEX}): the loss would be NaN; give "
                                 "each batch at least one labelled pixel")
            why = "the loss would be NaN"
            check_finite("query_pixel_values", query, why)
            check_finite("support_pixel_values", support, why)

    def _check_correlation_size(self, batch: int, query_size: tuple[int, int], support_size: tuple[int, int]) -> None:
        """Refuse sizes whose correlation at the finest level would exceed ``config.max_correlation_gib``, before
        anything is allocated (the correlation is the model's input: it cannot be computed in pieces)."""
        stride, taps = LEVEL_STRIDES[0], len(self.config.feature_taps[0])
        cells = [-(-side // stride) for side in (*query_size, *support_size)]
        need = batch * taps * cells[0] * cells[1] * cells[2] * cells[3] * torch.finfo(self.dtype).bits // 8
        limit = getattr(self.config, "max_correlation_gib", 4.0)
        if need > limit * 2**30:
            raise ValueError(f"query {query_size[0]}x{query_size[1]} and support {support_size[0]}x{support_size[1]} "
                             f"need a {need / 2**30:.1f} GiB correlation at stride {stride} ({batch} episode(s) x "
                             f"{taps} taps), above max_correlation_gib={limit:g}: resize the images (the official "
                             f"models run at {self.config.image_size} px) or raise config.max_correlation_gib")

    @can_return_tuple
    def forward(self, query_pixel_values: torch.Tensor | None = None, support_pixel_values: torch.Tensor | None = None,
                support_masks: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, **kwargs) -> FewShotSegmentationOutput:
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        self._check_inputs(query_pixel_values, support_pixel_values, support_masks, labels)
        batch, shots = support_pixel_values.shape[:2]
        size = tuple(query_pixel_values.shape[-2:])
        query_features = self.extract_features(query_pixel_values)                      # once, whatever K
        support_features = self.extract_features(support_pixel_values.flatten(0, 1))
        groups = [len(level) for level in self.config.feature_taps]
        masks = support_masks if self.config.use_support_mask else None
        if masks is not None and masks.dtype == torch.bool:
            masks = masks.to(query_features[0].dtype)
        shot_logits, encodings = [], []
        for k in range(shots):   # one shot per learner pass: the 4D tensors of one shot, as the official loop holds
            features = [f.unflatten(0, (batch, shots))[:, k] for f in support_features]
            encodings.append(self.learner.encode(shot_hypercorrelation(
                query_features, features, groups, None if masks is None else masks[:, k:k + 1])))
            logits = self.learner.decode(encodings[-1])
            shot_logits.append(F.interpolate(logits, size, mode="bilinear", align_corners=True))
        stacked = torch.stack(shot_logits, dim=1)                                        # (B, K, 2, H, W)
        if shots == 1:
            logits, predicted, stacked = stacked[:, 0], stacked[:, 0].argmax(1), None
        else:
            logits, predicted = stacked.mean(1), vote(stacked)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX)
        return FewShotSegmentationOutput(loss=loss, logits=logits, predicted_mask=predicted, shot_logits=stacked,
                                         hidden_states=tuple(encodings) if output_hidden_states else None)


def vote(shot_logits: torch.Tensor) -> torch.Tensor:
    """The official K-shot prediction from ``(B, K, 2, H, W)`` logits: every shot's argmax mask summed, divided by
    the image's largest vote (at least 1), thresholded at 0.5."""
    votes = shot_logits.argmax(2).sum(1).float()                                         # (B, H, W)
    top = votes.flatten(1).max(1).values.clamp(min=1)
    return (votes / top[:, None, None] >= 0.5).long()


@torch.no_grad()
def official_order_forward(model: HSNetForFewShotSegmentation, query_pixel_values: torch.Tensor,
                           support_pixel_values: torch.Tensor, support_masks: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """The reference for :class:`HSNetForFewShotSegmentation` (tests and ``scripts/benchmark.py hsnet``): the
    official computation order, one full 1-shot forward per shot with the query's features recomputed each time,
    the masking and the correlation one tap at a time, then the vote. Returns ``(predicted_mask (B, H, W),
    shot_logits (B, K, 2, H, W))``."""
    size = tuple(query_pixel_values.shape[-2:])
    groups = [len(level) for level in model.config.feature_taps]
    shot_logits = []
    for k in range(support_pixel_values.shape[1]):
        query_features = model.extract_features(query_pixel_values)
        support_features = model.extract_features(support_pixel_values[:, k])
        if model.config.use_support_mask:
            support_features = [masked_features([f], support_masks[:, k])[0] for f in support_features]
        logits = model.learner(hypercorrelation(query_features, support_features, groups))
        shot_logits.append(F.interpolate(logits, size, mode="bilinear", align_corners=True))
    stacked = torch.stack(shot_logits, dim=1)
    return (stacked[:, 0].argmax(1) if stacked.shape[1] == 1 else vote(stacked)), stacked


class AutoModelForFewShotSegmentation(_BaseAutoModelClass):
    """``AutoModelForFewShotSegmentation.from_pretrained(folder)`` (transformers has no few-shot segmentation task;
    relzoo adds this Auto class for it)."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())


HSNET_PAPER = "Min, Kang and Cho, *Hypercorrelation Squeeze for Few-Shot Segmentation*, ICCV 2021 (arXiv:2104.01538)"


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(HSNetConfig.model_type, HSNetConfig, exist_ok=True)
    AutoModel.register(HSNetConfig, HSNetForFewShotSegmentation, exist_ok=True)
    AutoModelForFewShotSegmentation.register(HSNetConfig, HSNetForFewShotSegmentation, exist_ok=True)
    register_family(Family(name="hsnet", title="HSNet (hypercorrelation squeeze, few-shot segmentation)",
                           config_class=HSNetConfig, model_class=HSNetForFewShotSegmentation,
                           task="few-shot-segmentation", paper=HSNET_PAPER, hub="relzoo.models.hsnet_hub",
                           train_script="scripts/finetune_hsnet.py",
                           benchmark="relzoo.benchmarks.hsnet"))


_register_auto_classes()
