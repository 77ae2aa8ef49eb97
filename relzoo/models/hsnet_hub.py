"""HSNet's Hub side: its folder files, its cards' usage lines and the converter of the official checkpoints
(juhongm999/hsnet ``best_model.pt``). Read through the family registry; the model file never imports it."""
from __future__ import annotations

import os
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..cards import converted_card, remote_code_usage
from ..conversion import mismatch_summary, open_checkpoint, state_mismatch
from ..fileio import atomic_folder
from ..hub import write_image_processor, write_transformers_files
from ..registry import Converter, get_family
from .hsnet import HSNET_PAPER, HSNetConfig, HSNetForFewShotSegmentation

__all__ = ["write_files", "write_hsnet_files", "usage", "convert_official_hsnet", "convert_official_hsnet_model",
           "HSNET_BACKBONES", "HSNET_PAPER", "CONVERTER"]

HSNET_BACKBONES = ("resnet50", "resnet101", "vgg16")


def write_hsnet_files(folder: str | os.PathLike, model, image_size: int, mean, std) -> None:
    """An HSNet model's files in ``folder`` (the caller's atomic folder): weights and config, remote code, and the
    image processor of its episodes (resize to a square, rescale to [0, 1], normalise with ``mean`` / ``std``).
    The converter, the fine-tuning trainer and variant exports all write HSNet folders through this."""
    write_transformers_files(model, Path(folder))
    write_image_processor(Path(folder), {"input_size": [3, image_size, image_size], "mean": mean, "std": std})


def write_files(model, folder: Path, *, class_names, preprocessing: dict, model_id: str) -> None:
    write_hsnet_files(folder, model, preprocessing["input_size"][-1], preprocessing["mean"], preprocessing["std"])


def usage(model_id: str) -> list[str]:
    return ["```python", "import relzoo   # registers the architecture with transformers",
            f'model = relzoo.AutoModelForFewShotSegmentation.from_pretrained("{model_id}").eval()',
            "out = model(query_pixel_values=q, support_pixel_values=s, support_masks=m)   # 400x400, ImageNet norm",
            "mask = out.predicted_mask", "```", "",
            *remote_code_usage(model_id)]


def _hsnet_key(official: str) -> str:
    key = official.removeprefix("module.")
    return "learner." + key.removeprefix("hpn_learner.") if key.startswith("hpn_learner.") else key


def _check_backbone(backbone) -> None:
    if backbone not in HSNET_BACKBONES:
        raise ValueError(f"`backbone` must be one of {HSNET_BACKBONES} (the released HSNet models), got {backbone!r}")


def _hsnet_from_state(checkpoint, original: dict, backbone: str, use_support_mask: bool
                      ) -> HSNetForFewShotSegmentation:
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone=backbone, use_support_mask=use_support_mask))
    # the backbone's head (torchvision's `fc` / VGG's `classifier`) never runs: the model has none, leave it out
    unused = tuple(f"backbone.{name}." for name in (*model.pruned_backbone_modules, "classifier"))
    names = {_hsnet_key(k): k for k in original}
    state = {_hsnet_key(k): v for k, v in original.items() if not _hsnet_key(k).startswith(unused)}
    found = state_mismatch(state, model.state_dict(), lambda k: names.get(k, "module." + k))
    if any(found):
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not match HSNet on {backbone}: "
                         f"{mismatch_summary(*found)}")
    model.load_state_dict(state, strict=False)
    return model


def convert_official_hsnet_model(checkpoint: str | os.PathLike, backbone: str, use_support_mask: bool = True
                                 ) -> HSNetForFewShotSegmentation:
    """:class:`relzoo.HSNetForFewShotSegmentation` from an official HSNet checkpoint (``best_model.pt``: the
    ``DataParallel`` state dict, every key prefixed ``module.``, the frozen torchvision backbone included).

    ``module.hpn_learner.*`` becomes ``learner.*`` and ``module.backbone.*`` ``backbone.*`` (timm's ResNet and VGG
    keep torchvision's names). The backbone's classifier (ResNet's ``fc``, VGG-16's ``classifier``) is not used by
    HSNet (its taps end before it), the model does not hold one, and its keys are left out. Everything else is checked
    strictly: a mismatch raises one ``ValueError`` naming the keys as the file names them, with expected and found
    shapes. ``use_support_mask=False`` marks the paper's unmasked (dagger) checkpoints."""
    _check_backbone(backbone)
    _, original = open_checkpoint(checkpoint)
    return _hsnet_from_state(checkpoint, original, backbone, use_support_mask)


def convert_official_hsnet(checkpoint: str | os.PathLike, backbone: str, output_dir: str | os.PathLike,
                           overwrite: bool = False, use_support_mask: bool = True) -> Path:
    """Convert an official HSNet checkpoint (see :func:`convert_official_hsnet_model`) into a Hub-ready folder with
    its card. An existing non-empty ``output_dir`` is replaced only with ``overwrite``, one holding the checkpoint
    never."""
    _check_backbone(backbone)
    _, original = open_checkpoint(checkpoint, output_dir, overwrite)   # the folder is checked before the read
    model = _hsnet_from_state(checkpoint, original, backbone, use_support_mask)
    model_id = f"relzoo/hsnet-{backbone}" + ("" if use_support_mask else "-unmasked")
    with atomic_folder(output_dir, overwrite=overwrite, inputs=(checkpoint,)) as tmp:
        write_hsnet_files(tmp, model, 400, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        converted_card(model_id=model_id, family=get_family("hsnet"),
                       description=f"HSNet on a frozen `{backbone}` backbone: converted official weights "
                                   f"(`{Path(checkpoint).name}`), not trained by relzoo.",
                       license_note="The weights' terms are those of the official release (juhongm999/hsnet); "
                                    "relzoo does not record them here.",
                       tags=["few-shot", "segmentation", "relzoo", "hsnet", "timm"]).save(tmp / "README.md")
    return Path(output_dir)


def _add_arguments(parser) -> None:
    parser.add_argument("--backbone", required=True, choices=HSNET_BACKBONES)
    parser.add_argument("--unmasked", action="store_true", help="the paper's dagger checkpoints (no support masking)")


def _from_variant(spec: dict, checkpoint) -> HSNetForFewShotSegmentation:
    return convert_official_hsnet_model(checkpoint, spec["config"]["backbone"],
                                        use_support_mask=spec["config"].get("use_support_mask", True))


CONVERTER = Converter(
    command="hsnet", source="juhongm999/hsnet best_model.pt", add_arguments=_add_arguments,
    convert=lambda args: convert_official_hsnet(args.checkpoint, args.backbone, args.output,
                                                overwrite=args.overwrite, use_support_mask=not args.unmasked),
    from_variant=_from_variant)
