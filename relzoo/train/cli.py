"""What every training script's ``main`` does: parse its argument dataclass, run, and turn the expected failures into
one line and an exit status (2: a bad argument; 1: a run that cannot continue)."""
from __future__ import annotations


def run_script(arguments_class, train_fn, argv=None) -> dict:
    """Parse ``argv`` into ``arguments_class`` (validated on construction) and call ``train_fn`` with it."""
    from transformers import HfArgumentParser

    from ..data import UnreadableImageError
    from .checkpoints import CheckpointWriteError, RunMismatchError
    from .engine import BadArgumentError, TrainingDivergedError
    from .run_folder import RunFolderError

    parser = HfArgumentParser(arguments_class)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a bad argument value: one line, as argparse reports a bad type
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        return train_fn(args)
    except (BadArgumentError, RunFolderError) as err:   # an argument that does not fit the data, model or folder
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except (UnreadableImageError, RunMismatchError, CheckpointWriteError, TrainingDivergedError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
