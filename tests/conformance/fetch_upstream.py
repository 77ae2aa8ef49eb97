#!/usr/bin/env python
"""Fetch the test suites of the *installed* timm and transformers from their source distributions on PyPI.

    python tests/conformance/fetch_upstream.py [--dest .venv/upstream]

Run once at install time (``make install`` does it); the tests themselves never touch the network. For each
package it runs ``pip download <pkg>==<installed version> --no-binary :all: --no-deps`` and extracts only the
``<pkg>-<version>/tests/`` folder to ``DEST/<pkg>-<version>/tests``. Nothing of these suites is kept in the
repository: ``tests/conformance`` imports them from DEST (``RELZOO_UPSTREAM_DIR`` overrides the location).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

PACKAGES = ("timm", "transformers")
DEFAULT_DEST = Path(sys.prefix) / "upstream"  # inside the virtualenv: goes away with it


def fetch(package: str, dest: Path) -> Path:
    """Extract ``<package>-<installed version>/tests`` under ``dest``; returns that folder (kept if present)."""
    ver = version(package)
    target = dest / f"{package}-{ver}" / "tests"
    if not (target.is_dir() and any(target.glob("test_*.py"))):
        _download_tests(package, ver, target)
    # transformers' sdist leaves out tests/__init__.py, an empty file in its repository that
    # test_configuration_common.py executes through `direct_transformers_import(tests_dir)`
    (target / "__init__.py").touch(exist_ok=True)
    return target


def _download_tests(package: str, ver: str, target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        "--dest", tmp, f"{package}=={ver}"], check=True)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if len(archives) != 1:
            raise SystemExit(f"expected one source archive of {package}=={ver}, got {[a.name for a in archives]}")
        prefix = f"{archives[0].name[: -len('.tar.gz')]}/tests/"
        staging = Path(tempfile.mkdtemp(dir=target.parent.parent))
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            if not any(m.name.endswith(".py") for m in members):
                raise SystemExit(f"the source archive of {package}=={ver} holds no tests/ folder")
            tar.extractall(staging, members=members, filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / prefix).rename(target)
        shutil.rmtree(staging)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"where to extract (default {DEFAULT_DEST})")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        print(f"{package}: {fetch(package, args.dest)}")


if __name__ == "__main__":
    main()
