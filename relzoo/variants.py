"""The catalogue of what relzoo publishes: one ``hub_configs/<variant>.json`` per Hub repo (shipped in the package as
``relzoo.hub_configs``), and what turns one into a Hub-ready folder with a model card.

A variant file holds the architecture (``family``, transformers class, timm architecture, ``config``), the
preprocessing, the class names, parameter counts, where official weights come from, and the card metadata: paper
(title, authors, venue, arXiv id), code, licence, datasets, intended use and the official reported numbers with
their source. :func:`export_variant` writes the folder for one variant with weights that are

* ``converted``: an official checkpoint file (SAN ``model_best.pth``, HSNet ``best_model.pt``), renamed strictly by
  the family's converter; the card's model-index holds the official numbers, labelled as reported, not re-measured;
* ``trained``: a relzoo training output (``OUTPUT_DIR/model`` of ``scripts/train_*.py``); the card holds the exact
  command and the numbers measured by that run (``OUTPUT_DIR/results.json``);
* ``none``: no weights. The folder is still written (to check the format, with a random initialisation that the
  card flags), but :func:`relzoo.hub.push_to_hub` refuses to upload it.

:func:`list_models` lists every variant with its parameters, its Hub repo and whether weights exist.
"""
from __future__ import annotations

import json
import os
import shlex
from importlib import resources
from pathlib import Path

import torch

from .cards import NO_WEIGHTS_MARK, WEIGHT_STATUSES, variant_card
from .checksums import sha256_file
from .registry import family_names, get_family

__all__ = ["list_models", "variant_names", "load_variant", "build_variant", "export_variant", "variant_card",
           "WEIGHT_STATUSES", "NO_WEIGHTS_MARK"]

REQUIRED = ("variant", "repo_id", "family", "transformers_class", "timm_architecture", "config", "preprocessing",
            "class_names", "params", "weights", "card")
CARD_REQUIRED = ("paper", "code", "license", "license_note", "datasets", "summary", "intended_use", "reported")


# ----------------------------------------------------------------------------------------------------------------
# catalogue
# ----------------------------------------------------------------------------------------------------------------
def _configs_dir():
    return resources.files("relzoo.hub_configs")


def variant_names() -> list[str]:
    """Every variant relzoo publishes (the names of ``hub_configs/*.json``), sorted."""
    return sorted(p.name[:-5] for p in _configs_dir().iterdir() if p.name.endswith(".json"))


def load_variant(name_or_path: str | os.PathLike) -> dict:
    """The variant file ``hub_configs/<name>.json`` (or a path to such a file), checked for the fields
    :func:`export_variant` and the cards need."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        text, where = path.read_text(), str(path)
    else:
        names = variant_names()
        if str(name_or_path) not in names:
            raise ValueError(f"`variant` must be one of {names} (or a path to a variant .json), got {name_or_path!r}")
        text, where = (_configs_dir() / f"{name_or_path}.json").read_text(), f"hub_configs/{name_or_path}.json"
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    missing = [k for k in REQUIRED if k not in spec] + [f"card.{k}" for k in CARD_REQUIRED
                                                        if k not in spec.get("card", {})]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    import relzoo  # noqa: F401  (registers the families)

    if spec["family"] not in family_names():
        raise ValueError(f"{where}: `family` must be one of {family_names()}, got {spec['family']!r}")
    if spec["config"].get("model_type") != spec["family"]:
        raise ValueError(f"{where}: config.model_type {spec['config'].get('model_type')!r} is not the family "
                         f"{spec['family']!r}")
    return spec


def list_models(family: str | None = None) -> list[dict]:
    """One row per published variant: name, family, parameters (of the published network), Hub repo, whether
    weights are published, where official weights come from and how to load it."""
    rows = []
    for name in variant_names():
        spec = load_variant(name)
        if family is not None and spec["family"] != family:
            continue
        weights = spec["weights"]
        rows.append({"variant": name, "family": spec["family"], "params": spec["params"], "repo_id": spec["repo_id"],
                     "weights": "published" if weights.get("published") else "none yet",
                     "official_weights": weights.get("official"), "convertible": bool(weights.get("convert")),
                     "timm": spec["timm_architecture"], "transformers": spec["transformers_class"]})
    if family is not None and not rows:
        raise ValueError(f"`family` must be one of {sorted({load_variant(n)['family'] for n in variant_names()})}, "
                         f"got {family!r}")
    return rows


def class_names_of(spec: dict) -> list[str] | None:
    names = spec["class_names"]
    if names == "imagenet-1k":
        from timm.data import ImageNetInfo

        return list(ImageNetInfo("imagenet-1k").label_descriptions())
    if names == "fashion-mnist":
        from .data.builtin import FASHION_MNIST_CLASSES

        return list(FASHION_MNIST_CLASSES)
    return list(names) if names else None


def _config(spec: dict):
    from transformers import AutoConfig

    import relzoo  # noqa: F401  (registers the model types)

    kwargs = {k: v for k, v in spec["config"].items() if k != "model_type"}
    names = class_names_of(spec)
    if names is not None:
        kwargs.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    return AutoConfig.for_model(spec["family"], **kwargs)


def _model_class(spec: dict):
    """The variant's transformers class: its family's model class, or another class of the family's module."""
    import sys

    import relzoo

    family = get_family(spec["family"])
    name = spec["transformers_class"]
    if family.model_class.__name__ == name:
        return family.model_class
    found = getattr(sys.modules[family.model_class.__module__], name, None) or getattr(relzoo, name, None)
    if found is None:
        raise ValueError(f"`transformers_class` {name!r} is not a class of the {family.name} family "
                         f"({family.model_class.__module__})")
    return found


def build_variant(spec: dict):
    """The variant's transformers model, randomly initialised (its architecture and labels)."""
    return _model_class(spec)(_config(spec))


# ----------------------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------------------
def _check_shapes(spec: dict, expected: dict, found: dict, where) -> None:
    """Refuse weights whose tensors (names and shapes) are not the variant's, naming the first that differ."""
    expected = {k: tuple(v.shape) for k, v in expected.items()}
    found = {k: tuple(v.shape) for k, v in found.items()}
    if expected != found:
        other = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        detail = "; ".join(f"{k}: expected {expected.get(k)}, found {found.get(k)}" for k in other[:3])
        raise ValueError(f"the weights in {str(where)!r} are not those of {spec['variant']} ({len(other)} tensors "
                         f"differ: {detail}{'; ...' if len(other) > 3 else ''})")


def _same_architecture(spec: dict, model, where) -> None:
    """The whole model against the variant's; for plug-in families only the published part (the plain network)."""
    prefixes = get_family(spec["family"]).plugin_prefixes

    def published(state: dict) -> dict:
        return {k: v for k, v in state.items() if not (prefixes and k.removeprefix("classifier.").startswith(prefixes))}

    _check_shapes(spec, published(build_variant(spec).state_dict()), published(model.state_dict()), where)


def _load_trained_folder(spec: dict, folder: Path):
    """A relzoo model folder: a transformers folder of the variant's class, or (plug-in families) the timm folder
    of the plain network that ``scripts/train_classifier.py`` writes."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"`weights` {str(folder)!r} is a folder without config.json: pass a relzoo model folder "
                         "(OUTPUT_DIR/model of a training run) or an official checkpoint file")
    config = json.loads(config_path.read_text())
    family = get_family(spec["family"])
    if family.plugin and config.get("model_type") is None and "architecture" in config:
        import timm

        if config["architecture"] != spec["timm_architecture"]:
            raise ValueError(f"the weights in {str(folder)!r} are a {config['architecture']}, not the "
                             f"{spec['timm_architecture']} of {spec['variant']}")
        plain = timm.create_model(f"local-dir:{folder}", pretrained=True)
        model = build_variant(spec)
        expected = model.classifier.state_dict()
        plugin = {k: v for k, v in expected.items() if k.startswith(family.plugin_prefixes)}  # stays as initialised
        _check_shapes(spec, {k: v for k, v in expected.items() if k not in plugin}, plain.state_dict(), folder)
        model.classifier.load_state_dict({**plain.state_dict(), **plugin}, strict=True)
        return model
    if config.get("model_type") != spec["family"]:
        raise ValueError(f"the weights in {str(folder)!r} are a {config.get('model_type') or config.get('architecture')!r}"
                         f" model, not a {spec['family']} model ({spec['variant']})")
    model = _model_class(spec).from_pretrained(folder)
    _same_architecture(spec, model, str(folder))
    return model


def _measured(folder: Path) -> tuple[dict | None, list[dict]]:
    """The training arguments and measured numbers of the run that wrote ``folder`` (``../results.json``)."""
    path = folder.parent / "results.json"
    if not path.is_file():
        return None, []
    results = json.loads(path.read_text())
    rows = []
    keys = ["top1", "top5"]
    if sum(bool(v) for v in (results.get("shot_groups") or {}).values()) > 1:  # long-tailed training data only
        keys += ["many_top1", "medium_top1", "few_top1"]
    for key in keys:
        if isinstance(results.get(key), (int, float)):
            rows.append({"metric": key, "value": round(100 * float(results[key]), 2),
                         "dataset": results.get("dataset"), "split": results.get("eval_split", "test"),
                         "samples": results.get("eval_samples")})
    for r in results.get("results", []) or []:  # few-shot runs: one row per test set / way / shot
        if isinstance(r, dict) and "miou" in r:  # HSNet fine-tuning: one row per shot count
            rows += [{"metric": f"{r['shot']}-shot {name}", "value": round(float(r[key]), 2),
                      "dataset": results.get("arguments", {}).get("dataset", "segmentation"),
                      "split": f"fold {r.get('fold')}", "samples": r.get("episodes")}
                     for key, name in (("miou", "mIoU"), ("fb_iou", "FB-IoU"))]
        elif isinstance(r, dict) and "accuracy" in r:
            rows.append({"metric": f"{r['way']}-way {r['shot']}-shot accuracy", "value": round(100 * r["accuracy"], 2),
                         "ci95": round(100 * r.get("ci95", 0.0), 2), "dataset": r.get("dataset"),
                         "split": r.get("split"), "samples": r.get("episodes")})
    return results.get("arguments"), rows


def _command(spec: dict, arguments: dict | None) -> str | None:
    if not arguments:
        return None
    script = get_family(spec["family"]).train_script
    if script is None:
        return None
    parts = [f"python {script}"]
    for key, value in sorted(arguments.items()):  # every argument, booleans too (`--hflip False`): exact
        if value is not None:
            parts.append(f"--{key} {shlex.quote(str(value))}")
    return " ".join(parts)


def load_variant_weights(spec: dict, weights: str | os.PathLike | None) -> tuple[object, str, dict]:
    """``(model, status, provenance)`` for ``weights``: ``None`` (random, status ``none``), an official checkpoint
    file (``converted``, through the family's converter) or a relzoo model folder (``trained``)."""
    if weights is None:
        torch.manual_seed(0)
        return build_variant(spec), "none", {}
    path = Path(weights)
    if path.is_dir():
        model = _load_trained_folder(spec, path)
        arguments, measured = _measured(path)
        return model, "trained", {"source": str(path), "arguments": arguments, "command": _command(spec, arguments),
                                  "measured": measured}
    if not path.is_file():
        raise FileNotFoundError(f"`weights` {str(path)!r} does not exist (an official checkpoint file or a relzoo "
                                "model folder)")
    converter = get_family(spec["family"]).converter
    if not spec["weights"].get("convert") or converter is None:
        raise ValueError(f"{spec['variant']} has no converter for official checkpoint files "
                         f"({spec['weights'].get('official')}); pass a relzoo model folder (OUTPUT_DIR/model)")
    model = converter.from_variant(spec, path)
    _same_architecture(spec, model, str(path))
    return model, "converted", {"source": path.name, "sha256": sha256_file(path), "convert": spec["weights"]["convert"]}


# ----------------------------------------------------------------------------------------------------------------
# folder and card
# ----------------------------------------------------------------------------------------------------------------
def export_variant(variant: str | dict, folder: str | os.PathLike, weights: str | os.PathLike | None = None, *,
                   repo_id: str | None = None, overwrite: bool = False) -> Path:
    """Write the Hub folder of ``variant`` (a name of :func:`variant_names` or a loaded spec) with ``weights``
    (see :func:`load_variant_weights`), atomically: exactly what :func:`relzoo.hub.push_to_hub` uploads. A non-empty
    ``folder`` is replaced only with ``overwrite``, one that holds ``weights`` never."""
    from .fileio import atomic_folder, check_output_folder

    spec = load_variant(variant) if not isinstance(variant, dict) else variant
    model_id = repo_id or spec["repo_id"]
    check_output_folder(folder, overwrite=overwrite, inputs=(weights,))   # before the weights are converted
    model, status, provenance = load_variant_weights(spec, weights)
    model.eval()
    with atomic_folder(folder, overwrite=overwrite, inputs=(weights,)) as tmp:
        get_family(spec["family"]).hub_module().write_files(
            model, tmp, class_names=class_names_of(spec), preprocessing=spec["preprocessing"], model_id=model_id)
        variant_card(spec, status, provenance, model_id=model_id).save(tmp / "README.md")
    return Path(folder)
