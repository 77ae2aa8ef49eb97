"""Loaded by every Python process the tests start (``tests/conftest.py`` puts this folder first on ``PYTHONPATH``),
and by the test process itself: opening a file under Debian's data folder (``/usr/share/datasets``, where
``dataset-fashion-mnist`` puts Fashion-MNIST) raises. A fresh machine has no such folder, so a test that reads it
would pass here and fail there; tests use the generated ``fashion_like`` fixture instead."""
import os
import sys

SYSTEM_DATA = "/usr/share/datasets"


def _refuse_system_data(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path == SYSTEM_DATA or path.startswith(SYSTEM_DATA + os.sep):
            raise PermissionError(f"a test read {path}: tests must not use Debian's data sets (a fresh machine lacks "
                                  "them); use the `fashion_like` fixture (RELZOO_FASHION_MNIST_DIR)")


if not getattr(sys, "_relzoo_data_guard", False):
    sys.addaudithook(_refuse_system_data)
    sys._relzoo_data_guard = True
