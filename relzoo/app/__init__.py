"""Trying the few-shot models on your own images: one inference path (:mod:`relzoo.app.inference`) behind the
``relzoo segment`` / ``relzoo classify`` commands and the Gradio app (:mod:`relzoo.app.gradio_app`, ``relzoo app``).

Gradio is an optional extra (``pip install relzoo[app]``); nothing here imports it until the app is built.
"""
from .inference import (
    ClassificationResult,
    FewShotModel,
    InputError,
    SegmentationResult,
    classify,
    correspondence_picture,
    load_fewshot_model,
    mask_overlay,
    read_image,
    read_mask,
    segment,
)

__all__ = ["ClassificationResult", "FewShotModel", "InputError", "SegmentationResult", "classify",
           "correspondence_picture", "load_fewshot_model", "mask_overlay", "read_image", "read_mask", "segment"]
