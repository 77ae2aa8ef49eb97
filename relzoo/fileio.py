"""Safe file I/O shared by publishing, the converters and training: nothing half-written, nothing deleted that was
not asked for, nothing executed that was read.

* :func:`atomic_folder` writes a folder under a temporary name and renames it into place; it refuses to replace a
  non-empty folder without ``overwrite`` and to replace a folder that holds one of the inputs, and clears the
  temporary folders of writers that died.
* :func:`write_json_atomic` writes a JSON file the same way.
* :func:`load_checkpoint_safely` reads a PyTorch file as plain data (``weights_only=True``), with one clear error
  for each way it can be unusable; pickled code is refused, never run.
* :func:`check_safetensors_file` parses a safetensors file completely (header, dtypes, shapes, offsets, size) and
  returns its metadata, so that a file is uploaded as weights only if it holds tensors only.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_folder", "check_output_folder", "check_safetensors_file", "load_checkpoint_safely", "pid_alive", "write_json_atomic"]

#: bytes per element of every dtype the safetensors format defines
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 0.5,
                      "F6_E2M3": 0.75, "F6_E3M2": 0.75, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4,
                      "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
MAX_SAFETENSORS_HEADER = 100 * 2**20    # the format's own limit


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, under another user
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clear_dead_writers(path: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>`` siblings left by writers of this machine that died."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)(?:-|$)")
    if not path.parent.is_dir():
        return
    for item in path.parent.iterdir():
        found = pattern.match(item.name)
        if found and int(found.group(1)) != os.getpid() and not pid_alive(int(found.group(1))):
            shutil.rmtree(item, ignore_errors=True)


def _inside(inner: Path, outer: Path) -> bool:
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def check_output_folder(path: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> Path:
    """Whether ``path`` may be written as a folder: it may exist only as an empty folder, unless ``overwrite``; a
    ``path`` that holds (or is) one of ``inputs`` is refused even with ``overwrite``, since replacing it would
    delete the input. Raises ``FileExistsError`` / ``ValueError`` naming both; returns ``path``."""
    path = Path(path)
    for item in inputs or ():
        if item is not None and _inside(Path(item), path):
            raise ValueError(f"the output folder {str(path)!r} holds the input {str(item)!r}: writing it would delete "
                             "the input; choose another output folder")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"the output {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"the output folder {str(path)!r} exists and is not empty; pass --overwrite "
                              "(overwrite=True) to replace it")
    return path


@contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False, inputs=()):
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename, on error it is removed.

    :func:`check_output_folder` runs first (a non-empty ``path`` needs ``overwrite``; one that holds an input is
    refused), before anything is written. Temporary folders of writers that died are cleared."""
    path = check_output_folder(path, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_dead_writers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        # mkdtemp makes a private folder (0700) and some writers use private temp files (0600): give everything the
        # permissions a plain mkdir / open would have under the user's umask
        mask = _umask()
        for item in [tmp, *tmp.rglob("*")]:
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to a temporary file (unique to this process) and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{socket.gethostname()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint_safely(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """``torch.load(path, weights_only=True)`` with one clear error for each way a foreign file can be unusable:
    missing, not a PyTorch file (or damaged), or holding pickled code/objects (refused, never executed)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`{what}` {str(path)!r} does not exist or is not a file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL " not in str(err):   # no code or object reference: damage, another format, random bytes
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            raise ValueError(f"`{what}` {str(path)!r} is not a readable PyTorch checkpoint (damaged or another "
                             f"format: {detail.group(1).strip() if detail else 'UnpicklingError'}); nothing in it "
                             "was run") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = f" (it refers to {found.group(1)})" if found else ""
        raise ValueError(f"`{what}` {str(path)!r} holds Python code or objects besides tensors{detail}; relzoo refuses "
                         "to unpickle such files for safety. Re-save the weights as a plain state dict of tensors "
                         "(or safetensors) where the file is trusted.") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as err:
        raise ValueError(f"`{what}` {str(path)!r} is not a readable PyTorch checkpoint (damaged or another format: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"`{what}` {str(path)!r} must hold a dict of tensors (or {{'state_dict': ...}}), "
                         f"got {type(raw).__name__}")
    return raw


def check_safetensors_file(path: str | os.PathLike) -> dict[str, str]:
    """Parse a safetensors file completely and return its ``__metadata__`` (``{}`` when none).

    Raises ``ValueError`` naming the file unless it is exactly a safetensors file of tensors: an 8-byte header
    length within the format's limit, a UTF-8 JSON object header, every entry a known dtype with a shape of
    non-negative ints and ``[begin, end]`` offsets of exactly that many bytes, the entries tiling the data region
    with neither gap nor overlap, the data region ending where the file ends, and metadata of strings only."""
    path = Path(path)

    def bad(why: str) -> ValueError:
        return ValueError(f"{str(path)!r} is not a safetensors file of tensors: {why}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise bad(f"header length {length} does not fit the file ({size} bytes)")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise bad(f"the header is not JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"entry {name!r} is not a tensor (dtype, shape, data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0
                                                                        for o in offsets) and offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}")
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != count * SAFETENSORS_DTYPES[dtype]:
            raise bad(f"tensor {name!r} ({dtype} {shape}) spans {offsets[1] - offsets[0]} bytes, not "
                      f"{count * SAFETENSORS_DTYPES[dtype]}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise bad(f"the data of tensor {name!r} starts at {begin}, not at {end} (a gap or an overlap)")
        end = stop
    if 8 + length + end != size:
        raise bad(f"the tensors end at byte {8 + length + end} but the file has {size} bytes")
    return metadata
