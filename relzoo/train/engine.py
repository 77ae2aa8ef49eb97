"""The one Accelerate training loop every relzoo task uses (classification, few-shot episodes, segmentation).

A task supplies its prepared model, optimizer, scheduler and dataloader, and a ``step_fn(batch) -> loss``; the
engine runs the loop: epochs and ``set_epoch`` on whatever needs it, ``skip_first_batches`` after a resume,
backward, an optional gradient transform, optimizer and scheduler steps, the progress bar and loss logging, atomic
checksummed checkpoints every ``checkpoint_every`` steps (:mod:`relzoo.train.checkpoints`), exact resume,
``stop_after_steps`` (quit as if killed, to test resume) and, at the end, running statistics averaged over processes
(:func:`average_buffers`) so that every process holds the same model. Evaluation stays with the task.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..fileio import write_json_atomic
from .checkpoints import CheckpointManager

__all__ = ["MAX_IMAGE_SIZE", "NOT_TRAINING_ARGUMENTS", "BadArgumentError", "TrainState", "TrainingDivergedError",
           "TrainingEngine", "argument_check", "average_buffers", "check_image_size", "make_accelerator",
           "replicas_in_sync", "report_skipped", "run_identity", "write_json_atomic"]


class BadArgumentError(ValueError):
    """An argument that cannot work with the data or the model, found before training starts (scripts: exit 2)."""


@contextlib.contextmanager
def argument_check(args, *names: str):
    """Turn what building a dataset, a sampler or a model raises for a bad argument (torch's, timm's, datasets' own
    errors: ``RuntimeError: Unknown model``, a bare ``AssertionError``, a ``TypeError`` for an unknown keyword) into
    one :class:`BadArgumentError` naming the arguments involved (``names``, fields of ``args``) and their values.
    Unreadable images are not argument errors and pass through."""
    from ..data import UnreadableImageError

    try:
        yield
    except (BadArgumentError, UnreadableImageError):
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError, KeyError, IndexError, FileNotFoundError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if not text:
            what = f"{type(err).__name__} (the library gave no message)"
        else:
            what = text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"
        if names and f"`{names[0]}`" in what:
            raise BadArgumentError(what) from None
        named = ", ".join(f"`{n}` {getattr(args, n, None)!r}" for n in names)
        raise BadArgumentError(f"{named}: {what}") from None


class TrainingDivergedError(RuntimeError):
    """The loss, the weights or a training batch became non-finite (NaN or infinity); the run stops, nothing saved."""


def non_finite_inputs(batch) -> list[str]:
    """Names of the floating-point tensors of a batch (a tensor, or a dict / list / tuple of them) that hold a NaN
    or an infinity."""
    if isinstance(batch, torch.Tensor):
        return ["batch"] if batch.is_floating_point() and not bool(torch.isfinite(batch).all()) else []
    items = batch.items() if isinstance(batch, dict) else enumerate(batch) if isinstance(batch, (list, tuple)) else ()
    return [str(k) for k, v in items if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def non_finite_tensors(model) -> list[str]:
    """Names of the parameters and floating-point buffers of ``model`` that hold a NaN or an infinity."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _anywhere(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (every process gets the same answer)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


class TrainState:
    """Step counter saved with every checkpoint (``state.json``)."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def make_accelerator(cpu: bool = False, mixed_precision: str = "no"):
    """An ``Accelerator`` on the GPU when there is one (else, or with ``cpu=True``, on CPU processes), seedable data
    order, schedulers stepped once per optimizer step; refuses a launch whose process count Accelerate did not
    honour (``accelerate launch --cpu --num_processes 2`` silently runs one process)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available(), mixed_precision=mixed_precision,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                              step_scheduler_with_optimizer=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != world:
        raise RuntimeError(f"launched as {world} processes but Accelerate runs {accelerator.num_processes}: on CPU use "
                           "`accelerate launch --multi_gpu --num_processes N ...` (the scripts pass cpu=True)")
    return accelerator


#: arguments that cannot change what a run trains: where it writes, how often it logs or checkpoints
NOT_TRAINING_ARGUMENTS = frozenset({"output_dir", "resume", "overwrite", "checkpoint_every", "keep_checkpoints",
                                    "stop_after_steps", "log_every", "num_workers", "save_model"})


MAX_IMAGE_SIZE = 4096


def check_image_size(image_size: int, images_per_step: int, channels: int = 3) -> None:
    """Refuse an ``image_size`` that cannot fit before anything is allocated: above :data:`MAX_IMAGE_SIZE`, or one
    step's input images alone (float32) taking more than half of this machine's memory."""
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"`image_size` must be at most {MAX_IMAGE_SIZE}, got {image_size}")
    need = images_per_step * channels * image_size ** 2 * 4
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > memory / 2:
        raise ValueError(f"`image_size` {image_size} cannot fit: one step's {images_per_step} input images alone take "
                         f"{need / 2**30:.1f} GiB, this machine has {memory / 2**30:.1f} GiB")


def run_identity(args, accelerator, ignore: Iterable[str] = (), **extra) -> dict:
    """What identifies a run in its checkpoints: every field of the arguments dataclass ``args`` that can change the
    trained weights (all but :data:`NOT_TRAINING_ARGUMENTS` and the task's evaluation-only ``ignore``), the process
    count and ``extra`` derived values. ``--resume`` refuses checkpoints whose identity differs."""
    import dataclasses

    skip = NOT_TRAINING_ARGUMENTS | set(ignore)
    identity = {k: v for k, v in dataclasses.asdict(args).items() if k not in skip}
    return {**identity, "num_processes": accelerator.num_processes, **extra}


def replicas_in_sync(model, accelerator) -> bool:
    """Whether every process holds bit-identical parameters and buffers (a float64 checksum gathered from all)."""
    net = accelerator.unwrap_model(model)
    tensors = list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]
    local = torch.stack([t.detach().double().sum() for t in tensors] + [torch.zeros((), dtype=torch.float64)])
    gathered = accelerator.gather(local.to(accelerator.device)[None]).view(accelerator.num_processes, -1)
    return bool((gathered == gathered[0]).all().item())


def average_buffers(model, accelerator) -> None:
    """Average every floating-point buffer (BatchNorm running statistics) over processes, so that all ranks hold the
    same model: each rank updates running statistics from its own batches, and DDP only copies rank 0's buffers at
    the start of the next forward pass."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import reduce

    net = accelerator.unwrap_model(model)
    with torch.no_grad():
        for buffer in net.buffers():
            if buffer.is_floating_point():
                buffer.copy_(reduce(buffer, reduction="mean"))


class TrainingEngine:
    """Run ``total_steps`` optimizer steps of a task.

    Args:
        accelerator: the run's ``Accelerator``; ``model``, ``optimizer`` and ``dataloader`` are already prepared.
        model, optimizer, scheduler, dataloader: the task's objects (the scheduler is stepped once per step).
        output_dir: checkpoints go to ``output_dir/checkpoints``.
        run: what identifies the run (resuming another run's checkpoints is refused).
        total_steps: optimizer steps of the whole run.
        log_every, checkpoint_every, keep_checkpoints, stop_after_steps: see the scripts' arguments.
        epoch_hooks: objects with ``set_epoch(epoch)`` called at the start of every epoch (samplers, datasets);
            the dataloader's own ``set_epoch`` is always called.
        grad_transform: called with the unwrapped model after backward and before the optimizer step (e.g. gradient
            normalisation).
        desc: progress bar label.
    """

    def __init__(self, accelerator, model, optimizer, scheduler, dataloader, output_dir: str | os.PathLike, run: dict,
                 total_steps: int, log_every: int = 10, checkpoint_every: int = 0, keep_checkpoints: int = 2,
                 stop_after_steps: int | None = None, epoch_hooks: Iterable = (),
                 grad_transform: Callable | None = None, desc: str = "train"):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.dataloader, self.total_steps, self.log_every = dataloader, total_steps, log_every
        self.checkpoint_every, self.stop_after_steps, self.desc = checkpoint_every, stop_after_steps, desc
        self.epoch_hooks, self.grad_transform = list(epoch_hooks), grad_transform
        self.steps_per_epoch = len(dataloader)
        if self.steps_per_epoch == 0:
            raise ValueError("the training dataloader is empty on this process (fewer batches than processes?)")
        self.state = TrainState()
        self.checkpoints = CheckpointManager(accelerator, Path(output_dir) / "checkpoints", run, model, optimizer,
                                             scheduler, self.state, keep=keep_checkpoints)
        self.resumed_from: int | None = None
        self.last_loss = float("nan")

    @property
    def step(self) -> int:
        return self.state.step

    def resume(self) -> Path | None:
        """Load the newest intact checkpoint (see :class:`CheckpointManager`); ``None`` when there is none."""
        ckpt = self.checkpoints.resume()
        if ckpt is None:
            self.accelerator.print(f"--resume: no checkpoint in {self.checkpoints.dir}, starting from scratch")
        else:
            self.resumed_from = self.state.step
            self.accelerator.print(f"resumed from {ckpt} at step {self.state.step}")
        return ckpt

    def fit(self, step_fn: Callable) -> dict:
        """Train until ``total_steps`` (or ``stop_after_steps``). ``step_fn(batch) -> loss`` runs the forward pass
        (the engine calls ``model.train()`` first). Returns a summary dict."""
        from tqdm.auto import tqdm

        acc, state = self.accelerator, self.state
        start = time.time()
        bar = tqdm(total=self.total_steps, initial=state.step, disable=not acc.is_main_process, desc=self.desc)
        interrupted = False
        while state.step < self.total_steps and not interrupted:
            epoch, skip = divmod(state.step, self.steps_per_epoch)
            for obj in [self.dataloader, *self.epoch_hooks]:
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            loader = acc.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            self.model.train()
            for batch in loader:
                bad = non_finite_inputs(batch)
                if _anywhere(acc, bool(bad)):   # before the forward pass: BatchNorm statistics stay clean
                    raise TrainingDivergedError(
                        f"the training batch of step {state.step + 1} holds NaN or infinite values"
                        f"{' in ' + ', '.join(bad) if bad else ' (on another process)'}: the data has non-finite "
                        "pixels; training stopped before they reached the model, nothing was saved")
                loss = step_fn(batch)
                if _anywhere(acc, not bool(torch.isfinite(loss.detach()).all())):
                    raise TrainingDivergedError(
                        f"the training loss became {float(loss.detach().float().mean()):g} at step {state.step + 1} "
                        f"(learning rate {self.scheduler.get_last_lr()[0]:g}): the run diverged; training stopped, "
                        "nothing was saved (lower the learning rate)")
                self.optimizer.zero_grad(set_to_none=True)
                acc.backward(loss)
                if self.grad_transform is not None:
                    self.grad_transform(acc.unwrap_model(self.model))
                self.optimizer.step()
                self.scheduler.step()
                state.step += 1
                bar.update(1)
                if state.step % self.log_every == 0 or state.step == self.total_steps:
                    self.last_loss = acc.gather(loss.detach().float()[None]).mean().item()
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.4g}",
                                    epoch=epoch)
                if self.checkpoint_every and state.step % self.checkpoint_every == 0:
                    self.checkpoints.save(state.step)
                if self.stop_after_steps is not None and state.step >= self.stop_after_steps:
                    interrupted = True
                    break
                if state.step >= self.total_steps:
                    break
        bar.close()
        average_buffers(self.model, acc)
        broken = non_finite_tensors(acc.unwrap_model(self.model))
        if _anywhere(acc, bool(broken)):
            raise TrainingDivergedError(f"after {state.step} steps the weights hold NaN or infinite values "
                                        f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): the run "
                                        "diverged; nothing was saved (lower the learning rate)")
        summary = {"steps": state.step, "train_time_s": round(time.time() - start, 1),
                   "num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
                   "last_train_loss": self.last_loss, "resumed_from_step": self.resumed_from}
        if interrupted:
            summary["interrupted"] = True
        return summary


def report_skipped(skipped: set, accelerator) -> list[str]:
    """Every process's unreadable images, merged, printed once with their count; returns the sorted list."""
    from accelerate.utils import gather_object

    merged = sorted(set(gather_object(sorted(skipped))))
    if merged:
        shown = ", ".join(merged[:10]) + (", ..." if len(merged) > 10 else "")
        accelerator.print(f"skipped {len(merged)} unreadable image(s) (--skip_unreadable_images): {shown}")
    return merged
