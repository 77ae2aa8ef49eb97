#!/usr/bin/env python
"""Train any timm model (relzoo's SAN included) on a built-in dataset, an imagefolder or a saved HF dataset.

    python scripts/train_classifier.py --model san10_patch --dataset fashion_mnist --max_steps 60
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        scripts/train_classifier.py --model san10_patch --dataset digits        # 2 CPU processes (gloo DDP)

Writes OUTPUT_DIR/model (Hub-ready: weights, config, image processor, model card), OUTPUT_DIR/results.json and,
with --checkpoint_every N, resumable checkpoints under OUTPUT_DIR/checkpoints (--resume continues).
"""
from relzoo.train import ClassifierTrainingArguments, train_classifier
from relzoo.train.cli import run_script


def main(argv=None) -> dict:
    return run_script(ClassifierTrainingArguments, train_classifier, argv)


if __name__ == "__main__":
    main()
