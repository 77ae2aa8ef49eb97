#!/usr/bin/env python
"""Convert an official checkpoint into a Hub-ready folder (config.json for timm and transformers, model.safetensors,
preprocessor config, model card, remote code), the one entry point for every family with released weights.

    python scripts/convert.py san --architecture san10_patch --checkpoint model_best.pth --output san10_patch.in1k
    python scripts/convert.py hsnet --backbone resnet50 --checkpoint best_model.pt --output hsnet-resnet50-fold0

One sub-command per family whose hub module (relzoo/models/<family>_hub.py) declares a converter; `--help` after a
sub-command lists its options. Every file is read with `torch.load(weights_only=True)` (a file holding pickled code
is refused, never run) and loaded strictly: a mismatch is reported in one line, with the keys as the file names
them and the expected and found shapes. An existing non-empty --output is kept unless --overwrite.
CrossTransformers' released checkpoints are TensorFlow files and API-Net / BatchFormer have none recorded in the
briefs, so they have no converter. Publish the folder with
`python scripts/push_to_hub.py --folder OUTPUT --repo-id ORG/NAME`.
"""
import argparse

from relzoo.registry import families


def main(argv=None) -> None:
    import relzoo  # noqa: F401  (registers the families)

    converters = {f.name: f.converter for f in families() if f.converter is not None}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{" + ",".join(c.command for c in converters.values()) + "}")
    by_command = {}
    for converter in converters.values():
        sub = commands.add_parser(converter.command, help=converter.source)
        converter.add_arguments(sub)
        sub.add_argument("--checkpoint", required=True, help="the official checkpoint file")
        sub.add_argument("--output", required=True, help="folder to write (written atomically)")
        sub.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
        by_command[converter.command] = converter
    args = parser.parse_args(argv)
    try:
        folder = by_command[args.command].convert(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
