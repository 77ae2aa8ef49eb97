"""Resumable training checkpoints shared by every relzoo training script.

A checkpoint is a folder ``step_<N>`` holding the run's state in formats that hold data only, never code:

* ``model.safetensors``: the (unwrapped) model's tensors;
* ``optimizer.pt`` and ``scheduler.pt``: their ``state_dict()``s, read back with ``torch.load(weights_only=True)``,
  which refuses anything but tensors and plain Python values (a pickled object or a ``__reduce__`` payload is an
  error, never executed);
* ``state.json``: the engine's step counter;
* ``rng_<rank>.json`` and ``rng_<rank>.safetensors``: every process's Python, NumPy and torch random states;
* ``run.json``: what identifies the run (every argument that changes the trained weights), and ``checksums.json``
  over every file.

It is written under a temporary name unique to the run's main process and renamed into place once complete, so a
crash never leaves a half-written ``step_<N>``; a failed write (a full disk) removes its temporary folder and says
what happened. Files of other formats (Accelerate's ``*.pkl``, ``*.bin``) are never read, whatever the manifest says.

Resume takes the newest checkpoint whose files are all present and intact; a damaged one is named, with the file
at fault, and the previous one is used instead. A checkpoint written by a different run (another model, data or
optimiser setting) stops the resume with one line saying what differs, before anything is loaded. Retention
deletes only older checkpoints of the same run.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checksums import ChecksumError, verify_checksums, write_checksums
from ..fileio import load_checkpoint_safely

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
RUN_FILE = "run.json"
PARTS = ("model.safetensors", "optimizer.pt", "scheduler.pt", "state.json")


class RunMismatchError(ValueError):
    """``--resume`` found checkpoints of another run (different model, data, batch layout or optimiser settings)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a folder that became unwritable); nothing partial is left."""


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (``step_<N>``), newest first; temporary folders of interrupted saves are ignored."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint folder, or ``None``."""
    found = list_checkpoints(checkpoint_dir)
    return found[0] if found else None


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's random states: the JSON-able part (Python, NumPy) and the tensors (torch CPU, CUDA)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return plain, tensors


def set_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = plain["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class CheckpointManager:
    """Save and resume checkpoints of one run.

    Args:
        accelerator: the run's ``Accelerator``.
        checkpoint_dir: folder holding ``step_<N>`` checkpoints.
        run: what identifies the run (JSON-able dict): resuming from checkpoints with other values is refused.
        model, optimizer, scheduler: the run's prepared objects (the model is saved unwrapped).
        state: an object with ``state_dict()`` / ``load_state_dict()`` of JSON-able values (the step counter).
        keep: how many checkpoints of this run to keep (the oldest are deleted after each save).
        log: where messages go (``accelerator.print`` by default).
    """

    def __init__(self, accelerator, checkpoint_dir: str | os.PathLike, run: dict, model, optimizer, scheduler,
                 state, keep: int = 2, log=None):
        if keep < 1:
            raise ValueError(f"`keep_checkpoints` must be >= 1, got {keep}")
        self.accelerator, self.dir, self.run, self.keep = accelerator, Path(checkpoint_dir), _jsonable(run), keep
        self.model, self.optimizer, self.scheduler, self.state = model, optimizer, scheduler, state
        self.log = log or accelerator.print
        token = [f"{os.getpid()}-{secrets.token_hex(4)}"]
        if accelerator.num_processes > 1:  # one temporary name per run, shared by its processes
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(token)
        self.token = token[0]

    # -- saving -----------------------------------------------------------------------------------------------------
    def _agree(self, error: BaseException | None) -> str | None:
        """The first error message of any process (every process gets it), or ``None``."""
        message = None if error is None else f"{type(error).__name__}: {error}"
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            messages = [m for m in gather_object([message]) if m]
            return messages[0] if messages else None
        return message

    def _write_parts(self, tmp: Path) -> None:
        from safetensors.torch import save_file, save_model

        acc = self.accelerator
        plain, tensors = rng_state()
        (tmp / f"rng_{acc.process_index}.json").write_text(json.dumps(plain))
        save_file(tensors, tmp / f"rng_{acc.process_index}.safetensors")
        if acc.is_main_process:
            save_model(acc.unwrap_model(self.model), str(tmp / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps(self.state.state_dict()))

    def save(self, step: int) -> Path:
        """Write ``step_<step>`` atomically (see the module doc); returns its path."""
        acc = self.accelerator
        final, tmp = self.dir / f"step_{step:08d}", self.dir / f".tmp-step_{step:08d}-{self.token}"
        error = None
        if acc.is_main_process:
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            except OSError as err:
                error = err
        if self._agree(error) is None:
            try:
                self._write_parts(tmp)
            except Exception as err:
                error = err
        message = self._agree(error)
        if message is None and acc.is_main_process:
            try:
                (tmp / RUN_FILE).write_text(json.dumps({"step": step, "run": self.run}, indent=2))
                write_checksums(tmp, every_file=True)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            except OSError as err:
                error = err
        message = self._agree(error)
        if message is not None:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            disk_full = "No space left" in message or (isinstance(error, OSError) and error.errno == errno.ENOSPC)
            why = "the disk is full" if disk_full else message
            raise CheckpointWriteError(f"could not write checkpoint {final.name} in {str(self.dir)!r}: {why}; the "
                                       "partial checkpoint was removed, earlier checkpoints are intact (free space, "
                                       "then --resume)")
        if acc.is_main_process:
            self._retain()
        acc.wait_for_everyone()
        return final

    def _same_run(self, checkpoint: Path) -> bool:
        try:
            return json.loads((checkpoint / RUN_FILE).read_text())["run"] == self.run
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _retain(self) -> None:
        """Delete this run's checkpoints beyond the newest ``keep``; another run's are never touched."""
        mine = [p for p in list_checkpoints(self.dir) if self._same_run(p)]
        for old in mine[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)

    # -- resuming ---------------------------------------------------------------------------------------------------
    def problem(self, checkpoint: Path) -> str | None:
        """Why ``checkpoint`` cannot be resumed from (a missing or damaged file), or ``None``; raises
        :class:`RunMismatchError` when it is intact but belongs to another run."""
        try:
            verify_checksums(checkpoint, required=True)
            saved = json.loads((checkpoint / RUN_FILE).read_text())["run"]
        except ChecksumError as err:
            return str(err)
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"{str(checkpoint / RUN_FILE)!r} is unreadable ({type(err).__name__}: {err})"
        keys = list(self.run) + [k for k in saved if k not in self.run]
        diff = [f"{k}: {saved.get(k)!r} there, {self.run.get(k)!r} here" for k in keys if saved.get(k) != self.run.get(k)]
        if diff:
            raise RunMismatchError(
                f"--resume: the checkpoints in {str(self.dir)!r} belong to another run ({'; '.join(diff)}); resume "
                "with the same settings, or choose another output folder to start a new run")
        missing = [name for name in (*PARTS, f"rng_{self.accelerator.process_index}.json",
                                     f"rng_{self.accelerator.process_index}.safetensors")
                   if not (checkpoint / name).is_file()]
        if missing:
            return f"{checkpoint.name} has no {', '.join(missing)} (not a checkpoint of this relzoo version)"
        return None

    def _load(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file, load_model

        acc = self.accelerator
        state = json.loads((checkpoint / "state.json").read_text())
        optimizer = load_checkpoint_safely(checkpoint / "optimizer.pt", "optimizer state")
        scheduler = load_checkpoint_safely(checkpoint / "scheduler.pt", "scheduler state")
        plain = json.loads((checkpoint / f"rng_{acc.process_index}.json").read_text())
        tensors = load_file(checkpoint / f"rng_{acc.process_index}.safetensors")
        missing, unexpected = load_model(acc.unwrap_model(self.model), str(checkpoint / "model.safetensors"),
                                         strict=False, device=str(acc.device))
        if missing or unexpected:
            raise ValueError(f"model.safetensors does not fit the model: missing {sorted(missing)[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]}")
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        self.state.load_state_dict(state)
        set_rng_state(plain, tensors)

    def resume(self) -> Path | None:
        """Load the newest usable checkpoint into the run's objects and return it; ``None`` when there is no
        checkpoint at all. Damaged checkpoints are reported and passed over; if none is usable this raises, rather
        than silently starting again over the old run's folder."""
        found = list_checkpoints(self.dir)
        reasons = []
        for checkpoint in found:
            why = self.problem(checkpoint)
            if why is None:
                try:
                    self._load(checkpoint)
                    return checkpoint
                except Exception as err:  # intact files that still do not load
                    why = f"{checkpoint.name} does not load: {type(err).__name__}: {str(err).splitlines()[0]}"
            reasons.append(why)
            self.log(f"--resume: skipping checkpoint {checkpoint.name}: {why}")
        if found:
            raise RuntimeError(f"--resume: none of the {len(found)} checkpoints in {str(self.dir)!r} is usable "
                               f"({' | '.join(reasons)}); delete them to start again")
        return None
