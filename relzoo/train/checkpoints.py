"""Resumable training checkpoints shared by every relzoo training script.

A checkpoint is a folder ``step_<N>`` holding Accelerate's ``save_state`` output (model, optimizer, scheduler, each
process's RNG, registered objects such as the step counter), ``run.json`` (what identifies the run: model, data,
batch layout) and ``checksums.json`` over every file. It is written under a temporary name and renamed into place
once complete, so a crash never leaves a half-written ``step_<N>``.

Resume takes the newest checkpoint whose files are all present and intact; a damaged one is named, with the file
at fault, and the previous one is used instead. A checkpoint written by a different run (another model or data)
stops the resume with one line saying what differs, before anything is loaded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..checksums import ChecksumError, verify_checksums, write_checksums

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
RUN_FILE = "run.json"


class RunMismatchError(ValueError):
    """``--resume`` found checkpoints of another run (different model, data or batch layout)."""


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


class CheckpointManager:
    """Save and resume checkpoints of one run.

    Args:
        accelerator: the run's ``Accelerator`` (objects to save are those it prepared or registered).
        checkpoint_dir: folder holding ``step_<N>`` checkpoints.
        run: what identifies the run (JSON-able dict): resuming from checkpoints with other values is refused.
        keep: how many checkpoints to keep (the oldest are deleted after each save).
        log: where messages go (``accelerator.print`` by default).
    """

    def __init__(self, accelerator, checkpoint_dir: str | os.PathLike, run: dict, keep: int = 2, log=None):
        if keep < 1:
            raise ValueError(f"`keep_checkpoints` must be >= 1, got {keep}")
        self.accelerator, self.dir, self.run, self.keep = accelerator, Path(checkpoint_dir), _jsonable(run), keep
        self.log = log or accelerator.print

    def save(self, step: int) -> Path:
        acc = self.accelerator
        final, tmp = self.dir / f"step_{step:08d}", self.dir / f".tmp-step_{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()  # every process's files are in tmp
        if acc.is_main_process:
            (tmp / RUN_FILE).write_text(json.dumps({"step": step, "run": self.run}, indent=2))
            write_checksums(tmp, every_file=True)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in list_checkpoints(self.dir)[self.keep:]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

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
        diff = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in self.run.items() if saved.get(k) != v]
        if diff:
            raise RunMismatchError(
                f"--resume: the checkpoints in {str(self.dir)!r} belong to another run ({'; '.join(diff)}); resume "
                "with the same settings, or choose another output folder to start a new run")
        return None

    def resume(self) -> Path | None:
        """Load the newest usable checkpoint into the prepared objects and return it; ``None`` when there is no
        checkpoint at all. Damaged checkpoints are reported and passed over; if none is usable this raises, rather
        than silently starting again over the old run's folder."""
        found = list_checkpoints(self.dir)
        reasons = []
        for checkpoint in found:
            why = self.problem(checkpoint)
            if why is None:
                try:
                    self.accelerator.load_state(str(checkpoint))
                    return checkpoint
                except Exception as err:  # intact files that still do not load (e.g. written by another version)
                    why = f"{checkpoint.name} does not load: {type(err).__name__}: {str(err).splitlines()[0]}"
            reasons.append(why)
            self.log(f"--resume: skipping checkpoint {checkpoint.name}: {why}")
        if found:
            raise RuntimeError(f"--resume: none of the {len(found)} checkpoints in {str(self.dir)!r} is usable "
                               f"({' | '.join(reasons)}); delete them to start again")
        return None
