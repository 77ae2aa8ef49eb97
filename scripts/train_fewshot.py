"""Episodic few-shot training and evaluation: CrossTransformers or ProtoNet on any timm backbone, SimCLR episodes.

    python scripts/train_fewshot.py                                   # the built-in benchmark (see --help)
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        scripts/train_fewshot.py --model protonet                     # 2 processes (CPU or GPU)

Exit status 2: bad arguments (one line naming the argument); 1: a run that cannot continue (unreadable image,
another run's checkpoints).
"""
from transformers import HfArgumentParser

from relzoo.data import UnreadableImageError
from relzoo.train.checkpoints import RunMismatchError
from relzoo.train.fewshot import FewShotTrainingArguments, train_fewshot


def main(argv=None) -> dict:
    parser = HfArgumentParser(FewShotTrainingArguments)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a bad argument value: one line, as argparse reports a bad type
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        return train_fewshot(args)
    except (UnreadableImageError, RunMismatchError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
