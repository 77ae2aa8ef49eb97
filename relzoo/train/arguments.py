"""The arguments every relzoo training run shares (where it writes, checkpoints and resume, seed, logging,
precision, device) and their checks; each task's arguments dataclass subclasses :class:`RunArguments`, as
transformers' task arguments subclass ``TrainingArguments``, and adds its own fields and checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

__all__ = ["RunArguments"]


@dataclass
class RunArguments:
    """Shared fields. Subclasses extend the class attributes ``INTEGER_BOUNDS`` (integer fields and their lower
    bounds), ``OPTIONAL_INTEGERS`` (those that may be ``None``, with what ``None`` means in the message) and
    ``CHOICES``, and put their other checks in :meth:`validate_task`. Everything is checked when the object is
    built, before any data is loaded."""
    output_dir: str = field(default="outputs/run", metadata={"help": "where everything goes"})
    checkpoint_every: int = field(default=0, metadata={"help": "save a resumable checkpoint every N steps (0: off)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many checkpoints to keep"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in output_dir"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a previous run's results and checkpoints in output_dir (else such a folder is refused)"})
    stop_after_steps: int | None = field(default=None, metadata={
        "help": "quit after this step as if killed (no evaluation, no final save); to test resume"})
    seed: int = field(default=0, metadata={"help": "seed for the weights, the data order and the augmentation"})
    log_every: int = field(default=10, metadata={"help": "log the loss every N steps"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers"})
    save_model: bool = field(default=True, metadata={"help": "write the Hub-ready folder output_dir/model"})
    mixed_precision: str = field(default="no", metadata={"help": "no or bf16 (autocast)"})
    cpu: bool = field(default=False, metadata={"help": "force the CPU even when a GPU is present"})

    INTEGER_BOUNDS: ClassVar[dict[str, int]] = {"checkpoint_every": 0, "keep_checkpoints": 1, "log_every": 1,
                                                "num_workers": 0, "stop_after_steps": 1}
    OPTIONAL_INTEGERS: ClassVar[dict[str, str]] = {"stop_after_steps": ""}
    CHOICES: ClassVar[dict[str, tuple]] = {"mixed_precision": ("no", "bf16")}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One ``ValueError`` naming the argument, what it must be and what it got: the shared checks, then the
        task's (:meth:`validate_task`)."""
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}")
        for name, low in self.INTEGER_BOUNDS.items():
            value = getattr(self, name)
            if value is None and name in self.OPTIONAL_INTEGERS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}{self.OPTIONAL_INTEGERS.get(name, '')}, got "
                                 f"{value!r}")
        self.validate_task()

    def validate_task(self) -> None:
        """The task's own checks (subclasses)."""
