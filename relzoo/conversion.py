"""What every converter of official checkpoints shares: a safe read of the file, and strict key/shape comparison
whose messages name the keys as the user's file names them. The converters live beside their families
(``relzoo/models/<family>_hub.py``) and return a model; the shared folder writers write it."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .fileio import check_output_folder, load_checkpoint_safely

__all__ = ["open_checkpoint", "state_mismatch", "mismatch_summary"]


def state_mismatch(state: dict, expected: dict, original_name) -> tuple[list[str], list[str], list[str]]:
    """Mismatched shapes, missing and unexpected keys, each named as in the user's file (``original_name``)."""
    mismatched = [f"{original_name(k)}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
                  for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    missing = [f"{original_name(k)} {tuple(expected[k].shape)}" for k in expected if k not in state]
    unexpected = [original_name(k) for k in state if k not in expected]
    return mismatched, missing, unexpected


def mismatch_summary(mismatched: list[str], missing: list[str], unexpected: list[str]) -> str:
    """``"2 with other shapes (a: ...; b: ...), 1 missing (c (3,))"``: three names of each kind at most."""
    parts = [f"{len(lst)} {what} ({'; '.join(lst[:3])}{'; ...' if len(lst) > 3 else ''})"
             for what, lst in (("with other shapes", mismatched), ("missing", missing), ("unexpected", unexpected))
             if lst]
    return ", ".join(parts)


def open_checkpoint(checkpoint: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                    overwrite: bool = False) -> tuple[dict, dict]:
    """What every converter does first: refuse a non-empty ``output_dir`` unless ``overwrite`` and one holding the
    checkpoint in any case (before the file is read), read the checkpoint safely (``weights_only``), and return it
    raw and its state dict (``raw["state_dict"]`` or ``raw`` itself, tensors only)."""
    if output_dir is not None:
        check_output_folder(Path(output_dir), overwrite=overwrite, inputs=(checkpoint,))
    raw = load_checkpoint_safely(checkpoint)
    original = raw["state_dict"] if isinstance(raw.get("state_dict"), dict) else raw
    bad = [k for k, v in original.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint {str(checkpoint)!r}: entries that are not tensors: {bad[:3]}")
    return raw, original
