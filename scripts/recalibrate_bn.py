#!/usr/bin/env python
"""Re-estimate the BatchNorm running statistics of a timm checkpoint on training images, for evaluation after a
short run (timm's train.py + validate.py on SAN: validation logits near 1e28 after one epoch, while training
batches stay small; the weights are fine, the running averages are not).

    python scripts/recalibrate_bn.py --model san10_patch --checkpoint output/train/RUN/last.pth.tar \\
        --data-dir DATA --split train --num-classes 10 --img-size 128 --output recalibrated.safetensors
    python validate.py --model san10_patch --checkpoint recalibrated.safetensors --data-dir DATA ...  # timm's

The weights are unchanged: every BatchNorm's running mean and variance become the plain average over
``--batches`` batches of images sampled from the split, in eval-mode preprocessing (``torch.optim.swa_utils.update_bn``), which is what
their exponential averages tend to once training has settled. The output is a safetensors state dict (data only),
which timm's ``--checkpoint`` / ``checkpoint_path`` loads. Works on any timm model with BatchNorm, relzoo's or not.
"""
from __future__ import annotations

import argparse
import sys
from itertools import islice


def _parse_kwargs():
    from timm.utils import ParseKwargs  # timm's own parser of train.py's --model-kwargs

    return ParseKwargs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", required=True, help="timm model name (relzoo's are registered on import)")
    parser.add_argument("--checkpoint", required=True, help="timm checkpoint (train.py's .pth.tar, or safetensors)")
    parser.add_argument("--data-dir", required=True, help="image folder root (timm's create_dataset)")
    parser.add_argument("--split", default="train", help="split folder to estimate on (default: train)")
    parser.add_argument("--num-classes", type=int, default=None, help="as given to train.py")
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=_parse_kwargs(),
                        help="as given to train.py (key=value ...)")
    parser.add_argument("--img-size", type=int, default=None, help="as given to train.py")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=50, help="batches to average over (default 50)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="which images are sampled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    if not args.output.endswith(".safetensors"):
        parser.exit(2, f"{parser.prog}: error: --output must end with .safetensors, got {args.output!r}\n")
    if args.batches < 1 or args.batch_size < 2:
        parser.exit(2, f"{parser.prog}: error: --batches must be >= 1 and --batch-size >= 2, got {args.batches} and "
                       f"{args.batch_size}\n")

    from pathlib import Path

    if not Path(args.checkpoint).is_file():
        parser.exit(2, f"{parser.prog}: error: --checkpoint {args.checkpoint!r} does not exist\n")

    import timm
    import torch
    from safetensors.torch import save_file
    from timm.data import create_dataset, create_transform, resolve_data_config

    import relzoo  # noqa: F401  (registers relzoo's models with timm)

    try:
        model = timm.create_model(args.model, num_classes=args.num_classes, checkpoint_path=args.checkpoint,
                                  **args.model_kwargs)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: cannot load --checkpoint {args.checkpoint!r} into {args.model}: "
                       f"{(str(err).splitlines() or [type(err).__name__])[0]}\n")
    model.to(args.device)
    overrides = {"input_size": (model.pretrained_cfg.get("input_size", (3,))[0], args.img_size, args.img_size)} \
        if args.img_size else {}
    config = resolve_data_config(overrides, model=model)
    dataset = create_dataset("", root=args.data_dir, split=args.split, transform=create_transform(**config))
    # a random sample (seeded) of the split: an image folder lists its classes one after the other
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))
    batches = [images.to(args.device) for images, _ in islice(loader, args.batches)]
    if not batches:
        parser.exit(2, f"{parser.prog}: error: {args.data_dir}/{args.split} holds fewer than --batch-size "
                       f"({args.batch_size}) images\n")
    torch.optim.swa_utils.update_bn(batches, model)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, args.output)
    print(f"wrote {args.output}: BatchNorm statistics re-estimated on {sum(len(b) for b in batches)} images of "
          f"{args.data_dir}/{args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
