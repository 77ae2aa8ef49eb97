"""Model cards: one renderer (:func:`render_card`, YAML metadata + Markdown) and what fills it for each kind of folder.

* :func:`variant_card`: a catalogue variant (``hub_configs/<variant>.json``) with converted, trained or no weights;
  the card block of the variant file and the weights' provenance say everything, the family gives the usage lines;
* :func:`classifier_card`: a classifier trained by relzoo's ``train_classifier`` (a relzoo family or any timm model);
* :func:`trained_card`: a few-shot model trained by relzoo (its measured results table and exact arguments);
* :func:`converted_card`: an official checkpoint converted outside the catalogue.

A folder writer writes the files; its caller writes exactly one card.
"""
from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult

from .registry import Family, get_family

__all__ = ["render_card", "variant_card", "classifier_card", "trained_card", "converted_card", "timm_network_usage",
           "remote_code_usage", "WEIGHT_STATUSES", "NO_WEIGHTS_MARK"]

WEIGHT_STATUSES = ("converted", "trained", "none")
#: written into the card of a folder without weights; :func:`relzoo.publish.push_to_hub` refuses folders carrying it
NO_WEIGHTS_MARK = "relzoo-weights: none"

TIMM_USAGE = "```python\nimport timm\nmodel = timm.create_model('hf-hub:{model_id}', pretrained=True)\n```"


def render_card(data: ModelCardData, lines: list[str]) -> ModelCard:
    """The card: ``data`` as the YAML header, ``lines`` (Markdown) as the text."""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def classifier_card(*, model_id: str, architecture: str, family: Family | None, dataset: str | None,
                    metrics: dict | None, training: dict | None, license: str) -> ModelCard:
    """The card of a trained classifier: ``family`` is the relzoo family whose own network it is (its usage lines,
    paper and library), ``None`` for any other timm model (a plain timm folder)."""
    if family is not None:
        library_name, paper = family.library_name, family.paper
        tags = ["image-classification", "relzoo", family.name, "timm"]
        usage = "\n".join(family.hub_module().usage(model_id))
    else:
        library_name, tags, paper = "timm", ["image-classification", "timm", "relzoo"], None
        usage = TIMM_USAGE.format(model_id=model_id)
    description = f"`{architecture}` image classifier" + (f" trained on {dataset}." if dataset else ".")
    eval_results = None
    if metrics and dataset:
        eval_results = [EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=dataset,
                                   metric_type=name, metric_value=float(value), dataset_split="test")
                        for name, value in metrics.items() if name in ("top1", "top5")]
    data = ModelCardData(library_name=library_name, license=license, tags=tags, pipeline_tag="image-classification",
                         datasets=[dataset] if dataset else None, metrics=["accuracy"], model_name=model_id,
                         eval_results=eval_results)
    lines = [f"# {model_id}", "", description, "", "## How to use", "", usage, ""]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += [""]
    if training:
        lines += ["## Training", "", "```json", json.dumps(training, indent=2, sort_keys=True, default=str), "```", ""]
    lines += ["## Architecture", "", f"`{architecture}`" + (f", from {paper}." if paper else "."), ""]
    if family is not None:
        lines += ["Made with relzoo: `import relzoo` registers the architecture with timm and the transformers Auto "
                  "classes; load it only after that import.", ""]
    else:
        lines += ["Trained with relzoo; a plain timm model (neither relzoo nor remote code is needed to load it).", ""]
    return render_card(data, lines)


def trained_card(path: Path, model, *, model_id: str, tags: list[str], dataset: str | None, license: str,
                 metrics: list[str], eval_results: list, usage: str, results_table: list[str], training: dict | None,
                 script: str, paper: str) -> None:
    """The model card of a folder trained by relzoo (few-shot classifiers, HSNet): what it is, how to load it, the
    measured results (card metadata and a table), the exact training arguments and the paper."""
    data = ModelCardData(library_name="transformers", license=license, model_name=model_id, tags=tags,
                         datasets=[dataset] if dataset else None, metrics=metrics, eval_results=eval_results or None)
    lines = [f"# {model_id}", "",
             f"`{type(model).__name__}` on a `{model.config.backbone}` backbone (timm), trained by relzoo"
             + (f" on {dataset}" if dataset else "") + ". These are weights trained here, not converted official "
             "weights.", "", "## How to use", "", "```python", usage, "```", ""]
    if results_table:
        lines += [*results_table, ""]
    if training:
        lines += ["## Training", "", f"Command: `python {script}` with these arguments:", "",
                  "```json", json.dumps(training, indent=2, sort_keys=True, default=str), "```", ""]
    lines += ["## Architecture", "", f"From {paper}. Made with relzoo: `import relzoo` before loading (or "
              "`trust_remote_code=True`: the folder holds relzoo's modeling code, which needs torch, timm, "
              "transformers and einops).", ""]
    render_card(data, lines).save(path)


def converted_card(*, model_id: str, family: Family, description: str, license_note: str,
                   tags: list[str]) -> ModelCard:
    """The card of an official checkpoint converted outside the catalogue (``scripts/convert.py``): what it is, how
    to load it, the paper and the terms of the weights."""
    data = ModelCardData(library_name=family.library_name, model_name=model_id, tags=tags)
    lines = [f"# {model_id}", "", description, "", "## How to use", "", *family.hub_module().usage(model_id), "",
             "## Architecture", "", f"From {family.paper}. Made with relzoo.", "", "## License", "", license_note, ""]
    return render_card(data, lines)


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
    family = get_family(spec["family"])
    if status == "converted":
        eval_results = [_eval_result(spec, r, f"reported: {r['source']}") for r in card["reported"]]
    elif status == "trained":
        eval_results = [_eval_result(spec, r, "measured by relzoo") for r in provenance.get("measured", [])]
    else:
        eval_results = []
    data = ModelCardData(
        license=card["license"], library_name=family.library_name,
        tags=["relzoo", family.name, "timm", *([] if status != "none" else ["no-weights"])],
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
    lines += ["", "## How to use", "", *family.hub_module().usage(model_id), "", "## Intended use", "", card["intended_use"], ""]
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
    return render_card(data, lines)


def timm_network_usage(model_id: str, training_note: str) -> list[str]:
    """The usage lines of a published plain timm network (what a training-only plug-in leaves): timm, transformers'
    ``TimmWrapper`` and the pipeline load it without relzoo. ``training_note`` says how to train another one."""
    return ["A plain timm model: neither relzoo nor remote code is needed.", "", "```python",
            "import timm", f'model = timm.create_model("hf-hub:{model_id}", pretrained=True).eval()',
            "from transformers import AutoModelForImageClassification, pipeline",
            f'model = AutoModelForImageClassification.from_pretrained("{model_id}")   # transformers TimmWrapper',
            f'print(pipeline("image-classification", model="{model_id}")("image.png"))', "```", "", training_note]


def remote_code_usage(model_id: str) -> list[str]:
    """The usage lines for loading a relzoo transformers folder without relzoo (its remote code)."""
    return ["Without relzoo installed (the modeling code in this repo, needing torch, timm, transformers and einops: "
            "`pip install timm transformers einops`):", "",
            "```python", "from transformers import AutoModel",
            f'model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True).eval()', "```"]
