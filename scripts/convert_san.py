#!/usr/bin/env python
"""Convert an official SAN checkpoint (hszhao/SAN `model_best.pth`) into a Hub-ready transformers/timm folder.

    python scripts/convert_san.py --variant san10_patch --checkpoint model_best.pth --output san10_patch.in1k

The checkpoint is read with `torch.load(weights_only=True)` (a file holding pickled code is refused); keys are
renamed (`module.conv_in.` -> `stem.conv.`, `module.layer{s}.{b}.` -> `stages.{s}.blocks.{b}.`, ...; see
relzoo/models/san.py) and loaded strictly; a mismatch is reported in one line, with the keys as the file names them
and the expected and found shapes. An existing non-empty --output is kept unless --overwrite. The folder holds
config.json, model.safetensors, preprocessor_config.json and a model card; load it with
`SANForImageClassification.from_pretrained(folder)` or
`timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=dict(file=folder + "/model.safetensors"))`.
"""
import argparse

from relzoo.hub import convert_official_san
from relzoo.models.san import SAN_VARIANTS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--variant", required=True, choices=sorted(SAN_VARIANTS))
    parser.add_argument("--checkpoint", required=True, help="official .pth file")
    parser.add_argument("--output", required=True, help="folder to write (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        folder = convert_official_san(args.checkpoint, args.variant, args.output, overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
