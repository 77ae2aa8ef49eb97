#!/usr/bin/env python
"""Train any timm model (relzoo's SAN included) on a built-in dataset, an imagefolder or a saved HF dataset.

    python scripts/train_classifier.py --model san10_patch --dataset fashion_mnist --max_steps 60
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        scripts/train_classifier.py --model san10_patch --dataset digits        # 2 CPU processes (gloo DDP)

Writes OUTPUT_DIR/model (Hub-ready: weights, config, image processor, model card), OUTPUT_DIR/results.json and,
with --checkpoint_every N, resumable checkpoints under OUTPUT_DIR/checkpoints (--resume continues).
"""
from transformers import HfArgumentParser

from relzoo.data import UnreadableImageError
from relzoo.train import ClassifierTrainingArguments, train_classifier
from relzoo.train.checkpoints import RunMismatchError


def main(argv=None) -> dict:
    parser = HfArgumentParser(ClassifierTrainingArguments)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a bad argument value: one line, as argparse reports a bad type
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        return train_classifier(args)
    except (UnreadableImageError, RunMismatchError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
