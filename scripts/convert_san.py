#!/usr/bin/env python
"""Convert an official SAN checkpoint (hszhao/SAN `model_best.pth`) into a Hub-ready transformers/timm folder.

    python scripts/convert_san.py --variant san10_patch --checkpoint model_best.pth --output san10_patch.in1k

The checkpoint is read with `torch.load(weights_only=True)`; keys are renamed (`module.conv_in.` -> `stem.conv.`,
`module.layer{s}.{b}.` -> `stages.{s}.blocks.{b}.`, ...; see relzoo/models/san.py) and loaded strictly. The folder
holds config.json, model.safetensors, preprocessor_config.json and a model card; load it with
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
    parser.add_argument("--output", required=True, help="folder to write (replaced atomically)")
    args = parser.parse_args(argv)
    folder = convert_official_san(args.checkpoint, args.variant, args.output)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
