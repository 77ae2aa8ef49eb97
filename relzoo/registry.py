"""The family registry: one :class:`Family` record per method, declared in the family's own model file.

Everything that works on every family (the variant catalogue, Hub folders and cards, publishing, ONNX export, the
``relzoo`` command, ``scripts/convert.py``, ``scripts/benchmark.py``) reads this registry and never names a family. A family
declares, next to its model classes::

    register_family(Family(name="san", config_class=SANConfig, model_class=SANForImageClassification, ...,
                           hub="relzoo.models.san_hub"))

``hub`` names the module of the family's Hub side (how it writes a Hub folder's files, the usage snippet of its
card, its converter of official checkpoints). It is given by name and imported only when publishing needs it, so
the model file (which Hub folders carry as remote code) never imports the publishing code. The hub module defines:

* ``write_files(model, folder, *, class_names, preprocessing, model_id) -> None``: the weights, config, image
  processor and remote code of a published ``model`` (the card is written by the caller, once);
* ``usage(model_id) -> list[str]``: the "How to use" lines of its cards (Markdown);
* optionally ``CONVERTER``: a :class:`Converter` for the official checkpoints.

This module imports nothing of relzoo (a family file imports it; remote code carries it as a flat file).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

__all__ = ["Family", "Converter", "TASKS", "register_family", "unregister_family", "get_family", "families",
           "family_names", "find_family", "family_of", "recommended_model_kwargs", "family_of_timm_model"]

#: what a family's published model does (the Hub pipeline task, or relzoo's own for the few-shot families)
TASKS = ("image-classification", "few-shot-image-classification", "few-shot-segmentation")


@dataclass(frozen=True)
class Converter:
    """How a family turns an official checkpoint file into a model.

    ``command`` is the sub-command of ``scripts/convert.py``; ``add_arguments(parser)`` adds its options (besides
    ``--checkpoint``, ``--output`` and ``--overwrite``, which every converter has); ``convert(args)`` writes the
    folder ``args.output`` and returns its path; ``from_variant(spec, checkpoint)`` returns the model (in memory)
    for a variant file's architecture. ``source`` says what the official file is."""
    command: str
    source: str
    add_arguments: Callable
    convert: Callable
    from_variant: Callable


@dataclass(frozen=True)
class Family:
    """One method. ``name`` is its transformers ``model_type`` (and a variant file's ``family``).

    ``plugin``: the method acts in training only and the published artefact is the plain timm network
    (``plugin_prefixes``: the state-dict prefixes of the training-only part, left out of a published model).
    ``timm_class``: the family's own timm module (``timm.create_model`` builds it), whose instances are published as
    this family's transformers folder (its hub module then also defines ``write_timm_files(timm_model, folder, *,
    class_names, preprocessing)``). ``train_script``: the script that trains it (quoted in cards). ``benchmark``:
    the module of its benchmark (``scripts/benchmark.py NAME``; see :mod:`relzoo.benchmarks`), families may share
    one. ``model_kwargs_for(model_name, image_size) -> dict``: the ``timm.create_model`` arguments the family
    recommends for one of its timm models at an image size (``{}``: none), used when a trainer is given none."""
    name: str
    title: str
    config_class: type
    model_class: type
    task: str
    paper: str
    hub: str
    library_name: str = "transformers"
    plugin: bool = False
    plugin_prefixes: tuple[str, ...] = ()
    timm_class: type | None = None
    train_script: str | None = None
    benchmark: str | None = None
    model_kwargs_for: Callable | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"Family {self.name!r}: `task` must be one of {TASKS}, got {self.task!r}")
        if self.library_name not in ("transformers", "timm"):
            raise ValueError(f"Family {self.name!r}: `library_name` must be 'transformers' or 'timm', got "
                             f"{self.library_name!r}")
        if getattr(self.config_class, "model_type", None) != self.name:
            raise ValueError(f"Family {self.name!r}: its config class {self.config_class.__name__} has model_type "
                             f"{getattr(self.config_class, 'model_type', None)!r}")

    def hub_module(self) -> ModuleType:
        """The family's Hub side (imported on first use)."""
        return importlib.import_module(self.hub)

    @property
    def converter(self) -> Converter | None:
        return getattr(self.hub_module(), "CONVERTER", None)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` (a re-import of its file replaces the record of the same name)."""
    if not isinstance(family, Family):
        raise TypeError(f"`family` must be a relzoo.registry.Family, got {type(family).__name__}")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    _FAMILIES.pop(name, None)


def families() -> list[Family]:
    """Every registered family, in registration order (``import relzoo`` registers relzoo's own)."""
    return list(_FAMILIES.values())


def family_names() -> list[str]:
    return list(_FAMILIES)


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"`family` must be one of {family_names()}, got {name!r}") from None


def find_family(name) -> Family | None:
    """The family called ``name``, ``None`` if there is none (:func:`get_family` raises instead)."""
    return _FAMILIES.get(name) if isinstance(name, str) else None


def recommended_model_kwargs(model_name: str, image_size: int) -> dict:
    """What the family owning the timm model ``model_name`` recommends at ``image_size`` (``{}`` if none)."""
    for family in _FAMILIES.values():
        kwargs = family.model_kwargs_for(model_name, image_size) if family.model_kwargs_for else None
        if kwargs:
            return dict(kwargs)
    return {}


def family_of(model_or_config) -> Family | None:
    """The family of a relzoo transformers model or config (by its ``model_type``), ``None`` for anything else."""
    config = getattr(model_or_config, "config", model_or_config)
    return _FAMILIES.get(getattr(config, "model_type", None))


def family_of_timm_model(model) -> Family | None:
    """The family whose own timm module ``model`` is (SAN's ``SAN``), ``None`` for any other timm model."""
    return next((f for f in _FAMILIES.values() if f.timm_class is not None and isinstance(model, f.timm_class)),
                None)
