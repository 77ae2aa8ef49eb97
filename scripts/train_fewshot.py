"""Episodic few-shot training and evaluation: CrossTransformers or ProtoNet on any timm backbone, SimCLR episodes.

    python scripts/train_fewshot.py                                   # the built-in benchmark (see --help)
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        scripts/train_fewshot.py --model protonet                     # 2 processes (CPU or GPU)

Exit status 2: bad arguments (one line naming the argument); 1: a run that cannot continue (unreadable image,
another run's checkpoints).
"""
from relzoo.train.cli import run_script
from relzoo.train.fewshot import FewShotTrainingArguments, train_fewshot


def main(argv=None) -> dict:
    return run_script(FewShotTrainingArguments, train_fewshot, argv)


if __name__ == "__main__":
    main()
