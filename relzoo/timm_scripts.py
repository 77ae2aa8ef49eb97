"""Run one of timm's own scripts (``train.py``, ``validate.py``, ``benchmark.py``, ``onnx_export.py`` from a
pytorch-image-models checkout; they are not part of the ``timm`` package) with relzoo's models registered.

    python -m relzoo.timm_scripts path/to/pytorch-image-models/benchmark.py --model san10_patch --device cpu

The script runs as ``__main__`` with exactly the arguments given after its path, after ``import relzoo`` has
registered every relzoo architecture with timm; nothing else changes.
"""
from __future__ import annotations

import os
import runpy
import sys

__all__ = ["run_script"]


def run_script(path: str, argv: list[str]) -> None:
    """``import relzoo``, then run the timm script at ``path`` as ``__main__`` with ``argv`` as its arguments."""
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise SystemExit(f"relzoo.timm_scripts: error: the script must be an existing .py file of a "
                         f"pytorch-image-models checkout (train.py, validate.py, benchmark.py, ...), got {path!r}")
    import relzoo  # noqa: F401  (registers the relzoo architectures with timm)

    sys.argv = [path, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # as `python path/to/script.py` would
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    run_script(sys.argv[1], sys.argv[2:])
