"""SAN checkpoint layouts: the official one (hszhao/SAN ``model_best.pth``: ``module.conv_in.``, ``layer{s}.{b}.``,
...), relzoo's timm layout (``stem.conv.``, ``stages.{s}.blocks.{b}.``, ...) and the transformers one (``san.``,
``classifier.``), and the renaming between them. Plain Python: timm's pretrained loading (``checkpoint_filter_fn``)
and the converter (relzoo/models/san_hub.py) both use it."""
from __future__ import annotations

import re

__all__ = ["official_to_timm_key", "timm_to_official_key", "checkpoint_filter_fn"]

# official prefix <-> relzoo timm prefix; `{s}` is the stage index, `{b}` the block index
_KEY_PREFIXES = [("conv_in.", "stem.conv."), ("bn_in.", "stem.bn."), ("layer{s}.{b}.", "stages.{s}.blocks.{b}."),
                 ("conv{s}.", "stages.{s}.conv."), ("bn{s}.", "stages.{s}.norm.")]


def _prefix_rules(to_timm: bool) -> list:
    rules = []
    for official, timm_name in _KEY_PREFIXES:
        src, dst = (official, timm_name) if to_timm else (timm_name, official)
        pattern = "^" + re.escape(src).replace(r"\{s\}", r"(?P<s>\d+)").replace(r"\{b\}", r"(?P<b>\d+)")
        rules.append((re.compile(pattern), dst.replace("{s}", r"\g<s>").replace("{b}", r"\g<b>")))
    return rules


_TO_TIMM, _TO_OFFICIAL = _prefix_rules(True), _prefix_rules(False)


def _rename(key: str, rules: list) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key  # fc.*


def official_to_timm_key(key: str) -> str:
    """Rename one key of the official SAN checkpoint (``module.`` prefix optional) to relzoo's timm layout."""
    return _rename(key.removeprefix("module."), _TO_TIMM)


def timm_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_timm_key` (without the ``module.`` prefix): names a relzoo key the way the
    official checkpoint does, for messages about official files."""
    return _rename(key, _TO_OFFICIAL)


def checkpoint_filter_fn(state_dict: dict, model=None) -> dict:
    """Bring a state dict in any known layout to relzoo's timm layout.

    Accepts the official container (``{"state_dict": {"module.conv_in.weight": ...}}``), a bare official state
    dict, a transformers ``SANForImageClassification``/``SANModel`` state dict, or a timm one.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            key = "fc." + key.removeprefix("classifier.")
        elif key.startswith("san."):
            key = key.removeprefix("san.")
        else:
            key = official_to_timm_key(key)
        out[key] = value
    return out
