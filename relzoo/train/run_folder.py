"""One run owns its output folder.

Before a training run loads anything, :func:`claim_output_dir` makes sure that its ``output_dir`` can be written
and belongs to it alone:

* an exclusive lock file ``output_dir/.relzoo-run.lock`` (created with ``O_EXCL``) holds the pid, host, start time
  and command of the run that owns the folder; a second run refuses in one line naming the holder; the lock of a
  process that is gone (same host) is taken over with a message; the lock is removed when the run ends;
* ``output_dir`` that is a file, or that cannot be written, is refused before the first step (the lock file is the
  write test);
* a previous run's results in ``output_dir`` (``results.json``, ``checkpoints/``, ``model/``) are kept: a new run
  there is refused unless ``--resume`` (continue it) or ``--overwrite`` (its outputs are removed first, so nothing
  of two runs mixes).

In a multi-process run the main process decides and every process gets the same answer.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from ..fileio import pid_alive

LOCK = ".relzoo-run.lock"
#: what a run writes into its output_dir: a previous run is recognised by these, and --overwrite removes them
RUN_OUTPUTS = ("results.json", "checkpoints", "model", "backbone", "attention", "pictures")
#: what --resume continues from: the run's checkpoints, or HSNet's backbone pretraining stage (its own checkpoints)
RESUMABLE = ("checkpoints", "backbone")


class RunFolderError(RuntimeError):
    """``output_dir`` cannot be used by this run (held by another run, a previous run's results, not writable)."""


def _holder_text(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('command', '?')})")


def _take_lock(folder: Path, log) -> Path:
    lock = folder / LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == mine["host"] and isinstance(holder.get("pid"), int) \
                    and not pid_alive(holder["pid"]):
                log(f"output_dir {str(folder)!r}: taking over the lock of a run that is no longer running "
                    f"({_holder_text(holder)})")
                lock.unlink(missing_ok=True)
                continue
            if not holder:   # being written this instant, or damaged: say so rather than guess
                raise RunFolderError(f"`output_dir` {str(folder)!r} is locked by {str(lock)!r}, which cannot be read;"
                                     " if no run uses the folder, delete that file") from None
            where = "" if holder.get("host") == mine["host"] else \
                " (another host: if that run is gone, delete the lock file)"
            raise RunFolderError(f"`output_dir` {str(folder)!r} is in use by another run: {_holder_text(holder)}"
                                 f"{where}; wait for it to end or choose another output folder") from None
        except PermissionError as err:
            raise RunFolderError(f"`output_dir` {str(folder)!r} cannot be written ({err.strerror}); choose a "
                                 "folder you can write to") from None
        except OSError as err:
            why = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or str(err)
            raise RunFolderError(f"`output_dir` {str(folder)!r} cannot be written ({why})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        return lock
    raise RunFolderError(f"`output_dir` {str(folder)!r}: could not take the lock {str(lock)!r}")


def _previous_run(folder: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (folder / name).exists()
            and not ((folder / name).is_dir() and not any((folder / name).iterdir()))]


def _claim(folder: Path, resume: bool, overwrite: bool, log) -> Path:
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"`output_dir` {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"`output_dir` {str(folder)!r} cannot be created ({err.strerror})") from None
    lock = _take_lock(folder, log)
    try:
        found = _previous_run(folder)
        if found and resume and not set(found) & set(RESUMABLE) and not overwrite:
            raise RunFolderError(f"`output_dir` {str(folder)!r} holds a previous run ({', '.join(found)}) but no "
                                 "checkpoint to resume from: pass --overwrite to replace it, or choose another folder")
        if found and not resume:
            if not overwrite:
                raise RunFolderError(f"`output_dir` {str(folder)!r} holds a previous run ({', '.join(found)}): pass "
                                     "--resume to continue it or --overwrite to replace it, or choose another folder")
            for name in found:
                path = folder / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            log(f"--overwrite: removed the previous run's {', '.join(found)} from {str(folder)!r}")
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return lock


@contextlib.contextmanager
def claim_output_dir(output_dir: str | os.PathLike, accelerator, *, resume: bool = False, overwrite: bool = False):
    """Hold ``output_dir`` for the duration of a run (see the module doc); raises :class:`RunFolderError` on every
    process when it cannot be used."""
    folder = Path(output_dir)
    outcome: list = [None]
    lock = None
    if accelerator.is_main_process:
        try:
            lock = _claim(folder, resume, overwrite, accelerator.print)
        except RunFolderError as err:
            outcome[0] = str(err)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome)
    if outcome[0] is not None:
        raise RunFolderError(outcome[0])
    try:
        yield folder
    finally:
        if lock is not None:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(lock.read_text()).get("pid") == os.getpid():
                    lock.unlink()
