"""Hub-ready folders: weights + config + image processor + a model card, written atomically.

* :func:`save_hub_folder` turns a trained timm model into a folder that ``transformers`` (relzoo families:
  ``AutoModelForImageClassification`` / ``pipeline``; other timm models: ``TimmWrapper``) and ``timm`` can load.
* :func:`convert_official_san` turns an official SAN checkpoint (``model_best.pth``) into such a folder.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers import PreTrainedModel

from .checksums import write_checksums
from .fileio import atomic_folder, check_output_folder, load_checkpoint_safely
from .models.san import SAN, SAN_VARIANTS, SANForImageClassification, checkpoint_filter_fn
from .remote_code import _registered_class, auto_map_for, write_remote_code
from .variants import NO_WEIGHTS_MARK


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


SAN_USAGE = """With relzoo installed (`import relzoo` registers SAN with timm and transformers):

```python
import relzoo, timm
model = timm.create_model("hf-hub:{model_id}", pretrained=True)            # timm
from transformers import AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained("{model_id}")      # transformers
print(pipeline("image-classification", model="{model_id}")("image.png"))
```

Without relzoo, the modeling code stored in this repo (relzoo's own source) runs with `trust_remote_code=True`
(it needs torch, timm and transformers):

```python
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True)
```"""

#: the Auto classes a Hub folder's ``auto_map`` may name (each one relzoo registers the model's config with)
AUTO_CLASSES = ("AutoModel", "AutoModelForImageClassification", "AutoModelForFewShotClassification",
                "AutoModelForFewShotSegmentation")

SAN_PAPER = "Zhao, Jia and Koltun, *Exploring Self-attention for Image Recognition*, CVPR 2020 (arXiv:2004.13621)"


def save_hub_folder(model: torch.nn.Module, folder: str | os.PathLike, *, class_names: list[str], image_size: int,
                    crop_pct: float, mean, std, model_id: str | None = None, dataset: str | None = None,
                    metrics: dict | None = None, training: dict | None = None, license: str = "apache-2.0",
                    overwrite: bool = False, inputs=()) -> Path:
    """Write ``model`` (a timm model, relzoo's or any other) as a Hub-ready folder, atomically (a non-empty
    ``folder`` is replaced only with ``overwrite``; one holding any of ``inputs`` never: see
    :func:`relzoo.fileio.atomic_folder`).

    relzoo SAN models are saved as transformers ``SANForImageClassification`` (``config.json`` with
    ``model_type: san`` and timm's fields, ``model.safetensors``); other timm models in timm's format,
    fixed so that transformers' ``TimmWrapper`` loads them. Both get a ``README.md`` model card. ``model`` itself is
    left as it was (mode and ``pretrained_cfg``).
    """
    import timm.models

    id2label = dict(enumerate(class_names))
    label2id = {n: i for i, n in id2label.items()}
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    model_id = model_id or f"{arch}-finetuned"
    with atomic_folder(folder, overwrite=overwrite, inputs=inputs) as tmp:
        if isinstance(model, SAN):
            hf = SANForImageClassification.from_timm(model, id2label=id2label, label2id=label2id)
            hf.config.pretrained_cfg = _timm_preprocessing(model, image_size, crop_pct, mean, std)
            hf.save_pretrained(tmp)
            add_remote_code(tmp, type(hf))
            # the pipeline and timm.create_model("hf-hub:...") then preprocess a picture identically
            _write_timm_processor(tmp, hf.config.timm_fields()["pretrained_cfg"])
            library, tags, paper = "transformers", ["image-classification", "relzoo", "san", "timm"], SAN_PAPER
            usage = SAN_USAGE.format(model_id=model_id)
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
            config["label_names"] = [str(n) for n in class_names]  # TimmWrapper's id2label (save_for_hf drops them)
            config_path.write_text(json.dumps(config, indent=2))
            _write_timm_processor(tmp, config["pretrained_cfg"])
            write_checksums(tmp)  # relzoo's own models write theirs in save_pretrained
            library, tags, paper = "timm", ["image-classification", "timm", "relzoo"], None
            usage = (f"```python\nimport timm\nmodel = timm.create_model('hf-hub:{model_id}', pretrained=True)\n```")
        card = _card_text(model_id=model_id, architecture=arch, usage=usage, dataset=dataset, metrics=metrics,
                          training=training, paper=paper, library_name=library, tags=tags, license=license,
                          description=f"`{arch}` image classifier" + (f" trained on {dataset}." if dataset else "."))
        card.save(tmp / "README.md")
    return Path(folder)


def _write_timm_processor(folder: Path, pretrained_cfg: dict) -> None:
    """``preprocessor_config.json`` for transformers' ``TimmWrapperImageProcessor`` (timm's own eval transform over
    the same ``pretrained_cfg`` config.json holds; that class refuses ``save_pretrained``, so it is written here).
    A Hub download reads this file; a local folder, config.json."""
    processor = {"image_processor_type": "TimmWrapperImageProcessor", "pretrained_cfg": pretrained_cfg}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def write_hsnet_files(folder: str | os.PathLike, model, image_size: int, mean, std) -> None:
    """An HSNet model's files in ``folder`` (the caller's atomic folder): weights and config, remote code, and the
    image processor of its episodes (resize to a square, rescale to [0, 1], normalise with ``mean`` / ``std``).
    The converter, the fine-tuning trainer and variant exports all write HSNet folders through this."""
    from transformers import ViTImageProcessor

    model.save_pretrained(folder)
    add_remote_code(folder, type(model))
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=list(mean), image_std=list(std),
                      resample=2).save_pretrained(folder)


def _timm_preprocessing(model, image_size: int, crop_pct: float, mean, std) -> dict:
    """timm's ``pretrained_cfg`` for a folder: the model's own (paper, license, ...) with this preprocessing."""
    keep = ("paper_ids", "paper_name", "origin_url", "license", "first_conv", "classifier", "min_input_size",
            "pool_size", "interpolation")
    cfg = {k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if k in keep}
    channels = getattr(model, "in_chans", None) or len(mean)
    cfg.update(input_size=[channels, image_size, image_size], crop_pct=crop_pct, mean=list(mean), std=list(std))
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


def _state_mismatch(state: dict, expected: dict, original_name) -> tuple[list[str], list[str], list[str]]:
    """Mismatched shapes, missing and unexpected keys, each named as in the user's file (``original_name``)."""
    mismatched = [f"{original_name(k)}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
                  for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    missing = [f"{original_name(k)} {tuple(expected[k].shape)}" for k in expected if k not in state]
    unexpected = [original_name(k) for k in state if k not in expected]
    return mismatched, missing, unexpected


def _open_conversion(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool
                     ) -> tuple[dict, dict, Path]:
    """What every converter does first: refuse a non-empty ``output_dir`` unless ``overwrite`` and one holding the
    checkpoint in any case, read the checkpoint safely, and return it raw, its state dict (``raw["state_dict"]`` or
    ``raw`` itself, tensors only) and the output path."""
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite=overwrite, inputs=(checkpoint,))   # before the checkpoint is read
    raw = load_checkpoint_safely(checkpoint)
    original = raw["state_dict"] if isinstance(raw.get("state_dict"), dict) else raw
    bad = [k for k, v in original.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint {str(checkpoint)!r}: entries that are not tensors: {bad[:3]}")
    return raw, original, output_dir


def convert_official_san(checkpoint: str | os.PathLike, variant: str, output_dir: str | os.PathLike,
                         overwrite: bool = False) -> Path:
    """Convert an official SAN checkpoint (``{"state_dict": {"module.conv_in.weight": ...}}`` as written by the
    authors' ``train.py``, or a bare state dict) into a Hub-ready transformers folder.

    The conversion is a pure renaming (see :func:`relzoo.models.san.official_to_timm_key`), checked strictly: a
    mismatch raises one ``ValueError`` naming the keys as they are in the file, with expected and found shapes,
    and the variant the file does match if there is one. An existing non-empty ``output_dir`` is replaced only
    with ``overwrite=True``. 1000-class checkpoints get the ImageNet class names as ``id2label``.
    """
    from timm.data import ImageNetInfo

    from .models.san import timm_to_official_key

    if variant not in SAN_VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(SAN_VARIANTS)}, got {variant!r}")
    raw, original, output_dir = _open_conversion(checkpoint, output_dir, overwrite)
    prefix = "module." if original and all(k.startswith("module.") for k in original) else ""
    state = checkpoint_filter_fn(raw)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0

    def expected_state(name: str) -> dict:
        return SAN(num_classes=num_classes, device="meta", **SAN_VARIANTS[name]).state_dict()

    mismatched, missing, unexpected = _state_mismatch(state, expected_state(variant),
                                                      lambda k: prefix + timm_to_official_key(k))
    if mismatched or missing or unexpected:
        parts = [f"{len(lst)} {what} ({'; '.join(lst[:3])}{'; ...' if len(lst) > 3 else ''})"
                 for what, lst in (("with other shapes", mismatched), ("missing", missing),
                                   ("unexpected", unexpected)) if lst]
        matching = [v for v in sorted(SAN_VARIANTS) if v != variant and not any(_state_mismatch(
            state, expected_state(v), str))]
        hint = f" It matches {matching[0]}: pass --variant {matching[0]}." if matching else ""
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not match {variant}: {', '.join(parts)}.{hint}")
    model = SAN(num_classes=num_classes, **SAN_VARIANTS[variant])
    model.load_state_dict(state, strict=True)
    names = (ImageNetInfo("imagenet-1k").label_descriptions() if num_classes == 1000
             else [str(i) for i in range(num_classes)])
    return save_hub_folder(model, output_dir, class_names=names, image_size=224,
                           crop_pct=0.875, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                           model_id=f"relzoo/{variant}.in1k",
                           dataset="imagenet-1k", license="mit",  # the official SAN release is MIT-licensed
                           overwrite=overwrite, inputs=(checkpoint,),
                           training={"source": "official SAN checkpoint", "checkpoint": Path(checkpoint).name})


CTX_PAPER = ("Doersch, Gupta and Zisserman, *CrossTransformers: spatially-aware few-shot transfer*, NeurIPS 2020 "
             "(arXiv:2007.11498)")
PROTONET_PAPER = "Snell, Swersky and Zemel, *Prototypical Networks for Few-shot Learning*, NeurIPS 2017 (arXiv:1703.05175)"


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
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(path)


def save_fewshot_folder(model, folder: str | os.PathLike, *, image_size: int, results: list[dict] | None = None,
                        training: dict | None = None, dataset: str | None = None, model_id: str | None = None,
                        license: str = "apache-2.0", overwrite: bool = False) -> Path:
    """Write a few-shot classifier (``CrossTransformerForFewShotClassification`` / ``ProtoNetForFewShotClassification``)
    as a Hub-ready folder, atomically: weights, config, an image processor (resize to ``image_size``, scale to
    [-1, 1]) and a model card whose model-index holds the measured accuracies (``results`` rows from
    :func:`relzoo.train.fewshot.evaluate_all`: dataset, way, shot, accuracy, ci95, episodes)."""
    from transformers import ViTImageProcessor

    kind = model.config.model_type
    paper = CTX_PAPER if kind == "crosstransformer" else PROTONET_PAPER
    model_id = model_id or f"{kind}-{model.config.backbone}" + (f"-{dataset}" if dataset else "")
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        add_remote_code(tmp, type(model))
        ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                          image_std=[0.5] * 3, resample=2).save_pretrained(tmp)
        eval_results = [EvalResult(task_type="image-classification", task_name="few-shot image classification",
                                   dataset_type=r["dataset"], dataset_name=f"{r['dataset']} ({r['split']}, unseen "
                                   f"classes {r['classes']}) {r['way']}-way {r['shot']}-shot",
                                   metric_type="accuracy", metric_value=round(100 * r["accuracy"], 2),
                                   metric_name=f"accuracy over {r['episodes']} episodes (± {100 * r['ci95']:.2f} CI95)")
                        for r in results or []]
        table = []
        if results:
            table = ["## Results (mean accuracy ± 95% confidence interval over test episodes, unseen classes)", "",
                     "| test set | classes | way | shot | queries/class | episodes | accuracy (%) |",
                     "|---|---|---|---|---|---|---|"]
            table += [f"| {r['dataset']} ({r['split']}) | {r['classes']} | {r['way']} | {r['shot']} | {r['queries']} | "
                      f"{r['episodes']} | {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} |" for r in results]
        usage = ("import relzoo  # registers the architecture with transformers\n"
                 "from transformers import AutoImageProcessor\n"
                 "model = relzoo.AutoModelForFewShotClassification.from_pretrained(FOLDER_OR_REPO).eval()\n"
                 "processor = AutoImageProcessor.from_pretrained(FOLDER_OR_REPO)\n"
                 "support = processor(support_images, return_tensors='pt').pixel_values   # (S, 3, H, W)\n"
                 "model.set_support(support, support_labels)                             # labels in 0..N-1\n"
                 "logits = model(query_pixel_values=processor(queries, return_tensors='pt').pixel_values).logits")
        trained_card(tmp / "README.md", model, model_id=model_id, tags=["few-shot", "relzoo", kind, "timm"],
                     dataset=dataset, license=license, metrics=["accuracy"], eval_results=eval_results, usage=usage,
                     results_table=table, training=training, script="scripts/train_fewshot.py", paper=paper)
    return Path(folder)


HSNET_PAPER = "Min, Kang and Cho, *Hypercorrelation Squeeze for Few-Shot Segmentation*, ICCV 2021"
HSNET_BACKBONES = ("resnet50", "resnet101", "vgg16")


def _hsnet_key(official: str) -> str:
    key = official.removeprefix("module.")
    return "learner." + key.removeprefix("hpn_learner.") if key.startswith("hpn_learner.") else key


def convert_official_hsnet(checkpoint: str | os.PathLike, backbone: str, output_dir: str | os.PathLike,
                           overwrite: bool = False, use_support_mask: bool = True) -> Path:
    """Convert an official HSNet checkpoint (``best_model.pt``: the ``DataParallel`` state dict, every key prefixed
    ``module.``, the frozen torchvision backbone included) into a Hub-ready folder for
    :class:`relzoo.HSNetForFewShotSegmentation`.

    ``module.hpn_learner.*`` becomes ``learner.*`` and ``module.backbone.*`` ``backbone.*`` (timm's ResNet and VGG
    keep torchvision's names). The backbone's classifier (ResNet's ``fc``, VGG-16's ``classifier``) is not used by
    HSNet (its taps end before it), the model does not hold one, and its keys are left out. Everything else is checked
    strictly: a mismatch raises one ``ValueError`` naming the keys as the file names them, with expected and found
    shapes. ``use_support_mask=False`` marks the paper's unmasked (dagger) checkpoints."""

    from .models.hsnet import HSNetConfig, HSNetForFewShotSegmentation

    if backbone not in HSNET_BACKBONES:
        raise ValueError(f"`backbone` must be one of {HSNET_BACKBONES} (the released HSNet models), got {backbone!r}")
    _, original, output_dir = _open_conversion(checkpoint, output_dir, overwrite)
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone=backbone, use_support_mask=use_support_mask))
    # the backbone's head (torchvision's `fc` / VGG's `classifier`) never runs: the model has none, leave it out
    unused = tuple(f"backbone.{name}." for name in (*model.pruned_backbone_modules, "classifier"))
    names = {_hsnet_key(k): k for k in original}
    state = {_hsnet_key(k): v for k, v in original.items() if not _hsnet_key(k).startswith(unused)}
    expected = model.state_dict()
    mismatched, missing, unexpected = _state_mismatch(state, expected, lambda k: names.get(k, "module." + k))
    if mismatched or missing or unexpected:
        parts = [f"{len(lst)} {what} ({'; '.join(lst[:3])}{'; ...' if len(lst) > 3 else ''})"
                 for what, lst in (("with other shapes", mismatched), ("missing", missing),
                                   ("unexpected", unexpected)) if lst]
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not match HSNet on {backbone}: {', '.join(parts)}")
    model.load_state_dict(state, strict=False)
    model_id = f"relzoo/hsnet-{backbone}" + ("" if use_support_mask else "-unmasked")
    with atomic_folder(output_dir, overwrite=overwrite, inputs=(checkpoint,)) as tmp:
        write_hsnet_files(tmp, model, 400, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        data = ModelCardData(library_name="transformers", model_name=model_id,
                             tags=["few-shot", "segmentation", "relzoo", "hsnet", "timm"])
        lines = [f"# {model_id}", "",
                 f"HSNet on a frozen `{backbone}` backbone: converted official weights "
                 f"(`{Path(checkpoint).name}`), not trained by relzoo.", "", "## How to use", "",
                 "```python\nimport relzoo  # registers the architecture with transformers\n"
                 "model = relzoo.AutoModelForFewShotSegmentation.from_pretrained(FOLDER_OR_REPO).eval()\n"
                 "out = model(query_pixel_values=q, support_pixel_values=s, support_masks=m)   # 400 x 400, ImageNet norm\n"
                 "mask = out.predicted_mask\n```", "",
                 "## Architecture", "", f"From {HSNET_PAPER}. Made with relzoo: `import relzoo` before loading (or "
                 "`trust_remote_code=True`, needing torch, timm, transformers and einops).", "",
                 "## License", "", "The weights' terms are those of the official release (juhongm999/hsnet); relzoo "
                 "does not record them here.", ""]
        ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(tmp / "README.md")
    return output_dir


# ----------------------------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------------------------
#: files a relzoo export may hold (besides the remote-code modules its config.json names)
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "README.md", "preprocessor_config.json",
                          "checksums.json", ".gitattributes"})
_CREDENTIAL_NAMES = (".env", ".netrc", ".git-credentials", ".pypirc", "token", "stored_tokens", "credentials",
                     "id_rsa", "id_ed25519", "id_ecdsa")
_CREDENTIAL_SUFFIXES = (".env", ".pem", ".key", ".p12", ".pfx", ".token", ".kdbx")
_TOKEN_PATTERNS = (r"hf_[A-Za-z0-9]{30,}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"AKIA[0-9A-Z]{16}",
                   r"gh[pousr]_[A-Za-z0-9]{30,}")


def check_export_folder(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` that a push uploads, after refusing anything that does not belong in an export.

    Refused, with the reason: a missing ``config.json``; sub-folders, links and hard links (a link can point
    anywhere on the machine, a hard link may be another file's content); files that look like credentials by name
    (``.env``, ``token``, keys, ...) or hold a token or a private key in their text; any other file that is not part
    of what relzoo writes (weights, config, card, image processor, checksum manifest, and the remote-code modules
    ``config.json``'s ``auto_map`` needs). Every weights file must parse completely as safetensors holding tensors
    only (:func:`relzoo.fileio.check_safetensors_file`; its metadata is scanned like text), and ``checksums.json``
    must list every weights file and verify (weights damaged or replaced after saving are not uploaded)."""
    import re
    import stat

    from .checksums import ChecksumError, read_checksums, verify_checksums
    from .fileio import check_safetensors_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"`folder` {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"`folder` {str(folder)!r} has no config.json: it is not a model export (write one with "
                         "scripts/push_to_hub.py --dry-run, save_hub_folder or save_pretrained)")
    allowed = set(EXPORT_FILES) | _remote_code_names(folder)

    def secret_in(text: str) -> str | None:
        return next((p for p in _TOKEN_PATTERNS if re.search(p, text)), None)

    problems, files = [], []
    for item in sorted(folder.iterdir()):
        name, lower = item.name, item.name.lower()
        info = item.lstat()
        if stat.S_ISLNK(info.st_mode):
            problems.append(f"{name}: a link (it may point outside the export)")
        elif stat.S_ISDIR(info.st_mode):
            problems.append(f"{name}/: a sub-folder (exports are flat)")
        elif not stat.S_ISREG(info.st_mode):
            problems.append(f"{name}: not a regular file")
        elif info.st_nlink > 1:
            problems.append(f"{name}: a hard link ({info.st_nlink} names for one file: it may be another file's "
                            "content)")
        elif lower in _CREDENTIAL_NAMES or lower.endswith(_CREDENTIAL_SUFFIXES) or lower.startswith(".env"):
            problems.append(f"{name}: looks like a credentials file")
        elif name not in allowed:
            problems.append(f"{name}: not part of a relzoo export (allowed: {', '.join(sorted(allowed))})")
        elif name.endswith(".safetensors"):
            try:
                metadata = check_safetensors_file(item)
            except ValueError as err:
                problems.append(f"{name}: not {str(err).split(' is not ', 1)[-1]}")
                continue
            hit = secret_in(json.dumps(metadata))
            if hit:
                problems.append(f"{name}: its metadata holds what looks like a secret (matches {hit!r})")
                continue
            files.append(name)
        else:
            hit = secret_in(item.read_text(errors="replace"))
            if hit:
                problems.append(f"{name}: holds what looks like a secret (matches {hit!r})")
                continue
            files.append(name)
    if not problems:
        try:
            listed = read_checksums(folder)
            if listed is None:
                raise ChecksumError("checksums.json is missing: the weights cannot be checked")
            unlisted = [n for n in files if n.endswith(".safetensors") and n not in listed]
            if unlisted:
                raise ChecksumError(f"checksums.json does not list {', '.join(unlisted)}")
            verify_checksums(folder, required=True)
        except ChecksumError as err:
            problems.append(str(err))
    if problems:
        raise ValueError(f"refusing to push {str(folder)!r}: " + "; ".join(problems)
                         + ". Remove these files (or push a folder written by scripts/push_to_hub.py --dry-run).")
    return files


def _remote_code_names(folder: Path) -> set[str]:
    """The modules ``config.json``'s ``auto_map`` names and, transitively, their flat ``from .x import`` siblings."""
    import re

    try:
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map") or {}
    except ValueError as err:
        raise ValueError(f"{str(folder / 'config.json')!r} is not valid JSON: {err}") from None
    todo = [ref.rsplit(".", 1)[0] + ".py" for ref in auto_map.values() if isinstance(ref, str)]
    names: set[str] = set()
    while todo:
        name = todo.pop()
        if name in names or not (folder / name).is_file() or (folder / name).is_symlink():
            continue
        names.add(name)
        todo += [m + ".py" for m in re.findall(r"^\s*from\s+\.(\w+)\s+import", (folder / name).read_text(), re.M)]
    return names


def push_to_hub(model_or_folder, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload from relzoo", revision: str | None = None, **export_kwargs) -> str:
    """Upload a model export to the Hub repo ``repo_id`` (created if needed) and return the commit URL.

    ``model_or_folder`` is a folder written by relzoo (``scripts/push_to_hub.py --dry-run``, :func:`save_hub_folder`,
    the converters, the trainers' ``model`` folder) or a model, written first with :func:`export_model`
    (``export_kwargs`` go there). The folder is checked by :func:`check_export_folder` before anything is sent."""
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must be 'namespace/name', got {repo_id!r}")
    with tempfile.TemporaryDirectory(prefix="relzoo-push-") as tmp:
        if isinstance(model_or_folder, (str, os.PathLike)):
            folder = Path(model_or_folder)
        else:
            folder = export_model(model_or_folder, Path(tmp) / "export", model_id=repo_id, **export_kwargs)
        files = check_export_folder(folder)
        card = folder / "README.md"
        if card.is_file() and NO_WEIGHTS_MARK in card.read_text(errors="replace"):
            raise ValueError(f"refusing to push {str(folder)!r}: its card says it holds no weights (a random "
                             "initialisation written to check the format). Export it with weights first "
                             "(scripts/push_to_hub.py --variant NAME --weights CHECKPOINT_OR_MODEL_FOLDER).")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files,
                                 commit_message=commit_message, revision=revision)
    return str(getattr(info, "commit_url", info))


def export_model(model, folder: str | os.PathLike, *, model_id: str | None = None, class_names=None,
                 image_size: int = 224, crop_pct: float = 0.875, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                 overwrite: bool = False, **kwargs) -> Path:
    """Write ``model`` as a Hub-ready folder. Classifiers go through :func:`save_hub_folder` as the timm network
    inference runs: a timm model as it is, relzoo's transformers classifiers through ``to_timm()`` (SAN; BatchFormer
    and API-Net without their training-only plug-in). Other relzoo models (few-shot, HSNet) are saved with
    ``save_pretrained`` plus remote code. ``kwargs`` go to :func:`save_hub_folder` (dataset, metrics, ...); a
    non-empty ``folder`` is replaced only with ``overwrite``."""
    if hasattr(model, "to_timm"):
        from .models.inputs import class_names as config_class_names

        class_names = class_names or config_class_names(model.config)
        model = model.to_timm()
    elif isinstance(model, PreTrainedModel):
        with atomic_folder(folder, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp)
            add_remote_code(tmp, type(model))
        return Path(folder)
    names = class_names or [str(i) for i in range(getattr(model, "num_classes", 0))]
    return save_hub_folder(model, folder, class_names=names, image_size=image_size, crop_pct=crop_pct, mean=mean,
                           std=std, model_id=model_id, overwrite=overwrite, **kwargs)
