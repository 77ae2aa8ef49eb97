"""SHA-256 manifests for the folders relzoo writes, checked when they are read back.

A weights file with bytes overwritten in the middle still parses (safetensors only checks its header) and silently
gives a model with garbage weights. Every folder relzoo writes (Hub-ready model folders, converter output, training
checkpoints) therefore carries ``checksums.sha256``, in the format of coreutils' ``sha256sum`` (so
``sha256sum -c checksums.sha256`` checks it by hand too), and relzoo verifies it before loading:
``from_pretrained`` of relzoo models, ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` and
training resume.

Model folders list their tensor files only (so editing ``config.json`` or the model card stays possible);
checkpoints list every file they hold, since a resume needs all of them.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

MANIFEST = "checksums.sha256"
TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".npz")


class ChecksumError(ValueError):
    """A file listed in a folder's ``checksums.sha256`` is missing or does not hold what was written."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | os.PathLike, every_file: bool = False) -> Path:
    """Write ``folder/checksums.sha256`` over the folder's tensor files (``every_file``: over all its files, in
    subfolders too). Returns the manifest's path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
                   and (every_file or p.name.endswith(TENSOR_SUFFIXES)))
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text("".join(lines))
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def read_checksums(folder: str | os.PathLike) -> dict[str, str] | None:
    """``{relative path: sha256}`` from ``folder/checksums.sha256``; ``None`` when the folder has none."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return None
    entries = {}
    for number, line in enumerate(manifest.read_text(errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise ChecksumError(f"{str(manifest)!r} line {number} is not '<sha256>  <file>': {line[:80]!r}")
        entries[name] = digest
    return entries


def verify_checksums(folder: str | os.PathLike, only: list[str] | None = None, required: bool = False,
                     missing_ok: bool = False) -> int:
    """Check the files listed in ``folder/checksums.sha256`` (``only``: just these names, those the manifest lists).

    Raises :class:`ChecksumError` naming the first missing (unless ``missing_ok``) or altered file. A folder
    without a manifest passes (folders written by other tools have none) unless ``required``. Returns the number
    of files checked.
    """
    folder = Path(folder)
    entries = read_checksums(folder)
    if entries is None:
        if required:
            raise ChecksumError(f"{str(folder / MANIFEST)!r} is missing, so the folder's files cannot be checked "
                                "(the folder was not completely written)")
        return 0
    names = [n for n in entries if only is None or n in only]
    for name in names:
        path = folder / name
        if not path.is_file():
            if missing_ok:
                continue
            raise ChecksumError(f"{str(path)!r} is missing (listed in {MANIFEST})")
        if sha256_file(path) != entries[name]:
            raise ChecksumError(f"{str(path)!r} is damaged: its SHA-256 differs from the one written with it in "
                                f"{MANIFEST} (the file was altered or truncated after it was saved)")
    return sum((folder / n).is_file() for n in names)
