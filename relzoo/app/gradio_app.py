"""The browser app: few-shot segmentation (HSNet) and few-shot classification (ProtoNet / CrossTransformers) on your
own images, over :mod:`relzoo.app.inference` (the same path as ``relzoo segment`` / ``relzoo classify``).

    relzoo app --segmentation-model outputs/demo-hsnet/model --classification-model outputs/demo/model

Segmentation: upload 1-5 support images, paint the object on each with the brush, upload query images, press
Segment: the masks overlaid on the queries, the masks as PNG files, the time taken (several shots vote). Classification:
name 2-5 classes and upload a few images of each, upload queries, press Classify: probabilities per class, and for
CrossTransformers where positions of the first query attend in each class's first support image.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .inference import (
    FewShotModel,
    InputError,
    classify,
    correspondence_picture,
    has_correspondence,
    load_fewshot_model,
    mask_overlay,
    resize_mask,
    segment,
)

__all__ = ["build_app", "editor_support", "MAX_SHOTS", "MAX_CLASSES"]

MAX_SHOTS = 5
MAX_CLASSES = 5


def _path(item) -> str:
    """A file of a gr.File value (a path string, or an object with ``.name`` / ``["path"]``)."""
    if isinstance(item, dict):
        return item.get("path") or item.get("name")
    return getattr(item, "name", item)


def editor_support(value, k: int):
    """``(image, mask)`` from an ImageMask value (background + brush layers), ``None`` for an empty slot.
    The mask is every pixel a brush layer painted (alpha above zero)."""
    if value is None:
        return None
    background = value.get("background") if isinstance(value, dict) else value
    if background is None:
        return None
    background = np.asarray(background)
    image = Image.fromarray(background[..., :3].astype(np.uint8)) if background.ndim == 3 else \
        Image.fromarray(background.astype(np.uint8)).convert("RGB")
    painted = np.zeros(background.shape[:2], dtype=bool)
    for layer in value.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[-1] == 4:
            alpha = layer[..., 3] > 0
        else:
            alpha = (layer if layer.ndim == 2 else layer.max(-1)) > 0
        if alpha.shape != painted.shape:   # a layer on a canvas of another size: bring it to the image's
            alpha = resize_mask(alpha, image.size)
        painted |= alpha
    if not painted.any():
        raise InputError(f"support {k}: the mask is empty (no brush stroke): paint the object on the image")
    return image, painted


def _error(message: str) -> str:
    return f"**Error:** {message}"


def segmentation_handler(fm: FewShotModel | None):
    def run(*values):
        *editors, queries = values
        if fm is None:
            return [], None, None, _error("no segmentation model was given (relzoo app --segmentation-model DIR)")
        try:
            supports = [s for k, v in enumerate(editors, start=1) if (s := editor_support(v, k)) is not None]
            if not supports:
                raise InputError("support: upload at least one support image and paint its object, got none")
            paths = [_path(q) for q in (queries or [])]
            if not paths:
                raise InputError("query: upload at least one query image, got none")
            t0 = time.perf_counter()
            results = segment(fm, supports, paths)
            seconds = time.perf_counter() - t0
        except InputError as err:
            return [], None, None, _error(str(err))
        out = Path(tempfile.mkdtemp(prefix="relzoo-app-"))
        gallery, files, used = [], [], []
        for k, (_, mask) in enumerate(supports, start=1):   # what the brush strokes became, for the user to check
            used.append(str(out / f"support_{k}_mask.png"))
            Image.fromarray(mask.astype(np.uint8) * 255).save(used[-1])
        for path, result in zip(paths, results):
            stem = Path(path).stem
            mask_file = out / f"{stem}_mask.png"
            Image.fromarray(result.mask.astype(np.uint8) * 255).save(mask_file)
            gallery.append((mask_overlay(path, result.mask), f"{stem}: {100 * result.coverage:.1f} %"))
            files.append(str(mask_file))
        shots = len(supports)
        vote = f", the {shots}-shot vote" if shots > 1 else ""
        status = (f"Segmented {len(results)} quer{'y' if len(results) == 1 else 'ies'} with {shots} support "
                  f"shot{'s' if shots > 1 else ''}{vote} in {seconds:.2f} s ({fm.size}x{fm.size} px model input, "
                  f"masks at each query's own size).")
        return gallery, files, used, status
    return run


def classification_handler(fm: FewShotModel | None):
    def run(*values):
        queries = values[-1]
        names, uploads = values[0:-1:2], values[1:-1:2]
        if fm is None:
            return "", None, _error("no classification model was given (relzoo app --classification-model DIR)")
        try:
            support = {}
            for k, (name, files) in enumerate(zip(names, uploads), start=1):
                name = (name or "").strip()
                if not name and not files:
                    continue
                if not name:
                    raise InputError(f"class {k}: images were uploaded but the class has no name")
                if name in support:
                    raise InputError(f"class {k}: the name {name!r} is used twice")
                support[name] = [_path(f) for f in (files or [])]
                if not support[name]:
                    raise InputError(f"class {name!r}: no support image (upload a few images of it)")
            paths = [_path(q) for q in (queries or [])]
            if not paths:
                raise InputError("query: upload at least one query image, got none")
            t0 = time.perf_counter()
            results = classify(fm, support, paths)
            picture = correspondence_picture(fm, support, paths[0]) if has_correspondence(fm) else None
            seconds = time.perf_counter() - t0
        except InputError as err:
            return "", None, _error(str(err))
        classes = list(support)
        lines = ["| query | predicted | " + " | ".join(classes) + " |", "|---|---|" + "---:|" * len(classes)]
        for path, r in zip(paths, results):
            lines.append(f"| {Path(path).name} | **{r.predicted}** | "
                         + " | ".join(f"{100 * r.probabilities[c]:.1f} %" for c in classes) + " |")
        status = (f"Classified {len(results)} quer{'y' if len(results) == 1 else 'ies'} against {len(classes)} "
                  f"classes in {seconds:.2f} s.")
        return "\n".join(lines), picture, status
    return run


def build_app(segmentation_model=None, classification_model=None, device: str = "cpu", *,
              segmentation: FewShotModel | None = None, classification: FewShotModel | None = None):
    """The Gradio Blocks app. Models are folders or Hub ids (or already loaded :class:`FewShotModel` objects)."""
    import gradio as gr

    seg = segmentation or (load_fewshot_model(segmentation_model, device) if segmentation_model else None)
    cls = classification or (load_fewshot_model(classification_model, device) if classification_model else None)
    for fm, task, flag in ((seg, "few-shot-segmentation", "--segmentation-model"),
                           (cls, "few-shot-image-classification", "--classification-model")):
        if fm is not None and fm.task != task:
            raise InputError(f"{flag}: expected a {task} model, got a {fm.task} model ({fm.describe()})")
    with gr.Blocks(title="relzoo: few-shot models on your images", analytics_enabled=False) as demo:
        gr.Markdown("# relzoo: few-shot segmentation and classification on your own images\n"
                    f"Segmentation model: {seg.describe() if seg else 'none'}  \n"
                    f"Classification model: {cls.describe() if cls else 'none'}  \n"
                    "Images of any size are resized to the model's input; masks come back at the original size.")
        with gr.Tab("Few-shot segmentation", id="segmentation"):
            gr.Markdown("Upload 1-5 support images and paint the object on each with the brush; then upload the "
                        "query images and press **Segment**.")
            with gr.Row():
                editors = [gr.ImageMask(label=f"Support {k + 1}", type="numpy", elem_id=f"support-{k}",
                                        sources=["upload"], layers=False, transforms=[],
                                        brush=gr.Brush(colors=["#ff2020"], color_mode="fixed", default_size=24))
                           for k in range(MAX_SHOTS)]
            seg_queries = gr.File(label="Query images", file_count="multiple", file_types=["image"],
                                  elem_id="seg-queries")
            seg_run = gr.Button("Segment", variant="primary", elem_id="seg-run")
            seg_status = gr.Markdown(elem_id="seg-status")
            seg_gallery = gr.Gallery(label="Predicted masks on the queries", elem_id="seg-gallery", columns=3)
            with gr.Row():
                seg_files = gr.File(label="Predicted masks (PNG, each query's size)", file_count="multiple",
                                    elem_id="seg-masks")
                seg_used = gr.File(label="Support masks as painted (PNG)", file_count="multiple",
                                   elem_id="seg-support-masks")
            seg_run.click(segmentation_handler(seg), [*editors, seg_queries],
                          [seg_gallery, seg_files, seg_used, seg_status])
        with gr.Tab("Few-shot classification", id="classification"):
            gr.Markdown("Name 2-5 classes and upload a few images of each; then upload the queries and press "
                        "**Classify**.")
            class_inputs = []
            for c in range(MAX_CLASSES):
                with gr.Row():
                    class_inputs.append(gr.Textbox(label=f"Class {c + 1} name", elem_id=f"class-name-{c}", scale=1))
                    class_inputs.append(gr.File(label=f"Class {c + 1} images", file_count="multiple",
                                                file_types=["image"], elem_id=f"class-files-{c}", scale=3))
            cls_queries = gr.File(label="Query images", file_count="multiple", file_types=["image"],
                                  elem_id="cls-queries")
            cls_run = gr.Button("Classify", variant="primary", elem_id="cls-run")
            cls_status = gr.Markdown(elem_id="cls-status")
            cls_table = gr.Markdown(elem_id="cls-result")
            cls_picture = gr.Image(label="Correspondence (CrossTransformers): where the first query's positions "
                                         "attend in each class", elem_id="cls-correspondence", type="pil",
                                   visible=cls is not None and has_correspondence(cls))
            cls_run.click(classification_handler(cls), [*class_inputs, cls_queries],
                          [cls_table, cls_picture, cls_status])
    return demo
