#!/usr/bin/env python
"""Train any timm model (relzoo's SAN included) on a built-in dataset, an imagefolder or a saved HF dataset.

    python scripts/train_classifier.py --model san10_patch --dataset fashion_mnist --max_steps 60
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        scripts/train_classifier.py --model san10_patch --dataset digits        # 2 CPU processes (gloo DDP)

Writes OUTPUT_DIR/model (Hub-ready: weights, config, image processor, model card), OUTPUT_DIR/results.json and,
with --checkpoint_every N, resumable checkpoints under OUTPUT_DIR/checkpoints (--resume continues).
"""
from transformers import HfArgumentParser

from relzoo.train import ClassifierTrainingArguments, train_classifier


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(ClassifierTrainingArguments).parse_args_into_dataclasses(args=argv)
    return train_classifier(args)


if __name__ == "__main__":
    main()
