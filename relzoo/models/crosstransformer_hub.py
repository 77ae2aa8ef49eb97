"""The few-shot classifiers' Hub side (CrossTransformers and ProtoNet): their folder files, their cards' usage lines,
and the folder a training run writes (:func:`save_fewshot_folder`). Read through the family registry. Their released
checkpoints (TensorFlow, meta-dataset) have no converter."""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.repocard_data import EvalResult

from ..cards import remote_code_usage, trained_card
from ..fileio import atomic_folder
from ..hub import write_image_processor, write_transformers_files
from ..registry import family_of

__all__ = ["write_files", "usage", "save_fewshot_folder"]


def write_files(model, folder: Path, *, class_names, preprocessing: dict, model_id: str) -> None:
    """Weights, config, remote code and the image processor (resize, scale, normalise with the variant's values)."""
    write_transformers_files(model, folder)
    write_image_processor(folder, preprocessing)


def usage(model_id: str) -> list[str]:
    return ["```python", "import relzoo   # registers the architecture with transformers",
            f'model = relzoo.AutoModelForFewShotClassification.from_pretrained("{model_id}").eval()',
            "model.set_support(support_pixel_values, support_labels)   # (S, 3, H, W), labels 0..N-1",
            "logits = model(query_pixel_values=queries).logits          # (Q, N)", "```", "",
            *remote_code_usage(model_id)]


def save_fewshot_folder(model, folder: str | os.PathLike, *, image_size: int, results: list[dict] | None = None,
                        training: dict | None = None, dataset: str | None = None, model_id: str | None = None,
                        license: str = "apache-2.0", overwrite: bool = False) -> Path:
    """Write a few-shot classifier (``CrossTransformerForFewShotClassification`` / ``ProtoNetForFewShotClassification``)
    as a Hub-ready folder, atomically: weights, config, an image processor (resize to ``image_size``, scale to
    [-1, 1]) and a model card whose model-index holds the measured accuracies (``results`` rows from
    :func:`relzoo.train.fewshot.evaluate_all`: dataset, way, shot, accuracy, ci95, episodes)."""
    kind = model.config.model_type
    model_id = model_id or f"{kind}-{model.config.backbone}" + (f"-{dataset}" if dataset else "")
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        write_transformers_files(model, tmp)
        write_image_processor(tmp, {"input_size": [3, image_size, image_size], "mean": [0.5] * 3, "std": [0.5] * 3})
        eval_results = [EvalResult(task_type="image-classification", task_name="few-shot image classification",
                                   dataset_type=r["dataset"], dataset_name=f"{r['dataset']} ({r['split']}, unseen "
                                   f"classes {r['classes']}) {r['way']}-way {r['shot']}-shot",
                                   metric_type="accuracy", metric_value=round(100 * r["accuracy"], 2),
                                   metric_name=f"accuracy over {r['episodes']} episodes (± {100 * r['ci95']:.2f} CI95)")
                        for r in results or []]
        table = []
        if results:
            table = ["## Results (mean accuracy ± 95% confidence interval over test episodes, unseen classes)", "",
                     "| test set | classes | way | shot | queries/class | episodes | accuracy (%) |",
                     "|---|---|---|---|---|---|---|"]
            table += [f"| {r['dataset']} ({r['split']}) | {r['classes']} | {r['way']} | {r['shot']} | {r['queries']} | "
                      f"{r['episodes']} | {100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} |" for r in results]
        usage = ("import relzoo  # registers the architecture with transformers\n"
                 "from transformers import AutoImageProcessor\n"
                 "model = relzoo.AutoModelForFewShotClassification.from_pretrained(FOLDER_OR_REPO).eval()\n"
                 "processor = AutoImageProcessor.from_pretrained(FOLDER_OR_REPO)\n"
                 "support = processor(support_images, return_tensors='pt').pixel_values   # (S, 3, H, W)\n"
                 "model.set_support(support, support_labels)                             # labels in 0..N-1\n"
                 "logits = model(query_pixel_values=processor(queries, return_tensors='pt').pixel_values).logits")
        trained_card(tmp / "README.md", model, model_id=model_id, tags=["few-shot", "relzoo", kind, "timm"],
                     dataset=dataset, license=license, metrics=["accuracy"], eval_results=eval_results, usage=usage,
                     results_table=table, training=training, script=family_of(model).train_script,
                     paper=family_of(model).paper)
    return Path(folder)
