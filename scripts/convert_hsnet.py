#!/usr/bin/env python
"""Convert an official HSNet checkpoint (juhongm999/hsnet `best_model.pt`) into a Hub-ready transformers folder.

    python scripts/convert_hsnet.py --backbone resnet50 --checkpoint best_model.pt --output hsnet-resnet50-pascal-fold0

The checkpoint is read with `torch.load(weights_only=True)` (a file holding pickled code is refused); `module.`
prefixes are dropped and `hpn_learner.` becomes `learner.`; a mismatch is reported in one line with the keys as the
file names them. Load the folder with `relzoo.AutoModelForFewShotSegmentation.from_pretrained(folder)`.
"""
import argparse

from relzoo.hub import HSNET_BACKBONES, convert_official_hsnet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--backbone", required=True, choices=HSNET_BACKBONES)
    parser.add_argument("--checkpoint", required=True, help="official best_model.pt")
    parser.add_argument("--output", required=True, help="folder to write (written atomically)")
    parser.add_argument("--unmasked", action="store_true", help="the paper's dagger checkpoints (no support masking)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        folder = convert_official_hsnet(args.checkpoint, args.backbone, args.output, overwrite=args.overwrite,
                                        use_support_mask=not args.unmasked)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
