"""A Hugging Face Space running the app for one published few-shot model (``scripts/push_to_hub.py --space``).

The Space is three files: ``app.py`` (builds :func:`relzoo.app.gradio_app.build_app` on the model repo, or on the
folder named by ``RELZOO_MODEL`` when set), ``requirements.txt`` (relzoo with its ``app`` extra) and ``README.md``
(the Space's card: Gradio SDK, the model it uses). Nothing here needs the network; pushing uses the Hub API.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_folder

__all__ = ["write_space", "push_space", "SPACE_FILES", "DEFAULT_REQUIREMENT"]

SPACE_FILES = ("app.py", "requirements.txt", "README.md")
#: how the Space installs relzoo; ``--space-requirement`` replaces it (a wheel URL, a pinned git commit)
DEFAULT_REQUIREMENT = "relzoo[app] @ git+https://github.com/relzoo/relzoo"
TASK_ARGUMENT = {"few-shot-segmentation": "segmentation_model", "few-shot-image-classification": "classification_model"}

APP = '''"""Gradio Space: relzoo's few-shot app on {repo_id} ({task})."""
import os

from relzoo.app.gradio_app import build_app

MODEL = os.environ.get("RELZOO_MODEL", "{repo_id}")   # a local folder instead of the Hub repo, for testing
demo = build_app({argument}=MODEL)

if __name__ == "__main__":
    demo.launch()
'''


def write_space(folder: str | os.PathLike, *, repo_id: str, task: str, title: str,
                requirement: str = DEFAULT_REQUIREMENT, overwrite: bool = False) -> Path:
    """Write the Space folder for the few-shot model ``repo_id`` (atomically; an existing non-empty ``folder`` is
    kept unless ``overwrite``)."""
    if task not in TASK_ARGUMENT:
        raise ValueError(f"`task` must be one of {sorted(TASK_ARGUMENT)} (the app serves few-shot models), got "
                         f"{task!r}")
    if not requirement or "\n" in requirement:
        raise ValueError(f"`requirement` must be one requirement line, got {requirement!r}")
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        (tmp / "app.py").write_text(APP.format(repo_id=repo_id, task=task, argument=TASK_ARGUMENT[task]))
        (tmp / "requirements.txt").write_text(f"{requirement}\n")
        short = title if len(title) <= 60 else title[:57] + "..."
        (tmp / "README.md").write_text(
            "---\n"
            f"title: {short!r}\n"
            "sdk: gradio\n"
            "app_file: app.py\n"
            "pinned: false\n"
            f"models:\n- {repo_id}\n"
            "tags:\n- relzoo\n- few-shot\n"
            "---\n\n"
            f"# {title}\n\n"
            f"Try [{repo_id}](https://huggingface.co/{repo_id}) on your own images: relzoo's few-shot app "
            f"({task.replace('-', ' ')}). Upload support images (and, for segmentation, paint the object on each), "
            "then query images. Built with `scripts/push_to_hub.py --space`; locally: "
            f"`relzoo app --{TASK_ARGUMENT[task].replace('_', '-')} {repo_id}`.\n")
    return Path(folder)


def push_space(folder: str | os.PathLike, space_id: str, *, token: str | None = None, private: bool = False,
               commit_message: str = "Upload the relzoo app") -> str:
    """Upload a Space folder written by :func:`write_space` (exactly its three files) and return the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    found = sorted(p.name for p in folder.iterdir())
    if found != sorted(SPACE_FILES):
        raise ValueError(f"refusing to push {str(folder)!r} as a Space: expected exactly {sorted(SPACE_FILES)}, "
                         f"found {found}")
    if not isinstance(space_id, str) or space_id.count("/") != 1 or not all(space_id.split("/")):
        raise ValueError(f"`space` must be 'namespace/name', got {space_id!r}")
    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=str(folder),
                             allow_patterns=list(SPACE_FILES), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
