"""HSNet fine-tuning and evaluation: 1-shot episodes on a frozen timm backbone, mIoU / FB-IoU on unseen classes.

    python scripts/finetune_hsnet.py                                  # the built-in benchmark (see --help)
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        scripts/finetune_hsnet.py                                     # 2 processes (CPU or GPU)

Exit status 2: bad arguments (one line naming the argument); 1: a run that cannot continue (another run's
checkpoints).
"""
from relzoo.train.cli import run_script
from relzoo.train.segmentation import SegmentationTrainingArguments, train_segmentation


def main(argv=None) -> dict:
    return run_script(SegmentationTrainingArguments, train_segmentation, argv)


if __name__ == "__main__":
    main()
