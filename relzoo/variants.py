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
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult

from .checksums import sha256_file

__all__ = ["list_models", "variant_names", "load_variant", "build_variant", "export_variant", "variant_card",
           "WEIGHT_STATUSES", "NO_WEIGHTS_MARK"]

WEIGHT_STATUSES = ("converted", "trained", "none")
#: written into the card of a folder without weights; :func:`relzoo.hub.push_to_hub` refuses folders carrying it
NO_WEIGHTS_MARK = "relzoo-weights: none"
REQUIRED = ("variant", "repo_id", "family", "transformers_class", "timm_architecture", "config", "preprocessing",
            "class_names", "params", "weights", "card")
CARD_REQUIRED = ("paper", "code", "license", "license_note", "datasets", "summary", "intended_use", "reported")
FAMILIES = ("san", "crosstransformer", "protonet", "hsnet", "batchformer", "apinet")
#: the families whose published artefact is the plain timm network (the plug-in acts in training only)
PLUGIN_FAMILIES = ("batchformer", "apinet")


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
    if spec["family"] not in FAMILIES:
        raise ValueError(f"{where}: `family` must be one of {FAMILIES}, got {spec['family']!r}")
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
    import relzoo

    return getattr(relzoo, spec["transformers_class"])


def build_variant(spec: dict):
    """The variant's transformers model, randomly initialised (its architecture and labels)."""
    return _model_class(spec)(_config(spec))


# ----------------------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------------------
PLUGIN_PREFIXES = ("batchformer.", "apinet.")


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
    def published(state: dict) -> dict:
        return {k: v for k, v in state.items() if not k.removeprefix("classifier.").startswith(PLUGIN_PREFIXES)
                or spec["family"] not in PLUGIN_FAMILIES}

    _check_shapes(spec, published(build_variant(spec).state_dict()), published(model.state_dict()), where)


def _load_trained_folder(spec: dict, folder: Path):
    """A relzoo model folder: a transformers folder of the variant's class, or (plug-in families) the timm folder
    of the plain network that ``scripts/train_classifier.py`` writes."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"`weights` {str(folder)!r} is a folder without config.json: pass a relzoo model folder "
                         "(OUTPUT_DIR/model of a training run) or an official checkpoint file")
    config = json.loads(config_path.read_text())
    if spec["family"] in PLUGIN_FAMILIES and config.get("model_type") is None and "architecture" in config:
        import timm

        if config["architecture"] != spec["timm_architecture"]:
            raise ValueError(f"the weights in {str(folder)!r} are a {config['architecture']}, not the "
                             f"{spec['timm_architecture']} of {spec['variant']}")
        plain = timm.create_model(f"local-dir:{folder}", pretrained=True)
        model = build_variant(spec)
        expected = model.classifier.state_dict()
        plugin = {k: v for k, v in expected.items() if k.startswith(PLUGIN_PREFIXES)}  # stays as initialised
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
    script = {"crosstransformer": "train_fewshot.py", "protonet": "train_fewshot.py", "hsnet": "finetune_hsnet.py"}.get(
        spec["family"], "train_classifier.py")
    parts = [f"python scripts/{script}"]
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
    family = spec["family"]
    if not spec["weights"].get("convert"):
        raise ValueError(f"{spec['variant']} has no converter for official checkpoint files "
                         f"({spec['weights'].get('official')}); pass a relzoo model folder (OUTPUT_DIR/model)")
    from .hub import convert_official_hsnet, convert_official_san

    with tempfile.TemporaryDirectory(prefix="relzoo-convert-") as tmp:
        out = Path(tmp) / "converted"
        if family == "san":
            convert_official_san(path, spec["timm_architecture"], out)
        else:
            convert_official_hsnet(path, spec["config"]["backbone"], out,
                                   use_support_mask=spec["config"].get("use_support_mask", True))
        model = _model_class(spec).from_pretrained(out)
    _same_architecture(spec, model, str(path))
    return model, "converted", {"source": path.name, "sha256": sha256_file(path), "convert": spec["weights"]["convert"]}


# ----------------------------------------------------------------------------------------------------------------
# folder and card
# ----------------------------------------------------------------------------------------------------------------
def _write_files(spec: dict, model, tmp: Path, model_id: str) -> None:
    """The weights, config, preprocessing and remote code of the family (the card is written after)."""
    from .hub import save_fewshot_folder, save_hub_folder, write_hsnet_files

    pre = spec["preprocessing"]
    family = spec["family"]
    inner = tmp / "_files"
    if family == "san" or family in PLUGIN_FAMILIES:
        save_hub_folder(model.to_timm().eval(), inner, class_names=class_names_of(spec),
                        image_size=pre["input_size"][-1], crop_pct=pre["crop_pct"], mean=pre["mean"], std=pre["std"],
                        model_id=model_id)
    elif family in ("crosstransformer", "protonet"):
        save_fewshot_folder(model, inner, image_size=pre["input_size"][-1], model_id=model_id)
    else:  # hsnet
        inner.mkdir()
        write_hsnet_files(inner, model, pre["input_size"][-1], pre["mean"], pre["std"])
    for item in inner.iterdir():
        if item.name != "README.md":
            os.replace(item, tmp / item.name)
    shutil.rmtree(inner)


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
        _write_files(spec, model, tmp, model_id)
        variant_card(spec, status, provenance, model_id=model_id).save(tmp / "README.md")
    return Path(folder)


def _usage(spec: dict, model_id: str) -> list[str]:
    family = spec["family"]
    if family in PLUGIN_FAMILIES:
        return ["A plain timm model: neither relzoo nor remote code is needed.", "", "```python",
                "import timm", f'model = timm.create_model("hf-hub:{model_id}", pretrained=True).eval()',
                "from transformers import AutoModelForImageClassification, pipeline",
                f'model = AutoModelForImageClassification.from_pretrained("{model_id}")   # transformers TimmWrapper',
                f'print(pipeline("image-classification", model="{model_id}")("image.png"))', "```", "",
                f"To train another one the same way: `relzoo.{'add_batchformer' if family == 'batchformer' else 'add_apinet'}"
                f"(timm_model)` or `scripts/train_classifier.py --plugin {family if family == 'apinet' else 'batchformer'}`."]
    if family == "san":
        return ["```python", "import relzoo, timm   # importing relzoo registers SAN with timm and transformers",
                f'model = timm.create_model("hf-hub:{model_id}", pretrained=True).eval()',
                "from transformers import AutoModelForImageClassification, pipeline",
                f'model = AutoModelForImageClassification.from_pretrained("{model_id}")',
                f'print(pipeline("image-classification", model="{model_id}")("image.png"))', "```", "",
                "Without relzoo installed, the modeling code stored in this repo (relzoo's own, needing torch, timm "
                "and transformers) runs with `trust_remote_code=True`:", "", "```python",
                "from transformers import AutoModelForImageClassification",
                f'model = AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True)', "```"]
    if family in ("crosstransformer", "protonet"):
        auto = "AutoModelForFewShotClassification"
        call = ["model.set_support(support_pixel_values, support_labels)   # (S, 3, H, W), labels 0..N-1",
                "logits = model(query_pixel_values=queries).logits          # (Q, N)"]
    else:
        auto = "AutoModelForFewShotSegmentation"
        call = ["out = model(query_pixel_values=q, support_pixel_values=s, support_masks=m)   # 400x400, ImageNet norm",
                "mask = out.predicted_mask"]
    return ["```python", "import relzoo   # registers the architecture with transformers",
            f'model = relzoo.{auto}.from_pretrained("{model_id}").eval()', *call, "```", "",
            "Without relzoo installed (the modeling code in this repo, needing torch, timm, transformers and einops: "
            "`pip install timm transformers einops`):", "",
            "```python", "from transformers import AutoModel",
            f'model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True).eval()', "```"]


def _eval_result(spec: dict, row: dict, source_note: str) -> EvalResult:
    task = spec["card"].get("pipeline_tag") or "image-classification"
    metric = row["metric"]
    return EvalResult(task_type=task, dataset_type=row.get("dataset") or "unknown",
                      dataset_name=f"{row.get('dataset')} ({row.get('split')})",
                      metric_type="accuracy" if "accuracy" in metric or metric.startswith("top") else metric.lower(),
                      metric_value=float(row["value"]), metric_name=f"{metric} ({source_note})")


def variant_card(spec: dict, status: str, provenance: dict | None = None, *, model_id: str | None = None) -> ModelCard:
    """The model card of ``spec`` with weights of ``status`` (``converted``, ``trained``, ``none``)."""
    if status not in WEIGHT_STATUSES:
        raise ValueError(f"`status` must be one of {WEIGHT_STATUSES}, got {status!r}")
    provenance = provenance or {}
    card, weights = spec["card"], spec["weights"]
    model_id = model_id or spec["repo_id"]
    paper = card["paper"]
    arxiv = f"https://arxiv.org/abs/{paper['arxiv']}"
    family = spec["family"]
    if status == "converted":
        eval_results = [_eval_result(spec, r, f"reported: {r['source']}") for r in card["reported"]]
    elif status == "trained":
        eval_results = [_eval_result(spec, r, "measured by relzoo") for r in provenance.get("measured", [])]
    else:
        eval_results = []
    data = ModelCardData(
        license=card["license"], library_name="timm" if family in PLUGIN_FAMILIES else "transformers",
        tags=["relzoo", family, "timm", *([] if status != "none" else ["no-weights"])],
        datasets=card["datasets"] or None, pipeline_tag=card.get("pipeline_tag"), model_name=model_id,
        metrics=sorted({r.metric_type for r in eval_results}) or None, eval_results=eval_results or None)
    if card["license"] == "other":
        data.license_name, data.license_link = "no-license-file", card["code"]
    lines = [f"# {model_id}", "", card["summary"], "", "## Weights", ""]
    if status == "converted":
        lines += [f"**Converted official weights.** `{provenance.get('source')}` (sha256 `{provenance.get('sha256')}`), "
                  f"from {weights.get('official')}, renamed strictly with `{provenance.get('convert')}`; no tensor is "
                  "changed. The numbers below are the official ones (reported, with their source); relzoo has not "
                  "re-evaluated these weights on the benchmark."]
    elif status == "trained":
        lines += ["**Trained by relzoo**, not converted official weights."]
        if provenance.get("command"):
            lines += ["", "Command:", "", "```bash", provenance["command"], "```"]
        if provenance.get("measured"):
            lines += ["", "Measured by that run:", "", "| dataset | split | metric | value (%) | evaluated on |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r.get('dataset')} | {r.get('split')} | {r['metric']} | {r['value']:.2f}"
                      + (f" ± {r['ci95']:.2f}" if r.get("ci95") else "") + f" | {r.get('samples')} |"
                      for r in provenance["measured"]]
        else:
            lines += ["", "The run's results.json was not found beside the weights: no measured numbers are given."]
    else:
        lines += [f"**No weights yet.** `model.safetensors` in this folder is a random initialisation, written only "
                  "to check the format and the loading code; relzoo refuses to upload it. "
                  f"Official weights: {weights.get('official')}.",
                  "", f"<!-- {NO_WEIGHTS_MARK} -->"]
    if weights.get("convert"):
        lines += ["", f"Converting the official checkpoint: `{weights['convert']}`."]
    if weights.get("train"):
        lines += ["", f"Training: `{weights['train']}`."]
    if weights.get("publish"):
        lines += ["", f"Publishing: `{weights['publish']}`."]
    lines += ["", "## How to use", "", *_usage(spec, model_id), "", "## Intended use", "", card["intended_use"], ""]
    lines += ["## Official reported results", "",
              "For reference: numbers of the paper / official code for its own setting (not of the weights above "
              "unless they are the converted official ones).", "",
              "| dataset | split | metric | value | setting | source |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['split']} | {r['metric']} | {r['value']}"
              + (f" ± {r['ci95']}" if r.get("ci95") is not None else "") + f" | {r.get('setting', '')} | {r['source']} |"
              for r in card["reported"]]
    facts = {"parameters (published network)": f"{spec['params']:,}"}
    for key, label in (("trainable_params", "trainable parameters (the backbone stays frozen)"),
                       ("training_params", "parameters while training (with the plug-in, which inference drops)")):
        if key in spec:
            facts[label] = f"{spec[key]:,}"
    facts.update(card.get("facts") or {})
    lines += ["", "## Facts", "", *[f"- {k}: {v}" for k, v in facts.items()], "",
              "## Paper and code", "", f"{paper['authors']}, *{paper['title']}*, {paper['venue']}, "
              f"[arXiv:{paper['arxiv']}]({arxiv}). Official code: {card['code']}. This implementation: relzoo "
              "(its own code, checked against the official one).", "", "## License", "", card["license_note"], ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
