"""SAN backbones (Zhao, Jia, Koltun, "Exploring Self-attention for Image Recognition", CVPR 2020).

timm:          ``timm.create_model("san10_patch")`` ... ``san19_pair`` (registered on ``import relzoo``).
transformers:  ``SANConfig`` (model_type ``"san"``), ``SANModel``, ``SANForImageClassification`` with the Auto classes.

State-dict layout (timm names; every name inside a block is the official one):

=====================================  ==========================================
official key (``module.`` stripped)    relzoo timm key
=====================================  ==========================================
``conv_in.*`` / ``bn_in.*``            ``stem.conv.*`` / ``stem.bn.*``
``conv{s}.*`` / ``bn{s}.*``            ``stages.{s}.conv.*`` / ``stages.{s}.norm.*``
``layer{s}.{b}.*``                     ``stages.{s}.blocks.{b}.*``
``fc.*``                               ``fc.*``
=====================================  ==========================================

The transformers classes hold the same modules under ``san.`` (``SANModel`` is the ``san`` attribute) and call the
head ``classifier`` instead of ``fc``. ``checkpoint_filter_fn`` accepts all three layouts.
"""
import os
import warnings

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..checksums import verify_checksums
from ..hub_access import hub_unreachable, not_reachable_message
from ..layers.san import (
    Conv1x1,
    SelfAttention2d,
    check_attention_args,
    footprint_padding,
    onnx_exporting,
)
from ..layers.san_stem import max_pool_2x2, stem_eval, stem_train
from ..registry import Family, register_family
from .activation_checkpointing import batchnorm_safe_checkpoint_func, checkpoint_modules
from .checksummed_loading import ChecksummedPretrainedMixin
from .inputs import check_class_labels, check_finite, check_image_batch, class_names
from .san_keys import checkpoint_filter_fn, official_to_timm_key, timm_to_official_key  # noqa: F401

__all__ = ["SAN", "SANConfig", "SANModel", "SANForImageClassification", "SANPreTrainedModel", "SAN_ARCHITECTURES",
           "SAN_VARIANTS",
           "checkpoint_filter_fn", "official_to_timm_key", "min_input_size", "san_image_processor"]


SAN_LAYERS = {"san10": (2, 1, 2, 4, 1), "san15": (3, 2, 3, 5, 2), "san19": (3, 3, 4, 6, 3)}
#: The six SAN architectures (timm names) and their arguments. A *variant*, in relzoo, is a catalogue entry of
#: hub_configs/ (an architecture + weights + preprocessing, e.g. ``san10_patch.in1k``), not one of these.
SAN_ARCHITECTURES = {f"{depth}_{short}": dict(sa_type=sa_type, layers=layers)
                     for depth, layers in SAN_LAYERS.items() for short, sa_type in (("pair", "pairwise"),
                                                                                     ("patch", "patchwise"))}
SAN_VARIANTS = SAN_ARCHITECTURES  # the name before relzoo gave "variant" one meaning; kept for existing code
HUB_ORG = "relzoo"
#: config.json keys timm reads, derived from the rest of a SANConfig (see SANConfig.timm_fields)
TIMM_DERIVED_KEYS = ("architecture", "num_classes", "num_features", "model_args", "label_names",
                     "image_processor_type")
#: Hub repos the converted official ImageNet weights will be published to (not uploaded yet, so the timm
#: ``pretrained_cfg`` of every architecture is the weightless ``.untrained`` tag and ``list_pretrained`` stays empty).
HUB_REPOS = {arch: f"{HUB_ORG}/{arch}.in1k" for arch in SAN_ARCHITECTURES}


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value) -> int:
    if not _int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r} ({type(value).__name__})")
    return value


def _int_list(name: str, value, what: str, odd: bool = False) -> list[int]:
    """A non-empty list/tuple of positive (odd) ints, as a list; else a ValueError naming the field and the value."""
    kind = "odd positive ints" if odd else "positive ints"
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"`{name}` must be a non-empty list of {kind} ({what}), got {value!r} ({type(value).__name__})")
    for i, v in enumerate(value):
        if not _int(v) or v < 1 or (odd and v % 2 == 0):
            raise ValueError(f"`{name}` must be a list of {kind} ({what}), got {list(value)!r}: entry {i} is {v!r}")
    return list(value)


def check_san_args(sa_type, relation, layers, kernels, widths, stem_width, in_chans, rel_reduction, mid_reduction,
                   share_planes, pad_mode, implementation, global_pool, drop_rate, drop_path_rate=0.0,
                   channels_name: str = "in_chans") -> tuple[list[int], list[int], list[int]]:
    """Validate a whole SAN architecture (shared by :class:`SAN` and :class:`SANConfig`, so a bad ``config.json``
    fails on load): types, lengths and ranges, each error naming the field and the value received. Returns
    ``layers``, ``kernels`` and ``widths`` as lists."""
    from timm.layers import SelectAdaptivePool2d

    check_attention_args(sa_type, relation, implementation, pad_mode)
    layers = _int_list("layers", layers, "blocks per stage")
    kernels = _int_list("kernels", kernels, "footprint side per stage", odd=True)
    widths = _int_list("widths", widths, "channels per stage")
    if not (len(layers) == len(kernels) == len(widths)):
        raise ValueError(f"`layers`, `kernels` and `widths` must have one entry per stage (the same length), got "
                         f"{layers}, {kernels} and {widths}")
    for name, value in (("stem_width", stem_width), (channels_name, in_chans), ("rel_reduction", rel_reduction),
                        ("mid_reduction", mid_reduction), ("share_planes", share_planes)):
        _positive_int(name, value)
    for c in widths:
        if c % rel_reduction or c % mid_reduction or (c // mid_reduction) % share_planes:
            raise ValueError(f"every entry of `widths` must be divisible by rel_reduction ({rel_reduction}) and by "
                             f"mid_reduction * share_planes ({mid_reduction * share_planes}), got {widths}")
    try:
        SelectAdaptivePool2d(pool_type=global_pool)
    except Exception:
        raise ValueError(f"`global_pool` must be one of timm's pool types ('avg', 'max', 'avgmax', 'catavgmax', "
                         f"'' for none, ...), got {global_pool!r}") from None
    for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}")
    return layers, kernels, widths


def min_input_size(kernels, pad_mode: str = "reflect") -> int:
    """Smallest square input side a SAN accepts: stage ``s`` sees ``floor(H / 2**(s+1))`` and reflection padding
    needs that larger than the footprint padding ``kernels[s] // 2``."""
    need = [(footprint_padding(k) + 1 if pad_mode == "reflect" else 1) * 2 ** (s + 1) for s, k in enumerate(kernels)]
    return max(need)


def check_pixel_values(x, in_chans: int, min_size: int, dtype: torch.dtype, training: bool) -> None:
    """The input gate of every SAN: ``(N, in_chans, H, W)`` of the model's floating-point ``dtype`` (any float dtype
    under autocast) with ``H, W >= min_size``, and at least one image in training (BatchNorm needs a batch).

    A plain function so that ``torch.fx`` keeps it as one call in traced graphs (it runs when the graph runs) and
    TorchScript skips it (scripted models accept what the compiled ops accept).
    """
    if torch.jit.is_scripting():
        return
    check_image_batch("pixel_values", x, in_chans, dtype, channels_arg="in_chans")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(
            f"`pixel_values` spatial size {tuple(x.shape[-2:])} is too small: this SAN needs H and W of at least "
            f"{min_size}, so that every stage's map is larger than its reflection padding")
    if training and x.shape[0] == 0:
        raise ValueError(f"`pixel_values` holds no image (shape {tuple(x.shape)}): training needs a batch of at least "
                         "one (BatchNorm normalises with batch statistics); an empty batch is only valid in eval mode")
    if training:
        check_finite("pixel_values", x)


#: inference features (after each stage's BatchNorm + ReLU, so O(1-100) in a healthy model) above this mean the
#: running statistics do not describe the activations (4e4 -> 8e7 -> 2e14 -> 1e27, stage after stage, measured)
UNSETTLED_FEATURE_LIMIT = 1e6


def warn_if_unsettled(features: torch.Tensor) -> bool:
    """Inference features that hold NaN or infinity, or exceed :data:`UNSETTLED_FEATURE_LIMIT`, come from BatchNorm
    running statistics that have not settled (a short training run: SAN multiplies weights and values computed
    from the same map, so a mismatch between running and batch statistics grows block after block until it
    overflows). Warn with the remedy; returns whether it warned. Reads one value back from the device."""
    if features.numel() == 0:                                 # an empty batch: nothing to check
        return False
    low, high = torch.aminmax(features.detach())              # one pass, no copy of the features
    largest = torch.maximum(high, -low)                       # NaN propagates, and compares False below
    if not bool(largest <= UNSETTLED_FEATURE_LIMIT):
        warnings.warn(UNSETTLED_BN_WARNING.format(largest=float(largest)), RuntimeWarning, stacklevel=4)
        return True
    return False


UNSETTLED_BN_WARNING = (
    "SAN's inference features reach {largest:.3g} (NaN, infinite or above 1e6): the BatchNorm running statistics "
    "do not describe these activations (a short or high learning-rate run; training-mode outputs stay small). "
    "Re-estimate them on training batches before evaluating: torch.optim.swa_utils.update_bn(train_loader, model), "
    "relzoo's scripts/recalibrate_bn.py for a timm train.py checkpoint, or relzoo's trainer --recalibrate_bn_batches; "
    "if it persists the model needs more training (see the README, 'Short runs and BatchNorm')")


for _name in ("check_pixel_values", "max_pool_2x2", "stem_eval", "stem_train"):  # torch.fx leaf functions
    torch.fx.wrap(_name)


class SANBlock(GradientCheckpointingLayer):
    """Pre-activation residual block (official ``Bottleneck``): ``x + conv(relu(bn2(sam(relu(bn1(x))))))``.

    ``(N, C, H, W)`` -> ``(N, C, H, W)``; the attention runs at ``C // mid_reduction`` channels. A transformers
    ``GradientCheckpointingLayer``: ``gradient_checkpointing_enable()`` checkpoints block by block.
    """

    def __init__(self, sa_type, channels, kernel_size, rel_reduction=16, mid_reduction=4, share_planes=8,
                 relation=None, implementation="fast", pad_mode="reflect", drop_path=0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        mid = channels // mid_reduction
        self.bn1 = nn.BatchNorm2d(channels, **dd)
        self.sam = SelfAttention2d(sa_type, channels, channels // rel_reduction, mid, share_planes, kernel_size,
                                   relation=relation, implementation=implementation, pad_mode=pad_mode, **dd)
        self.bn2 = nn.BatchNorm2d(mid, **dd)
        self.conv = Conv1x1(mid, channels, **dd)
        self.act = nn.ReLU(inplace=True)
        # stochastic depth of the residual branch (timm's drop_path_rate; the official model has none)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(x))
        out = self.act(self.bn2(self.sam(out)))
        return self.drop_path(self.conv(out)).add_(x)  # in place on a fresh tensor: saves an allocation


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2, 2)`` computed by :func:`max_pool_2x2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


class SANStem(nn.Module):
    """1x1 conv + BN + ReLU at full resolution, then the first stage's 2x2 max-pool (official ``conv_in``, ``bn_in``
    and the ``pool`` that starts ``layer0``); also the input gate that checks ``(N, in_chans, H, W)``.

    ``(N, in_chans, H, W)`` -> ``(N, width, H // 2, W // 2)``. The pool has no parameters, so holding it here changes
    no checkpoint key and no stage output; it lets inference (:func:`stem_eval`) skip the full-resolution map.
    """

    def __init__(self, in_chans: int, width: int, min_size: int, device=None, dtype=None):
        super().__init__()
        self.in_chans, self.min_size = in_chans, min_size
        self.conv = Conv1x1(in_chans, width, bias=False, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(width, device=device, dtype=dtype)
        self.act = nn.ReLU(inplace=True)
        self.pool = MaxPool2x2()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_pixel_values(x, self.in_chans, self.min_size, self.conv.weight.dtype, self.training)
        bn = self.bn
        if torch.jit.is_scripting() or onnx_exporting():
            return self.pool(self.act(bn(self.conv(x))))
        if bn.training or bn.running_var is None:   # batch statistics (as nn.BatchNorm2d decides)
            track = bn.training and bn.track_running_stats
            return stem_train(x, self.conv.weight, bn.weight, bn.bias, bn.running_mean if track else None,
                              bn.running_var if track else None, bn.num_batches_tracked if track else None,
                              bn.momentum, bn.eps)
        w, b, mean, var = bn.weight, bn.bias, bn.running_mean, bn.running_var
        assert w is not None and b is not None and mean is not None and var is not None
        return stem_eval(x, self.conv.weight, [w, b, mean, var], bn.eps)   # buffers stay fx graph inputs


class SANStage(nn.Module):
    """2x2 max-pool -> 1x1 widening conv -> blocks -> BN -> ReLU. ``(N, C_in, H, W)`` -> ``(N, C, H/2, W/2)``.

    The first stage (``pool=False``) starts at the conv: the stem ends with its pool.
    """

    def __init__(self, in_chs, out_chs, depth, kernel_size, sa_type, pool=True, drop_path=None, device=None,
                 dtype=None, **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.pool = MaxPool2x2() if pool else nn.Identity()
        self.conv = Conv1x1(in_chs, out_chs, bias=False, **dd)
        rates = list(drop_path) if drop_path is not None else [0.0] * depth
        self.blocks = nn.Sequential(*[SANBlock(sa_type, out_chs, kernel_size, drop_path=rates[j], **block_kwargs, **dd)
                                      for j in range(depth)])
        self.norm = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.ReLU(inplace=True)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_modules(self.blocks, x)  # BatchNorm statistics updated once, as without it
        else:
            x = self.blocks(x)
        return self.act(self.norm(x))


class SAN(nn.Module):
    """SAN backbone with timm conventions.

    Args:
        sa_type: ``"pairwise"`` or ``"patchwise"``.
        layers: blocks per stage (5 stages).
        kernels: footprint side per stage.
        widths: channels per stage.
        stem_width: channels of the stem.
        in_chans, num_classes, global_pool, drop_rate, device, dtype: as in timm.
        drop_path_rate: stochastic depth of the residual branches, rising linearly to this rate over the blocks as in
            timm (``train.py --drop-path``); 0 (default) is the official model.
        relation: relation function (``None`` = the released one; others are paper-only, see ``layers.san``).
        rel_reduction, mid_reduction, share_planes: the paper's r1, r2 and weight sharing (16, 4, 8).
        implementation: ``"fast"`` (default) or ``"reference"`` (pad + unfold, slow; for checks).
        pad_mode: ``"reflect"`` (released) or ``"zeros"``.

    Input ``(N, in_chans, H, W)`` with ``H, W >= min_input_size``; logits ``(N, num_classes)``.
    """

    def __init__(self, sa_type="patchwise", layers=(2, 1, 2, 4, 1), kernels=(3, 7, 7, 7, 7),
                 widths=(64, 256, 512, 1024, 2048), stem_width=64, in_chans=3, num_classes=1000, global_pool="avg",
                 drop_rate=0.0, relation=None, rel_reduction=16, mid_reduction=4, share_planes=8,
                 implementation="fast", pad_mode="reflect", drop_path_rate=0.0, device=None, dtype=None, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"SAN got unexpected keyword arguments {sorted(kwargs)}")
        dd = dict(device=device, dtype=dtype)
        layers, kernels, widths = check_san_args(sa_type, relation, layers, kernels, widths, stem_width, in_chans,
                                                 rel_reduction, mid_reduction, share_planes, pad_mode,
                                                 implementation, global_pool, drop_rate, drop_path_rate)
        if not _int(num_classes) or num_classes < 0:
            raise ValueError(f"`num_classes` must be an int >= 0 (0: no classifier), got {num_classes!r}")
        self.arch_args = dict(sa_type=sa_type, layers=layers, kernels=kernels, widths=widths,
                              stem_width=stem_width, in_chans=in_chans, relation=relation,
                              rel_reduction=rel_reduction, mid_reduction=mid_reduction, share_planes=share_planes,
                              implementation=implementation, pad_mode=pad_mode, global_pool=global_pool,
                              drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_features = widths[-1]
        self.grad_checkpointing = False
        self.stem = SANStem(in_chans, stem_width, min_input_size(kernels, pad_mode), **dd)
        block_kwargs = dict(rel_reduction=rel_reduction, mid_reduction=mid_reduction, share_planes=share_planes,
                            relation=relation, implementation=implementation, pad_mode=pad_mode)
        stages, in_chs = [], stem_width
        self.feature_info = []
        n = sum(layers)                                 # linear in depth, as timm's models (no tensor: meta device)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        for i, (depth, k, c) in enumerate(zip(layers, kernels, widths)):
            stage_rates = rates[sum(layers[:i]):sum(layers[:i + 1])]
            stages.append(SANStage(in_chs, c, depth, k, sa_type, pool=i > 0, drop_path=stage_rates, **block_kwargs,
                                   **dd))
            self.feature_info.append(dict(num_chs=c, reduction=2 ** (i + 1), module=f"stages.{i}"))
            in_chs = c
        self.stages = nn.Sequential(*stages)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.conv", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^stages\.(\d+)\.norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False):
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New head for ``num_classes`` (0: none) on the model's device and dtype; ``global_pool=None`` keeps the
        pooling. The new modules take the model's train/eval mode."""
        self.num_classes = num_classes
        pool = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool,
                                                      **get_device_dtype(self))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs (timm API). ``indices``: stage indices, or an int for the last n stages (default all 5).

        Returns the list of ``(N, widths[i], H / 2**(i+1), W / 2**(i+1))`` maps, preceded by the final features
        unless ``intermediates_only``. ``norm`` has no effect: every stage already ends in BN + ReLU.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"`output_fmt` must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        stages = self.stages[: max_index + 1] if stop_early or intermediates_only else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last wanted one (and the head when it no longer fits); returns kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        self.num_features = self.feature_info[max_index]["num_chs"]
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W)`` -> ``(N, widths[-1], H/32, W/32)``. In eval mode, every batch's features are
        checked (:func:`warn_if_unsettled`) until one warns; then none until the next switch to eval."""
        x = self.stages(self.stem(x))
        if not self.training and not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            self._check_features(x)
        return x

    def train(self, mode: bool = True):
        self._features_warned = False       # new statistics (update_bn, a resume) or a new evaluation: test again
        return super().train(mode)

    @torch.jit.unused
    def _check_features(self, x: torch.Tensor) -> None:
        """One value read back per inference batch (a max over the features: negligible against SAN's forward), none
        after a warning of this evaluation, while tracing or compiling, or on the meta device (shape checks)."""
        if (getattr(self, "_features_warned", False) or isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing()
                or x.is_meta):
            return
        self._features_warned = warn_if_unsettled(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(N, C, h, w)`` -> pooled ``(N, C)`` if ``pre_logits`` else logits ``(N, num_classes)``."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------------
# timm registration
# ----------------------------------------------------------------------------------------------------------------
def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224),
        "min_input_size": (3, 128, 128), "pool_size": (7, 7), "crop_pct": 0.875, "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.conv", "classifier": "fc",
        "paper_ids": "arXiv:2004.13621", "paper_name": "Exploring Self-attention for Image Recognition",
        "origin_url": "https://github.com/hszhao/SAN", "license": "mit", **kwargs,
    }


# No weights are published yet: one weightless `.untrained` tag per architecture (timm's convention), so that
# `timm.list_pretrained()` does not claim weights that no one can download. `HUB_REPOS` keeps the repo ids.
default_cfgs = generate_default_cfgs({
    f"{v}.untrained": _cfg(notes=(f"Weights not published yet (to come: {HUB_REPOS[v]}); convert the official "
                                  "checkpoint with scripts/convert.py san.",)) for v in SAN_ARCHITECTURES})


def _resolve_pretrained(architecture: str, kwargs: dict) -> None:
    """Find the weights before building anything, so that a missing file fails at once with a useful message."""
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    given = kwargs.get("pretrained_cfg") if isinstance(kwargs.get("pretrained_cfg"), dict) else {}
    if any(cfg.get("file") or cfg.get("state_dict") is not None for cfg in (overlay, given)):
        return  # a file or folder (timm's local-dir:) is given: timm reads it
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo = overlay.get("hf_hub_id") or given.get("hf_hub_id") or HUB_REPOS[architecture]  # hf-hub:<repo> sets the second
    cached = try_to_load_from_cache(repo, "model.safetensors")
    if isinstance(cached, str):
        kwargs["pretrained_cfg_overlay"] = {**overlay, "file": cached}
        return
    reason = hub_unreachable()
    if reason is not None:
        raise RuntimeError(not_reachable_message(
            repo, reason, f"convert an official SAN checkpoint (`python scripts/convert.py san --architecture "
            f"{architecture} --checkpoint model_best.pth --output DIR`) and load it with timm.create_model('local-dir:DIR', "
            f"pretrained=True) or SANForImageClassification.from_pretrained('DIR')"))
    try:
        path = hf_hub_download(repo, "model.safetensors", etag_timeout=5)
    except Exception as err:  # auth, missing repo or file: the weights are not there
        raise RuntimeError(f"No pretrained weights for {architecture!r} could be downloaded from {repo!r} "
                           f"({type(err).__name__}: {err})") from err
    kwargs["pretrained_cfg_overlay"] = {**overlay, "file": path}


def _create_san(architecture: str, pretrained: bool = False, **kwargs) -> SAN:
    if pretrained:
        _resolve_pretrained(architecture, kwargs)
        given = kwargs.get("pretrained_cfg") if isinstance(kwargs.get("pretrained_cfg"), dict) else {}
        file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file") or given.get("file")
        if file and os.path.isfile(file):  # a folder relzoo wrote lists its weights in checksums.json
            verify_checksums(os.path.dirname(file), only=[os.path.basename(file)], replaced_ok=True)
        elif file and os.path.isfile(os.path.join(file, "model.safetensors")):  # local-dir:<folder>
            verify_checksums(file, only=["model.safetensors"], replaced_ok=True)
    model_args = dict(SAN_ARCHITECTURES[architecture], **kwargs)
    return build_model_with_cfg(SAN, architecture, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3, 4), flatten_sequential=True), **model_args)


@register_model
def san10_pair(pretrained: bool = False, **kwargs) -> SAN:
    """SAN10, pairwise (subtraction) attention: 10,531,848 parameters at 1000 classes."""
    return _create_san("san10_pair", pretrained, **kwargs)


@register_model
def san10_patch(pretrained: bool = False, **kwargs) -> SAN:
    """SAN10, patchwise (concatenation) attention: 11,841,124 parameters at 1000 classes."""
    return _create_san("san10_patch", pretrained, **kwargs)


@register_model
def san15_pair(pretrained: bool = False, **kwargs) -> SAN:
    """SAN15, pairwise attention: 14,065,436 parameters at 1000 classes."""
    return _create_san("san15_pair", pretrained, **kwargs)


@register_model
def san15_patch(pretrained: bool = False, **kwargs) -> SAN:
    """SAN15, patchwise attention: 16,181,310 parameters at 1000 classes."""
    return _create_san("san15_patch", pretrained, **kwargs)


@register_model
def san19_pair(pretrained: bool = False, **kwargs) -> SAN:
    """SAN19, pairwise attention: 17,596,156 parameters at 1000 classes."""
    return _create_san("san19_pair", pretrained, **kwargs)


@register_model
def san19_patch(pretrained: bool = False, **kwargs) -> SAN:
    """SAN19, patchwise attention: 20,518,470 parameters at 1000 classes."""
    return _create_san("san19_patch", pretrained, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------------
class SANConfig(PreTrainedConfig):
    r"""Configuration of a SAN model (``model_type="san"``). Defaults give SAN10-patchwise.

    Args:
        sa_type (`str`, defaults to `"patchwise"`): `"pairwise"` or `"patchwise"` self-attention.
        relation (`str`, *optional*): relation function; `None` means the released one (pairwise `"subtraction"`,
            patchwise `"concatenation"`). Paper-only choices: pairwise `"summation"`, `"concatenation"`,
            `"hadamard"`, `"dot_product"`; patchwise `"star_product"`, `"clique_product"` (no official weights).
        layers (`list[int]`, defaults to `[2, 1, 2, 4, 1]`): blocks per stage (SAN10; SAN15 `[3, 2, 3, 5, 2]`,
            SAN19 `[3, 3, 4, 6, 3]`).
        kernels (`list[int]`, defaults to `[3, 7, 7, 7, 7]`): footprint side per stage.
        widths (`list[int]`, defaults to `[64, 256, 512, 1024, 2048]`): channels per stage.
        stem_width (`int`, defaults to 64): channels of the 1x1 stem.
        num_channels (`int`, defaults to 3): input image channels.
        rel_reduction (`int`, defaults to 16): r1, relation channels are `width // rel_reduction`.
        mid_reduction (`int`, defaults to 4): r2, attention runs at `width // mid_reduction` channels.
        share_planes (`int`, defaults to 8): channels that share one attention weight.
        pad_mode (`str`, defaults to `"reflect"`): footprint padding, `"reflect"` (released) or `"zeros"`.
        implementation (`str`, defaults to `"fast"`): `"fast"` tap-loop operators or `"reference"` pad+unfold.
        global_pool (`str`, defaults to `"avg"`): timm pooling type before the classifier.
        drop_rate (`float`, defaults to 0.0): dropout before the classifier.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the residual branches (rising linearly over
            the blocks, as timm's); 0 is the official model.
    """

    model_type = "san"

    def __init__(self, sa_type="patchwise", relation=None, layers=(2, 1, 2, 4, 1), kernels=(3, 7, 7, 7, 7),
                 widths=(64, 256, 512, 1024, 2048), stem_width=64, num_channels=3, rel_reduction=16,
                 mid_reduction=4, share_planes=8, pad_mode="reflect", implementation="fast", global_pool="avg",
                 drop_rate=0.0, drop_path_rate=0.0, pretrained_cfg=None, **kwargs):
        for derived in TIMM_DERIVED_KEYS:  # written by to_dict from the fields below; never read back
            kwargs.pop(derived, None)
        if pretrained_cfg is not None and not isinstance(pretrained_cfg, dict):
            raise TypeError(f"`pretrained_cfg` must be a dict (timm's preprocessing and metadata) or None, got "
                            f"{type(pretrained_cfg).__name__}")
        self.pretrained_cfg = pretrained_cfg
        layers, kernels, widths = check_san_args(sa_type, relation, layers, kernels, widths, stem_width, num_channels,
                                                 rel_reduction, mid_reduction, share_planes, pad_mode,
                                                 implementation, global_pool, drop_rate, drop_path_rate,
                                                 channels_name="num_channels")
        self.sa_type, self.relation = sa_type, relation
        self.layers, self.kernels, self.widths = layers, kernels, widths
        self.stem_width, self.num_channels = stem_width, num_channels
        self.rel_reduction, self.mid_reduction, self.share_planes = rel_reduction, mid_reduction, share_planes
        self.pad_mode, self.implementation = pad_mode, implementation
        self.global_pool, self.drop_rate, self.drop_path_rate = global_pool, drop_rate, drop_path_rate
        super().__init__(**kwargs)

    def to_dict(self) -> dict:
        """The config as a dict; with ``pretrained_cfg`` set (Hub folders), also the fields timm reads from
        ``config.json`` (``architecture``, ``num_classes``, ``num_features``, ``model_args``), derived from this
        config at each save, so one file serves ``timm.create_model("hf-hub:...")`` and transformers."""
        out = super().to_dict()
        if self.pretrained_cfg is None:
            # transformers takes any config.json holding a ``pretrained_cfg`` key for a timm checkpoint
            # (``is_timm_config_dict``): only Hub folders, which are meant to be both, may carry one
            out.pop("pretrained_cfg", None)
        else:
            out.update(self.timm_fields())
        return out

    def timm_fields(self) -> dict:
        """What timm's ``hf-hub:`` / ``local-dir:`` loaders read: the registered architecture with this depth and
        attention type (every other argument is in ``model_args``, which overrides the architecture's), ``num_classes``
        (kept out of ``model_args``: transformers' ``TimmWrapper`` would pass it twice) and ``pretrained_cfg``."""
        depth = next((d for d, layers in SAN_LAYERS.items() if tuple(layers) == tuple(self.layers)), "san10")
        architecture = f"{depth}_{'pair' if self.sa_type == 'pairwise' else 'patch'}"
        labels = class_names(self)
        cfg = {**_cfg(), **(self.pretrained_cfg or {}), "architecture": architecture, "num_classes": self.num_labels}
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
        return {"architecture": architecture, "num_classes": self.num_labels, "num_features": self.widths[-1],
                "global_pool": self.global_pool, "label_names": [str(n) for n in labels],
                "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_timm_kwargs().items()},
                "pretrained_cfg": cfg,
                # transformers reads a local folder's preprocessing from config.json once it holds a
                # pretrained_cfg (``is_timm_local_checkpoint``); this names the class that understands it
                "image_processor_type": "TimmWrapperImageProcessor"}

    @property
    def num_stages(self) -> int:
        """Number of stages (``len(layers)``): ``output_hidden_states`` returns ``num_stages + 1`` maps."""
        return len(self.layers)

    def to_timm_kwargs(self) -> dict:
        """Keyword arguments of :class:`SAN` (without `num_classes`)."""
        return dict(sa_type=self.sa_type, relation=self.relation, layers=self.layers, kernels=self.kernels,
                    widths=self.widths, stem_width=self.stem_width, in_chans=self.num_channels,
                    rel_reduction=self.rel_reduction, mid_reduction=self.mid_reduction,
                    share_planes=self.share_planes, pad_mode=self.pad_mode, implementation=self.implementation,
                    global_pool=self.global_pool, drop_rate=self.drop_rate,
                    drop_path_rate=getattr(self, "drop_path_rate", 0.0))

    @classmethod
    def from_timm(cls, model: SAN, **kwargs) -> "SANConfig":
        """Config of a timm :class:`SAN` (architecture and `num_labels`); `kwargs` override (e.g. `id2label`)."""
        args = dict(model.arch_args)
        args["num_channels"] = args.pop("in_chans")
        if "id2label" not in kwargs:
            kwargs.setdefault("num_labels", model.num_classes)
        return cls(**args, **kwargs)

    @classmethod
    def from_architecture(cls, architecture: str, **kwargs) -> "SANConfig":
        """Config of a SAN architecture, e.g. `SANConfig.from_architecture("san10_patch", num_labels=10)`."""
        if architecture not in SAN_ARCHITECTURES:
            raise ValueError(f"`architecture` must be one of {sorted(SAN_ARCHITECTURES)}, got {architecture!r}")
        return cls(**{**SAN_ARCHITECTURES[architecture], **kwargs})

    @classmethod
    def from_variant(cls, variant: str, **kwargs) -> "SANConfig":
        """Former name of :meth:`from_architecture` (kept for existing code)."""
        return cls.from_architecture(variant, **kwargs)


class SANPreTrainedModel(ChecksummedPretrainedMixin, PreTrainedModel):
    config_class = SANConfig
    base_model_prefix = "san"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SANBlock"]

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=torch_checkpoint,
                                    every_n_layers: int = 1) -> None:
        """transformers' switch for activation checkpointing, with recomputations that leave the BatchNorm
        statistics as training without checkpointing would (see :mod:`relzoo.models.activation_checkpointing`)."""
        super()._set_gradient_checkpointing(enable, batchnorm_safe_checkpoint_func(gradient_checkpointing_func, self),
                                            every_n_layers)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The official SAN uses PyTorch's default initialisation everywhere.
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            module.reset_parameters()


class SANModel(SANPreTrainedModel):
    """SAN backbone: ``pixel_values (N, C, H, W)`` -> ``last_hidden_state (N, widths[-1], H/32, W/32)`` and
    ``pooler_output (N, widths[-1])``.

    ``output_hidden_states=True`` returns ``len(layers) + 1`` maps: the stem output ``(N, stem_width, H/2, W/2)``
    (after its max-pool) and the output of every stage ``i``, ``(N, widths[i], H / 2**(i+1), W / 2**(i+1))``; an
    index or a list of indices (negative ones count from the end) returns only those.
    """

    _can_record_outputs = {"hidden_states": OutputRecorder(SANStage, num_hidden_layers_key="num_stages")}

    def __init__(self, config: SANConfig):
        super().__init__(config)
        body = SAN(num_classes=0, **config.to_timm_kwargs())
        self.stem, self.stages = body.stem, body.stages
        self.global_pool = body.global_pool
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The stem's 1x1 convolution, the layer that embeds pixels (what ``enable_input_require_grads`` hooks)."""
        return self.stem.conv

    @can_return_tuple
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPoolingAndNoAttention:
        x = self.stages(self.stem(pixel_values))  # the blocks are GradientCheckpointingLayers
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=x, pooler_output=self.global_pool(x))


class SANForImageClassification(SANPreTrainedModel):
    """SAN with a linear classifier. ``logits (N, num_labels)``; ``loss`` (cross-entropy for single-label
    classification, see ``config.problem_type``) when ``labels (N,)`` are given."""

    def __init__(self, config: SANConfig):
        super().__init__(config)
        self.san = SANModel(config)
        self.dropout = nn.Dropout(config.drop_rate)
        self.classifier = nn.Linear(config.widths[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                **kwargs) -> ImageClassifierOutputWithNoAttention:
        outputs = self.san(pixel_values, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            if self.config.problem_type in (None, "single_label_classification"):
                check_class_labels(labels, self.config.num_labels)
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    @classmethod
    def from_timm(cls, model: SAN, **config_kwargs) -> "SANForImageClassification":
        """Exact transformers copy of a timm :class:`SAN` (weights included)."""
        hf = cls(SANConfig.from_timm(model, **config_kwargs))
        state = {("classifier." + k[3:]) if k.startswith("fc.") else f"san.{k}": v
                 for k, v in model.state_dict().items()}
        hf.load_state_dict(state, strict=True)
        return hf.to(next(model.parameters()).dtype)

    def to_timm(self) -> SAN:
        """Exact timm :class:`SAN` copy of this model (weights included)."""
        model = SAN(num_classes=self.config.num_labels, **self.config.to_timm_kwargs())
        model.load_state_dict(checkpoint_filter_fn(self.state_dict()), strict=True)
        return model.to(self.dtype)


def san_image_processor(image_size: int = 224, crop_pct: float = 0.875, mean=IMAGENET_DEFAULT_MEAN,
                        std=IMAGENET_DEFAULT_STD):
    """The SAN evaluation transform as a transformers image processor: resize the short side to
    ``image_size / crop_pct`` (256 for 224), centre-crop ``image_size``, scale to [0, 1], normalise."""
    from transformers import ConvNextImageProcessor

    return ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=crop_pct, image_mean=list(mean),
                                  image_std=list(std), resample=2)


def small_image_kwargs(model_name: str, image_size: int) -> dict:
    """Below 128 px a registered SAN gets a 3x3 last-stage footprint, so that reflection padding fits its 4x4 map."""
    return {"kernels": [3, 7, 7, 7, 3]} if model_name in SAN_ARCHITECTURES and image_size < 128 else {}


SAN_PAPER = "Zhao, Jia and Koltun, *Exploring Self-attention for Image Recognition*, CVPR 2020 (arXiv:2004.13621)"


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    AutoConfig.register(SANConfig.model_type, SANConfig, exist_ok=True)
    AutoModel.register(SANConfig, SANModel, exist_ok=True)
    AutoModelForImageClassification.register(SANConfig, SANForImageClassification, exist_ok=True)
    register_family(Family(name="san", title="SAN (pairwise / patchwise self-attention networks)",
                           config_class=SANConfig, model_class=SANForImageClassification, task="image-classification",
                           paper=SAN_PAPER, hub="relzoo.models.san_hub", timm_class=SAN,
                           train_script="scripts/train_classifier.py", benchmark="relzoo.benchmarks.san",
                           model_kwargs_for=small_image_kwargs))


_register_auto_classes()
