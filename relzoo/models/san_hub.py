"""SAN's Hub side: its folder files, its card's usage lines and the converter of the official checkpoints
(hszhao/SAN ``model_best.pth``). Read through the family registry (``Family.hub``); the model file never imports it.
"""
from __future__ import annotations

import os
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..conversion import mismatch_summary, open_checkpoint, state_mismatch
from ..hub import save_hub_folder, timm_preprocessing, write_timm_processor, write_transformers_files
from ..registry import Converter
from .san import SAN, SAN_ARCHITECTURES, SANForImageClassification, checkpoint_filter_fn, timm_to_official_key

__all__ = ["write_files", "write_timm_files", "usage", "convert_official_san", "convert_official_san_model",
           "CONVERTER"]


def write_timm_files(model: SAN, folder: Path, *, class_names: list[str], preprocessing: dict) -> None:
    """A timm ``SAN`` as a transformers ``SANForImageClassification`` folder (``config.json`` with ``model_type:
    san`` and timm's fields, so ``timm.create_model("hf-hub:...")`` loads it too), its remote code and the image
    processor that preprocesses a picture as timm does."""
    id2label = dict(enumerate(class_names))
    hf = SANForImageClassification.from_timm(model, id2label=id2label, label2id={n: i for i, n in id2label.items()})
    hf.config.pretrained_cfg = timm_preprocessing(model, preprocessing)
    write_transformers_files(hf, folder)
    # the pipeline and timm.create_model("hf-hub:...") then preprocess a picture identically
    write_timm_processor(folder, hf.config.timm_fields()["pretrained_cfg"])


def write_files(model: SANForImageClassification, folder: Path, *, class_names: list[str], preprocessing: dict,
                model_id: str) -> None:
    """A variant's files: its timm network, written by :func:`write_timm_files`."""
    write_timm_files(model.to_timm().eval(), folder, class_names=class_names, preprocessing=preprocessing)


def usage(model_id: str) -> list[str]:
    return ["```python", "import relzoo, timm   # importing relzoo registers SAN with timm and transformers",
            f'model = timm.create_model("hf-hub:{model_id}", pretrained=True).eval()',
            "from transformers import AutoModelForImageClassification, pipeline",
            f'model = AutoModelForImageClassification.from_pretrained("{model_id}")',
            f'print(pipeline("image-classification", model="{model_id}")("image.png"))', "```", "",
            "Without relzoo installed, the modeling code stored in this repo (relzoo's own, needing torch, timm "
            "and transformers) runs with `trust_remote_code=True`:", "", "```python",
            "from transformers import AutoModelForImageClassification",
            f'model = AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True)', "```"]


def _san_from_checkpoint(checkpoint, raw: dict, original: dict, architecture: str) -> SAN:
    prefix = "module." if original and all(k.startswith("module.") for k in original) else ""
    state = checkpoint_filter_fn(raw)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0

    def expected_state(name: str) -> dict:
        return SAN(num_classes=num_classes, device="meta", **SAN_ARCHITECTURES[name]).state_dict()

    found = state_mismatch(state, expected_state(architecture), lambda k: prefix + timm_to_official_key(k))
    if any(found):
        matching = [v for v in sorted(SAN_ARCHITECTURES) if v != architecture and not any(state_mismatch(
            state, expected_state(v), str))]
        hint = f" It matches {matching[0]}: pass --architecture {matching[0]}." if matching else ""
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not match {architecture}: {mismatch_summary(*found)}.{hint}")
    model = SAN(num_classes=num_classes, **SAN_ARCHITECTURES[architecture])
    model.load_state_dict(state, strict=True)
    return model


def _check_architecture(architecture) -> None:
    if architecture not in SAN_ARCHITECTURES:
        raise ValueError(f"`architecture` must be one of {sorted(SAN_ARCHITECTURES)}, got {architecture!r}")


def convert_official_san_model(checkpoint: str | os.PathLike, architecture: str) -> SAN:
    """The timm ``SAN`` of an official checkpoint (``{"state_dict": {"module.conv_in.weight": ...}}`` as written by
    the authors' ``train.py``, or a bare state dict): a pure renaming (:func:`relzoo.models.san.official_to_timm_key`),
    checked strictly. A mismatch raises one ``ValueError`` naming the keys as they are in the file, with expected and
    found shapes, and the architecture the file does match if there is one."""
    _check_architecture(architecture)
    raw, original = open_checkpoint(checkpoint)
    return _san_from_checkpoint(checkpoint, raw, original, architecture)


def _class_names(num_classes: int) -> list[str]:
    from timm.data import ImageNetInfo

    if num_classes == 1000:
        return list(ImageNetInfo("imagenet-1k").label_descriptions())
    return [str(i) for i in range(num_classes)]


def convert_official_san(checkpoint: str | os.PathLike, architecture: str, output_dir: str | os.PathLike,
                         overwrite: bool = False) -> Path:
    """Convert an official SAN checkpoint into a Hub-ready transformers folder (see
    :func:`convert_official_san_model`). An existing non-empty ``output_dir`` is replaced only with
    ``overwrite=True``, one holding the checkpoint never. 1000-class checkpoints get the ImageNet class names."""
    _check_architecture(architecture)
    raw, original = open_checkpoint(checkpoint, output_dir, overwrite)   # the folder is checked before the read
    model = _san_from_checkpoint(checkpoint, raw, original, architecture)
    return save_hub_folder(model, output_dir, class_names=_class_names(model.num_classes), image_size=224,
                           crop_pct=0.875, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                           model_id=f"relzoo/{architecture}.in1k",
                           dataset="imagenet-1k", license="mit",  # the official SAN release is MIT-licensed
                           overwrite=overwrite, inputs=(checkpoint,),
                           training={"source": "official SAN checkpoint", "checkpoint": Path(checkpoint).name})


def _add_arguments(parser) -> None:
    parser.add_argument("--architecture", "--variant", dest="architecture", required=True,
                        choices=sorted(SAN_ARCHITECTURES),
                        help="the SAN architecture of the checkpoint (--variant: its former name)")


def _from_variant(spec: dict, checkpoint) -> SANForImageClassification:
    model = convert_official_san_model(checkpoint, spec["timm_architecture"])
    id2label = dict(enumerate(_class_names(model.num_classes)))
    return SANForImageClassification.from_timm(model, id2label=id2label,
                                               label2id={n: i for i, n in id2label.items()})


CONVERTER = Converter(
    command="san", source="hszhao/SAN model_best.pth", add_arguments=_add_arguments,
    convert=lambda args: convert_official_san(args.checkpoint, args.architecture, args.output, overwrite=args.overwrite),
    from_variant=_from_variant)
