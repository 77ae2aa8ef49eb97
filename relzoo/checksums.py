"""SHA-256 manifests for the folders relzoo writes, checked when they are read back.

A weights file with bytes overwritten in the middle still parses (safetensors only checks its header) and silently
gives a model with garbage weights. Every folder relzoo writes (Hub-ready model folders, converter output, training
checkpoints) therefore carries ``checksums.json``: for each file its SHA-256 and size, and for safetensors files
the SHA-256 of the header too (the list of tensor names, dtypes, shapes and offsets). relzoo verifies it before
loading: ``from_pretrained`` of relzoo models, ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))``
and training resume.

The header digest tells damage from replacement. A file whose header is intact but whose bytes differ was damaged
(bytes overwritten, truncated): :class:`ChecksumError`. A safetensors file with another header holds other tensors:
it was rewritten on purpose by another tool after the manifest; model folders load it as it is, with a warning (so a
folder behaves as transformers expects when its weights are replaced), while checkpoints refuse it.

Model folders list their tensor files only (so editing ``config.json`` or the model card stays possible);
checkpoints list every file they hold, since a resume needs all of them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

MANIFEST = "checksums.json"
TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".npz")
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header size

logger = logging.getLogger(__name__)


class ChecksumError(ValueError):
    """A file listed in a folder's ``checksums.json`` is missing or does not hold what was written."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safetensors_header_sha256(path: str | os.PathLike) -> str | None:
    """SHA-256 of a safetensors file's header (length prefix + JSON), or ``None`` when the header is unreadable."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return None
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER:
            return None
        header = f.read(length)
    try:
        json.loads(header)
    except (UnicodeDecodeError, ValueError):
        return None
    return hashlib.sha256(prefix + header).hexdigest() if len(header) == length else None


def _entry(path: Path) -> dict:
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.suffix == ".safetensors":
        entry["header_sha256"] = safetensors_header_sha256(path)
    return entry


def write_checksums(folder: str | os.PathLike, every_file: bool = False) -> Path:
    """Write ``folder/checksums.json`` over the folder's tensor files (``every_file``: over all its files, in
    subfolders too). Returns the manifest's path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
                   and (every_file or p.name.endswith(TENSOR_SUFFIXES)))
    manifest = {"algorithm": "sha256", "files": {p.relative_to(folder).as_posix(): _entry(p) for p in files}}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def read_checksums(folder: str | os.PathLike) -> dict[str, dict] | None:
    """``{relative path: {"sha256", "bytes"[, "header_sha256"]}}`` from ``folder/checksums.json``; ``None`` when
    the folder has none."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
        if not all(isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in files.values()):
            raise ValueError("an entry without a sha256")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ChecksumError(f"{str(manifest)!r} is damaged ({type(err).__name__}: {err})") from None
    return files


def verify_checksums(folder: str | os.PathLike, only: list[str] | None = None, required: bool = False,
                     missing_ok: bool = False, replaced_ok: bool = False) -> int:
    """Check the files listed in ``folder/checksums.json`` (``only``: just these names, those the manifest lists).

    Raises :class:`ChecksumError` naming the first missing (unless ``missing_ok``) or damaged file. A safetensors
    file holding other tensors than the one written with the manifest is accepted with a warning when
    ``replaced_ok``, else refused. A folder without a manifest passes (folders written by other tools have none)
    unless ``required``. Returns the number of files checked.
    """
    folder = Path(folder)
    entries = read_checksums(folder)
    if entries is None:
        if required:
            raise ChecksumError(f"{str(folder / MANIFEST)!r} is missing, so the folder's files cannot be checked "
                                "(the folder was not completely written)")
        return 0
    checked = 0
    for name, entry in entries.items():
        if only is not None and name not in only:
            continue
        path = folder / name
        if not path.is_file():
            if missing_ok:
                continue
            raise ChecksumError(f"{str(path)!r} is missing (listed in {MANIFEST})")
        checked += 1
        if sha256_file(path) == entry["sha256"]:
            continue
        recorded_header = entry.get("header_sha256")
        header = safetensors_header_sha256(path) if recorded_header else None
        if header is not None and header != recorded_header:
            if replaced_ok:
                logger.warning("%s holds other tensors than the file saved with %s (it was rewritten after the "
                               "folder was saved); loading it as it is", path, MANIFEST)
                continue
            raise ChecksumError(f"{str(path)!r} holds other tensors than the file saved with {MANIFEST} (it was "
                                "replaced after it was saved)")
        size = path.stat().st_size
        how = (f"truncated or extended: {size} bytes, {entry.get('bytes')} written" if size != entry.get("bytes")
               else "bytes were overwritten")
        raise ChecksumError(f"{str(path)!r} is damaged: its SHA-256 differs from the one written with it in "
                            f"{MANIFEST} ({how})")
    return checked
