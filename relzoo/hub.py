"""Hub folders: the files a published relzoo model consists of, written atomically, for every family alike.

* :func:`save_hub_folder` turns a trained timm classifier into a folder that ``transformers`` (a relzoo family's own
  network: ``AutoModelForImageClassification`` / ``pipeline``; any other timm model: ``TimmWrapper``) and ``timm``
  load, with its model card;
* :func:`write_timm_files`, :func:`write_transformers_files`, :func:`write_image_processor`,
  :func:`add_remote_code`: the pieces the families' Hub modules (``relzoo/models/<family>_hub.py``) assemble.

Cards are rendered by :mod:`relzoo.cards`, uploads checked and sent by :mod:`relzoo.publish`, official checkpoints
converted beside their families (:mod:`relzoo.conversion` holds what the converters share). The family is found in
the registry (:mod:`relzoo.registry`); no family is named here.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from .cards import classifier_card
from .checksums import MANIFEST, write_checksums
from .fileio import atomic_folder
from .registry import families, family_of_timm_model
from .remote_code import _registered_class, auto_map_for, write_remote_code

__all__ = ["save_hub_folder", "write_timm_files", "write_plain_network_files", "write_transformers_files", "write_image_processor",
           "write_timm_processor", "timm_preprocessing", "add_remote_code", "AUTO_CLASSES"]

#: the Auto classes a Hub folder's ``auto_map`` may name (each one relzoo registers the model's config with)
AUTO_CLASSES = ("AutoModel", "AutoModelForImageClassification", "AutoModelForFewShotClassification",
                "AutoModelForFewShotSegmentation")


def save_hub_folder(model: torch.nn.Module, folder: str | os.PathLike, *, class_names: list[str], image_size: int,
                    crop_pct: float, mean, std, model_id: str | None = None, dataset: str | None = None,
                    metrics: dict | None = None, training: dict | None = None, license: str = "apache-2.0",
                    overwrite: bool = False, inputs=()) -> Path:
    """Write ``model`` (a timm model, relzoo's or any other) as a Hub-ready folder with its card, atomically (a
    non-empty ``folder`` is replaced only with ``overwrite``; one holding any of ``inputs`` never: see
    :func:`relzoo.fileio.atomic_folder`).

    A relzoo family's own timm network (SAN) is saved by its family as its transformers class (``config.json`` with
    the family's ``model_type`` and timm's fields, ``model.safetensors``, remote code); any other timm model in
    timm's format, fixed so that transformers' ``TimmWrapper`` loads it. ``model`` itself is left as it was (mode
    and ``pretrained_cfg``)."""
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    model_id = model_id or f"{arch}-finetuned"
    channels = getattr(model, "in_chans", None) or len(mean)
    preprocessing = {"input_size": [channels, image_size, image_size], "crop_pct": crop_pct, "mean": list(mean),
                     "std": list(std)}
    family = family_of_timm_model(model)
    with atomic_folder(folder, overwrite=overwrite, inputs=inputs) as tmp:
        if family is not None:
            family.hub_module().write_timm_files(model, tmp, class_names=class_names, preprocessing=preprocessing)
        else:
            write_timm_files(model, tmp, class_names=class_names, preprocessing=preprocessing)
        classifier_card(model_id=model_id, architecture=arch, family=family, dataset=dataset, metrics=metrics,
                        training=training, license=license).save(tmp / "README.md")
    return Path(folder)


def write_timm_files(model: torch.nn.Module, folder: Path, *, class_names: list[str], preprocessing: dict) -> None:
    """A timm network in timm's Hub format (``timm.models.save_for_hf``: ``config.json``, ``model.safetensors``),
    fixed so that transformers' ``TimmWrapper`` loads it too, plus the image processor and the checksum manifest.
    ``preprocessing``: ``input_size``, ``crop_pct``, ``mean``, ``std``."""
    import timm.models

    original = getattr(model, "pretrained_cfg", None)
    cfg = dict(original or {})
    cfg.update(input_size=(cfg.get("input_size", (3,))[0], *preprocessing["input_size"][1:]),
               crop_pct=preprocessing["crop_pct"], mean=tuple(preprocessing["mean"]),
               std=tuple(preprocessing["std"]), label_names=class_names)
    model.pretrained_cfg = cfg  # save_for_hf reads the preprocessing from here
    try:
        timm.models.save_for_hf(model, folder, safe_serialization=True)
    finally:
        model.pretrained_cfg = original
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.get("model_args", {}).pop("num_classes", None)  # else TimmWrapper passes it twice (TypeError)
    config["label_names"] = [str(n) for n in class_names]  # TimmWrapper's id2label (save_for_hf drops them)
    config_path.write_text(json.dumps(config, indent=2))
    write_timm_processor(folder, config["pretrained_cfg"])
    write_checksums(folder)  # relzoo's own models write theirs in save_pretrained


def write_plain_network_files(model, folder: Path, *, class_names: list[str], preprocessing: dict,
                              model_id: str) -> None:
    """A training-only plug-in family's variant (``Family.plugin``): the plain timm network it trained
    (``model.to_timm()``, the plug-in removed) in timm's format (:func:`write_timm_files`)."""
    write_timm_files(model.to_timm().eval(), folder, class_names=class_names, preprocessing=preprocessing)


def write_transformers_files(model, folder: Path) -> None:
    """A relzoo transformers model: ``save_pretrained`` (weights, config), the checksum manifest (relzoo's models
    write it in ``save_pretrained``; any other class gets it here) and its remote code."""
    model.save_pretrained(folder)
    if not (Path(folder) / MANIFEST).is_file():
        write_checksums(folder)
    add_remote_code(folder, type(model))


def write_image_processor(folder: Path, preprocessing: dict) -> None:
    """``preprocessor_config.json`` of a relzoo transformers model without timm fields (few-shot classifiers and
    segmenters): resize to a square of ``input_size``, rescale to [0, 1], normalise with ``mean`` / ``std``."""
    from transformers import ViTImageProcessor

    size = preprocessing["input_size"][-1]
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(preprocessing["mean"]),
                      image_std=list(preprocessing["std"]), resample=2).save_pretrained(folder)


def write_timm_processor(folder: Path, pretrained_cfg: dict) -> None:
    """``preprocessor_config.json`` for transformers' ``TimmWrapperImageProcessor`` (timm's own eval transform over
    the same ``pretrained_cfg`` config.json holds; that class refuses ``save_pretrained``, so it is written here).
    A Hub download reads this file; a local folder, config.json."""
    processor = {"image_processor_type": "TimmWrapperImageProcessor", "pretrained_cfg": pretrained_cfg}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def timm_preprocessing(model, preprocessing: dict) -> dict:
    """timm's ``pretrained_cfg`` for a folder: the model's own (paper, license, ...) with this preprocessing."""
    keep = ("paper_ids", "paper_name", "origin_url", "license", "first_conv", "classifier", "min_input_size",
            "pool_size", "interpolation")
    cfg = {k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if k in keep}
    cfg.update(input_size=list(preprocessing["input_size"]), crop_pct=preprocessing["crop_pct"],
               mean=list(preprocessing["mean"]), std=list(preprocessing["std"]))
    return cfg


def add_remote_code(folder: str | os.PathLike, model_class: type) -> list[str]:
    """Make a transformers folder of a relzoo model loadable without relzoo: write the modeling files (relzoo's own
    source, flattened, see :mod:`relzoo.remote_code`) and point ``config.json``'s ``auto_map`` at them, for
    ``AutoConfig`` and every Auto class relzoo registers the model's config with. Returns the files written."""
    folder = Path(folder)
    autos = [a for a in AUTO_CLASSES if _registered_class(a, model_class.config_class) is not None]
    files = write_remote_code(folder, model_class, autos)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = auto_map_for(model_class, autos)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return files


#: where names that used to live in this module are now (``from relzoo.hub import push_to_hub`` keeps working)
_MOVED = ("relzoo.publish", "relzoo.cards", "relzoo.conversion", "relzoo.fileio")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    import relzoo  # noqa: F401  (registers the families)

    for module in (*_MOVED, *(f.hub for f in families())):
        mod = importlib.import_module(module)
        if name in getattr(mod, "__all__", ()):
            return getattr(mod, name)
    raise AttributeError(f"module 'relzoo.hub' has no attribute {name!r}")
