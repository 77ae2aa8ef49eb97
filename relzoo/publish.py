"""Publishing: the checks an export folder must pass before upload, and the upload itself.

* :func:`check_export_folder`: what a push sends, after refusing anything that does not belong in an export (links,
  sub-folders, credentials, secrets in text or in safetensors metadata, weights that do not parse or do not match
  ``checksums.json``);
* :func:`push_to_hub`: a checked folder (or a model, written first with :func:`export_model`) to a Hub repo;
* :func:`export_model`: any relzoo model or timm classifier as a Hub-ready folder.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers import PreTrainedModel

from .cards import NO_WEIGHTS_MARK
from .fileio import atomic_folder
from .hub import add_remote_code, save_hub_folder

__all__ = ["check_export_folder", "push_to_hub", "export_model", "EXPORT_FILES"]

#: files a relzoo export may hold (besides the remote-code modules its config.json names)
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "README.md", "preprocessor_config.json",
                          "checksums.json", ".gitattributes"})
_CREDENTIAL_NAMES = (".env", ".netrc", ".git-credentials", ".pypirc", "token", "stored_tokens", "credentials",
                     "id_rsa", "id_ed25519", "id_ecdsa")
_CREDENTIAL_SUFFIXES = (".env", ".pem", ".key", ".p12", ".pfx", ".token", ".kdbx")
_TOKEN_PATTERNS = (r"hf_[A-Za-z0-9]{30,}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"AKIA[0-9A-Z]{16}",
                   r"gh[pousr]_[A-Za-z0-9]{30,}")


def check_export_folder(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` that a push uploads, after refusing anything that does not belong in an export.

    Refused, with the reason: a missing ``config.json``; sub-folders, links and hard links (a link can point
    anywhere on the machine, a hard link may be another file's content); files that look like credentials by name
    (``.env``, ``token``, keys, ...) or hold a token or a private key in their text; any other file that is not part
    of what relzoo writes (weights, config, card, image processor, checksum manifest, and the remote-code modules
    ``config.json``'s ``auto_map`` needs). Every weights file must parse completely as safetensors holding tensors
    only (:func:`relzoo.fileio.check_safetensors_file`; its metadata is scanned like text), and ``checksums.json``
    must list every weights file and verify (weights damaged or replaced after saving are not uploaded)."""
    import re
    import stat

    from .checksums import ChecksumError, read_checksums, verify_checksums
    from .fileio import check_safetensors_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"`folder` {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"`folder` {str(folder)!r} has no config.json: it is not a model export (write one with "
                         "scripts/push_to_hub.py --dry-run, save_hub_folder or save_pretrained)")
    allowed = set(EXPORT_FILES) | _remote_code_names(folder)

    def secret_in(text: str) -> str | None:
        return next((p for p in _TOKEN_PATTERNS if re.search(p, text)), None)

    problems, files = [], []
    for item in sorted(folder.iterdir()):
        name, lower = item.name, item.name.lower()
        info = item.lstat()
        if stat.S_ISLNK(info.st_mode):
            problems.append(f"{name}: a link (it may point outside the export)")
        elif stat.S_ISDIR(info.st_mode):
            problems.append(f"{name}/: a sub-folder (exports are flat)")
        elif not stat.S_ISREG(info.st_mode):
            problems.append(f"{name}: not a regular file")
        elif info.st_nlink > 1:
            problems.append(f"{name}: a hard link ({info.st_nlink} names for one file: it may be another file's "
                            "content)")
        elif lower in _CREDENTIAL_NAMES or lower.endswith(_CREDENTIAL_SUFFIXES) or lower.startswith(".env"):
            problems.append(f"{name}: looks like a credentials file")
        elif name not in allowed:
            problems.append(f"{name}: not part of a relzoo export (allowed: {', '.join(sorted(allowed))})")
        elif name.endswith(".safetensors"):
            try:
                metadata = check_safetensors_file(item)
            except ValueError as err:
                problems.append(f"{name}: not {str(err).split(' is not ', 1)[-1]}")
                continue
            hit = secret_in(json.dumps(metadata))
            if hit:
                problems.append(f"{name}: its metadata holds what looks like a secret (matches {hit!r})")
                continue
            files.append(name)
        else:
            hit = secret_in(item.read_text(errors="replace"))
            if hit:
                problems.append(f"{name}: holds what looks like a secret (matches {hit!r})")
                continue
            files.append(name)
    if not problems:
        try:
            listed = read_checksums(folder)
            if listed is None:
                raise ChecksumError("checksums.json is missing: the weights cannot be checked")
            unlisted = [n for n in files if n.endswith(".safetensors") and n not in listed]
            if unlisted:
                raise ChecksumError(f"checksums.json does not list {', '.join(unlisted)}")
            verify_checksums(folder, required=True)
        except ChecksumError as err:
            problems.append(str(err))
    if problems:
        raise ValueError(f"refusing to push {str(folder)!r}: " + "; ".join(problems)
                         + ". Remove these files (or push a folder written by scripts/push_to_hub.py --dry-run).")
    return files


def _remote_code_names(folder: Path) -> set[str]:
    """The modules ``config.json``'s ``auto_map`` names and, transitively, their flat ``from .x import`` siblings."""
    import re

    try:
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map") or {}
    except ValueError as err:
        raise ValueError(f"{str(folder / 'config.json')!r} is not valid JSON: {err}") from None
    todo = [ref.rsplit(".", 1)[0] + ".py" for ref in auto_map.values() if isinstance(ref, str)]
    names: set[str] = set()
    while todo:
        name = todo.pop()
        if name in names or not (folder / name).is_file() or (folder / name).is_symlink():
            continue
        names.add(name)
        todo += [m + ".py" for m in re.findall(r"^\s*from\s+\.(\w+)\s+import", (folder / name).read_text(), re.M)]
    return names


def push_to_hub(model_or_folder, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload from relzoo", revision: str | None = None, **export_kwargs) -> str:
    """Upload a model export to the Hub repo ``repo_id`` (created if needed) and return the commit URL.

    ``model_or_folder`` is a folder written by relzoo (``scripts/push_to_hub.py --dry-run``, :func:`save_hub_folder`,
    the converters, the trainers' ``model`` folder) or a model, written first with :func:`export_model`
    (``export_kwargs`` go there). The folder is checked by :func:`check_export_folder` before anything is sent."""
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must be 'namespace/name', got {repo_id!r}")
    with tempfile.TemporaryDirectory(prefix="relzoo-push-") as tmp:
        if isinstance(model_or_folder, (str, os.PathLike)):
            folder = Path(model_or_folder)
        else:
            folder = export_model(model_or_folder, Path(tmp) / "export", model_id=repo_id, **export_kwargs)
        files = check_export_folder(folder)
        card = folder / "README.md"
        if card.is_file() and NO_WEIGHTS_MARK in card.read_text(errors="replace"):
            raise ValueError(f"refusing to push {str(folder)!r}: its card says it holds no weights (a random "
                             "initialisation written to check the format). Export it with weights first "
                             "(scripts/push_to_hub.py --variant NAME --weights CHECKPOINT_OR_MODEL_FOLDER).")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files,
                                 commit_message=commit_message, revision=revision)
    return str(getattr(info, "commit_url", info))


def export_model(model, folder: str | os.PathLike, *, model_id: str | None = None, class_names=None,
                 image_size: int = 224, crop_pct: float = 0.875, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                 overwrite: bool = False, **kwargs) -> Path:
    """Write ``model`` as a Hub-ready folder. Classifiers go through :func:`save_hub_folder` as the timm network
    inference runs: a timm model as it is, relzoo's transformers classifiers through ``to_timm()`` (SAN; BatchFormer
    and API-Net without their training-only plug-in). Other relzoo models (few-shot, HSNet) are saved with
    ``save_pretrained`` plus remote code. ``kwargs`` go to :func:`save_hub_folder` (dataset, metrics, ...); a
    non-empty ``folder`` is replaced only with ``overwrite``."""
    if hasattr(model, "to_timm"):
        from .models.inputs import class_names as config_class_names

        class_names = class_names or config_class_names(model.config)
        model = model.to_timm()
    elif isinstance(model, PreTrainedModel):
        with atomic_folder(folder, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp)
            add_remote_code(tmp, type(model))
        return Path(folder)
    names = class_names or [str(i) for i in range(getattr(model, "num_classes", 0))]
    return save_hub_folder(model, folder, class_names=names, image_size=image_size, crop_pct=crop_pct, mean=mean,
                           std=std, model_id=model_id, overwrite=overwrite, **kwargs)
