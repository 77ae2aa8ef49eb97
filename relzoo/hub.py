"""Hub-ready folders: weights + config + image processor + a model card, written atomically.

* :func:`save_hub_folder` turns a trained timm model into a folder that ``transformers`` (relzoo families:
  ``AutoModelForImageClassification`` / ``pipeline``; other timm models: ``TimmWrapper``) and ``timm`` can load.
* :func:`convert_official_san` turns an official SAN checkpoint (``model_best.pth``) into such a folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .models.san import SAN, SAN_VARIANTS, SANForImageClassification, checkpoint_filter_fn, san_image_processor


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _card_text(*, model_id: str, architecture: str, description: str, usage: str, dataset: str | None,
               metrics: dict | None, training: dict | None, paper: str | None, library_name: str, tags: list[str],
               license: str) -> ModelCard:
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
    lines += ["## Architecture", "", f"`{architecture}`" + (f", from {paper}." if paper else "."), "",
              "Made with relzoo: `import relzoo` registers the architecture with "
              "timm and the transformers Auto classes; load it only after that import.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


SAN_PAPER = "Zhao, Jia and Koltun, *Exploring Self-attention for Image Recognition*, CVPR 2020 (arXiv:2004.13621)"


def save_hub_folder(model: torch.nn.Module, folder: str | os.PathLike, *, class_names: list[str], image_size: int,
                    crop_pct: float, mean, std, model_id: str | None = None, dataset: str | None = None,
                    metrics: dict | None = None, training: dict | None = None, license: str = "apache-2.0") -> Path:
    """Write ``model`` (a timm model, relzoo's or any other) as a Hub-ready folder, atomically.

    relzoo SAN models are saved as transformers ``SANForImageClassification`` (``config.json`` with
    ``model_type: san``, ``model.safetensors``, ``preprocessor_config.json``); other timm models in timm's format,
    fixed so that transformers' ``TimmWrapper`` loads them. Both get a ``README.md`` model card. ``model`` itself is
    left as it was (mode and ``pretrained_cfg``).
    """
    import timm.models

    id2label = dict(enumerate(class_names))
    label2id = {n: i for i, n in id2label.items()}
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    model_id = model_id or f"{arch}-finetuned"
    with atomic_folder(folder) as tmp:
        if isinstance(model, SAN):
            hf = SANForImageClassification.from_timm(model, id2label=id2label, label2id=label2id)
            hf.save_pretrained(tmp)
            san_image_processor(image_size, crop_pct, mean, std).save_pretrained(tmp)
            library, tags, paper = "transformers", ["image-classification", "relzoo", "san", "timm"], SAN_PAPER
            usage = ("```python\nimport relzoo  # registers SAN with transformers and timm\nfrom transformers import "
                     f"pipeline\nclassify = pipeline('image-classification', model='{model_id}')\n"
                     "print(classify('image.png'))\n```\n\nOr `relzoo.SANForImageClassification.from_pretrained(...)`;"
                     " `.to_timm()` gives the timm module.")
        else:
            original = getattr(model, "pretrained_cfg", None)
            cfg = dict(original or {})
            cfg.update(input_size=(cfg.get("input_size", (3,))[0], image_size, image_size), crop_pct=crop_pct,
                       mean=tuple(mean), std=tuple(std), label_names=class_names)
            model.pretrained_cfg = cfg  # save_for_hf reads the preprocessing from here
            try:
                timm.models.save_for_hf(model, tmp, safe_serialization=True)
            finally:
                model.pretrained_cfg = original
            config_path = tmp / "config.json"
            config = json.loads(config_path.read_text())
            config.get("model_args", {}).pop("num_classes", None)  # else TimmWrapper passes it twice (TypeError)
            config_path.write_text(json.dumps(config, indent=2))
            library, tags, paper = "timm", ["image-classification", "timm", "relzoo"], None
            usage = (f"```python\nimport timm\nmodel = timm.create_model('hf-hub:{model_id}', pretrained=True)\n```")
        card = _card_text(model_id=model_id, architecture=arch, usage=usage, dataset=dataset, metrics=metrics,
                          training=training, paper=paper, library_name=library, tags=tags, license=license,
                          description=f"`{arch}` image classifier" + (f" trained on {dataset}." if dataset else "."))
        card.save(tmp / "README.md")
    return Path(folder)


def convert_official_san(checkpoint: str | os.PathLike, variant: str, output_dir: str | os.PathLike) -> Path:
    """Convert an official SAN checkpoint (``{"state_dict": {"module.conv_in.weight": ...}}`` as written by the
    authors' ``train.py``, or a bare state dict) into a Hub-ready transformers folder.

    The conversion is a pure renaming (see :func:`relzoo.models.san.official_to_timm_key`), loaded strictly.
    """
    if variant not in SAN_VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(SAN_VARIANTS)}, got {variant!r}")
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise ValueError(f"`checkpoint` {checkpoint} does not hold a dict (got {type(raw).__name__})")
    state = checkpoint_filter_fn(raw)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0
    model = SAN(num_classes=num_classes, **SAN_VARIANTS[variant])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(f"checkpoint {checkpoint} does not match {variant}: {len(missing)} missing (e.g. "
                         f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(mismatched)} "
                         f"with other shapes (e.g. {mismatched[:3]})")
    model.load_state_dict(state, strict=True)
    return save_hub_folder(model, output_dir, class_names=[str(i) for i in range(num_classes)], image_size=224,
                           crop_pct=0.875, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                           model_id=f"relzoo/{variant}.in1k",
                           dataset="imagenet-1k", license="mit",  # the official SAN release is MIT-licensed
                           training={"source": "official SAN checkpoint", "checkpoint": Path(checkpoint).name})
