#!/usr/bin/env python
"""Convert an official checkpoint into a Hub-ready folder (config.json for timm and transformers, model.safetensors,
preprocessor config, model card, remote code), the one entry point for every family with released weights.

    python scripts/convert.py san --variant san10_patch --checkpoint model_best.pth --output san10_patch.in1k
    python scripts/convert.py hsnet --backbone resnet50 --checkpoint best_model.pt --output hsnet-resnet50-fold0

* san: hszhao/SAN `model_best.pth` ({"state_dict": {"module.conv_in.weight": ...}} or a bare state dict); keys
  renamed (`module.conv_in.` -> `stem.conv.`, `module.layer{s}.{b}.` -> `stages.{s}.blocks.{b}.`, ...).
* hsnet: juhongm999/hsnet `best_model.pt` (DataParallel state dict: `module.` dropped, `hpn_learner.` ->
  `learner.`, the frozen backbone included); `--unmasked` marks the paper's dagger checkpoints.

Every file is read with `torch.load(weights_only=True)` (a file holding pickled code is refused, never run) and
loaded strictly: a mismatch is reported in one line, with the keys as the file names them and the expected and
found shapes. An existing non-empty --output is kept unless --overwrite. CrossTransformers' released checkpoints
are TensorFlow files and API-Net / BatchFormer have none recorded in the briefs, so they have no converter.
Publish the folder with `python scripts/push_to_hub.py --folder OUTPUT --repo-id ORG/NAME`.
"""
import argparse

from relzoo.hub import HSNET_BACKBONES, convert_official_hsnet, convert_official_san
from relzoo.models.san import SAN_VARIANTS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    families = parser.add_subparsers(dest="family", required=True, metavar="{san,hsnet}")
    san = families.add_parser("san", help="hszhao/SAN model_best.pth")
    san.add_argument("--variant", required=True, choices=sorted(SAN_VARIANTS))
    hsnet = families.add_parser("hsnet", help="juhongm999/hsnet best_model.pt")
    hsnet.add_argument("--backbone", required=True, choices=HSNET_BACKBONES)
    hsnet.add_argument("--unmasked", action="store_true", help="the paper's dagger checkpoints (no support masking)")
    for sub in (san, hsnet):
        sub.add_argument("--checkpoint", required=True, help="the official checkpoint file")
        sub.add_argument("--output", required=True, help="folder to write (written atomically)")
        sub.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        if args.family == "san":
            folder = convert_official_san(args.checkpoint, args.variant, args.output, overwrite=args.overwrite)
        else:
            folder = convert_official_hsnet(args.checkpoint, args.backbone, args.output, overwrite=args.overwrite,
                                            use_support_mask=not args.unmasked)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog} {args.family}: error: {err}\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
