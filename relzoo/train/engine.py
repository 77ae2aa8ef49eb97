"""The one Accelerate training loop every relzoo task uses (classification, few-shot episodes, segmentation).

A task supplies its prepared model, optimizer, scheduler and dataloader, and a ``step_fn(batch) -> loss``; the
engine runs the loop: epochs and ``set_epoch`` on whatever needs it, ``skip_first_batches`` after a resume,
backward, an optional gradient transform, optimizer and scheduler steps, the progress bar and loss logging, atomic
checksummed checkpoints every ``checkpoint_every`` steps (:mod:`relzoo.train.checkpoints`), exact resume,
``stop_after_steps`` (quit as if killed, to test resume) and, at the end, running statistics averaged over processes
(:func:`average_buffers`) so that every process holds the same model. Evaluation stays with the task.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .checkpoints import CheckpointManager

__all__ = ["TrainState", "TrainingEngine", "average_buffers", "make_accelerator", "replicas_in_sync", "report_skipped",
           "write_json_atomic"]


class TrainState:
    """Step counter saved with every checkpoint (``accelerate.register_for_checkpointing``)."""

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


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to a temporary file and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


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
        accelerator.register_for_checkpointing(scheduler, self.state)
        self.checkpoints = CheckpointManager(accelerator, Path(output_dir) / "checkpoints", run, keep=keep_checkpoints)
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
                loss = step_fn(batch)
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
