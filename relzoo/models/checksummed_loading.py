"""What every relzoo ``PreTrainedModel`` adds to transformers' saving and loading: a checksum manifest.

``save_pretrained`` writes ``checksums.json`` over the tensor files it wrote; ``from_pretrained`` verifies it
before reading weights, so a file damaged after it was written fails with an error naming it instead of loading
into a model with non-finite outputs (see :mod:`relzoo.checksums`). Folders without a manifest (written by other
tools) load as usual.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..checksums import MANIFEST, verify_checksums, write_checksums
from ..hub_access import hub_unreachable, not_reachable_message, repo_in_cache


class ChecksummedPretrainedMixin:
    """Mix into a family's ``PreTrainedModel`` base, before ``PreTrainedModel``."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", args[0] if args else True):
            write_checksums(save_directory)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if pretrained_model_name_or_path is not None:
            _fail_fast_if_unreachable(str(pretrained_model_name_or_path), kwargs)
            folder, in_cache = _manifest_folder(pretrained_model_name_or_path, kwargs)
            if folder is not None:
                verify_checksums(folder, missing_ok=in_cache, replaced_ok=True)   # first: it says what happened
                if not in_cache:
                    _check_local_folder(folder, config_given=kwargs.get("config") is not None)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def _check_local_folder(folder: Path, config_given: bool) -> None:
    """One line naming the file for what transformers reports late or not at all: a missing ``config.json`` (a
    default config was used, then a size-mismatch error), one that is not a JSON object (``null``, nested beyond
    reason), and weights files that are not safetensors files of tensors (a flipped header byte gave a warning,
    then a raw SafetensorError)."""
    import json

    from ..fileio import check_safetensors_file

    config = folder / "config.json"
    if not config_given:
        if not config.is_file():
            raise OSError(f"{str(config)!r} is missing: {str(folder)!r} is not a model folder written by "
                          "save_pretrained (or pass config=...)")
        try:
            data = json.loads(config.read_text())
        except (ValueError, RecursionError, UnicodeDecodeError) as err:
            raise ValueError(f"{str(config)!r} is not readable JSON ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{str(config)!r} must hold a JSON object (a model config), got {type(data).__name__}")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(weights)


def _fail_fast_if_unreachable(name: str, kwargs: dict) -> None:
    """A Hub repo id that is neither cached nor reachable fails in about a second with what to do, instead of
    huggingface_hub's retries (about 20 s per file without a network)."""
    if os.path.exists(name) or name.count("/") > 1 or kwargs.get("local_files_only"):
        return
    subfolder = kwargs.get("subfolder") or ""
    config = f"{subfolder}/config.json" if subfolder else "config.json"
    if repo_in_cache(name, config, kwargs.get("revision"), kwargs.get("cache_dir")):
        return
    reason = hub_unreachable()
    if reason is not None:
        raise OSError(not_reachable_message(name, reason, "pass the path of a folder written by save_pretrained, "
                                            "scripts/convert.py or scripts/push_to_hub.py --dry-run"))


def _manifest_folder(name_or_path, kwargs: dict) -> tuple[Path | None, bool]:
    """The folder holding the manifest: a local folder as given, or the snapshot of a Hub repo already in the cache
    (files not cached yet are skipped: they are about to be downloaded)."""
    subfolder = kwargs.get("subfolder") or ""
    path = Path(name_or_path) / subfolder
    if Path(name_or_path).is_dir():
        return path, False
    if os.path.isfile(name_or_path) or str(name_or_path).count("/") > 1:
        return None, False
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(str(name_or_path), f"{subfolder}/{MANIFEST}" if subfolder else MANIFEST,
                                        cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision"))
    except Exception:  # not a valid repo id: transformers will say so
        return None, False
    return (Path(cached).parent, True) if isinstance(cached, str) else (None, False)
