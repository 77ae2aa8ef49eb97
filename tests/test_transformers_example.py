"""transformers' own image-classification example as a real client of a SAN folder (issue 21).

``examples/pytorch/image-classification/run_image_classification.py`` is not shipped in transformers' wheel or sdist,
so this test runs the same steps with the same arguments (our code, the example's call sequence): ``AutoConfig`` with
``num_labels`` of a new dataset and ``id2label`` / ``label2id`` with *string* ids (``{"0": "x"}``), the model with
``ignore_mismatched_sizes``, ``AutoImageProcessor`` (a ``TimmWrapperImageProcessor``: its ``train_transforms`` /
``val_transforms``), ``Trainer`` with a collate function, ``train``, ``save_model``, ``evaluate``,
``create_model_card``, then the saved folder through ``pipeline``. It crashed on a SAN folder with ``KeyError: 0``
(``SANConfig.timm_fields`` indexed the string-keyed ``id2label`` with ints), with relzoo installed and through remote
code alike; both are run here, the second in a process where relzoo cannot be imported."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image

from relzoo.hub import save_hub_folder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_hub_publish import BLOCK_RELZOO  # noqa: E402

TINY_SAN = dict(widths=[32, 32, 64, 64, 128], stem_width=32, layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3])

EXAMPLE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    from datasets import load_dataset
    from transformers import (AutoConfig, AutoImageProcessor, AutoModelForImageClassification, Trainer,
                              TrainingArguments, pipeline)
    from transformers.models.timm_wrapper import TimmWrapperImageProcessor

    model_dir, data_dir, output_dir, remote = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    dataset = load_dataset("imagefolder", data_dir=data_dir)
    labels = dataset["train"].features["label"].names
    label2id, id2label = {}, {}
    for i, label in enumerate(labels):          # as the example writes them: string ids
        label2id[label] = str(i)
        id2label[str(i)] = label
    config = AutoConfig.from_pretrained(model_dir, num_labels=len(labels), label2id=label2id, id2label=id2label,
                                        finetuning_task="image-classification", trust_remote_code=remote)
    model = AutoModelForImageClassification.from_pretrained(model_dir, config=config, trust_remote_code=remote,
                                                            ignore_mismatched_sizes=True)
    image_processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=remote)
    assert isinstance(image_processor, TimmWrapperImageProcessor), type(image_processor)
    train_t, val_t = image_processor.train_transforms, image_processor.val_transforms

    def collate_fn(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    def with_transform(t):
        def apply(batch):
            batch["pixel_values"] = [t(img.convert("RGB")) for img in batch["image"]]
            return batch
        return apply

    dataset["train"].set_transform(with_transform(train_t))
    dataset["validation"].set_transform(with_transform(val_t))

    def compute_metrics(p):                     # the example's accuracy (evaluate.load needs the network)
        return {"accuracy": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    args = TrainingArguments(output_dir=output_dir, max_steps=3, per_device_train_batch_size=4,
                             per_device_eval_batch_size=4, learning_rate=1e-3, remove_unused_columns=False,
                             report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no", seed=0,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset["train"], eval_dataset=dataset["validation"],
                      compute_metrics=compute_metrics, processing_class=image_processor, data_collator=collate_fn)
    result = trainer.train()
    trainer.save_model()
    trainer.save_state()
    metrics = trainer.evaluate()
    trainer.create_model_card(finetuned_from=model_dir, tasks="image-classification", dataset="shapes",
                              tags=["image-classification", "vision"])
    reloaded = AutoModelForImageClassification.from_pretrained(output_dir, trust_remote_code=remote)
    classify = pipeline("image-classification", model=output_dir, trust_remote_code=remote)
    from PIL import Image
    scores = classify(Image.open(f"{data_dir}/validation/disc/0.png"))
    print(json.dumps({"loss": result.training_loss, "eval_accuracy": metrics["eval_accuracy"],
                      "class": type(reloaded).__module__ + "." + type(reloaded).__name__,
                      "id2label": {str(k): v for k, v in reloaded.config.id2label.items()},
                      "pipeline_labels": sorted(s["label"] for s in scores)}))
""")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A SAN folder with 3 classes (64 px) and an imagefolder dataset with 2 other classes."""
    root = tmp_path_factory.mktemp("example")
    model = timm.create_model("san10_pair", num_classes=3, **TINY_SAN).eval()
    save_hub_folder(model, root / "san", class_names=["cat", "dog", "fox"], image_size=64, crop_pct=0.875,
                    mean=(0.5,) * 3, std=(0.5,) * 3, model_id="me/san-tiny")
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for c, name in enumerate(("disc", "stripes")):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(6):
                yy, xx = np.mgrid[:48, :48]
                pattern = ((yy - 24) ** 2 + (xx - 24) ** 2 < 150) if c == 0 else (xx // 6) % 2 == 0
                image = np.where(pattern[..., None], 220, 30) + rng.integers(0, 20, (48, 48, 3))
                Image.fromarray(image.astype(np.uint8)).save(root / "data" / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("remote", [False, True], ids=["relzoo-installed", "remote-code-without-relzoo"])
def test_the_stock_image_classification_example_fine_tunes_a_san_folder(folders, tmp_path, remote):
    code = (BLOCK_RELZOO if remote else "import relzoo\n") + EXAMPLE
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(folders / "san"), str(folders / "data"),
                           str(tmp_path / "out"), "1" if remote else "0"], env=env, capture_output=True, text=True,
                          timeout=900, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.isfinite(out["loss"]) and 0 <= out["eval_accuracy"] <= 1
    assert out["id2label"] == {"0": "disc", "1": "stripes"} and out["pipeline_labels"] == ["disc", "stripes"]
    expected = "transformers_modules." if remote else "relzoo.models.san."
    assert out["class"].startswith(expected) and out["class"].endswith("SANForImageClassification")
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "model.safetensors").is_file()


def test_san_config_accepts_what_transformers_accepts():
    """String ids and num_labels other than len(id2label), as transformers' own configs take them."""
    from relzoo import SANConfig

    config = SANConfig.from_variant("san10_pair", num_labels=2, id2label={"0": "x", "1": "y"})
    assert config.timm_fields()["label_names"] == ["x", "y"]
    config = SANConfig.from_variant("san10_pair", num_labels=3, id2label={0: "x"})   # transformers warns, renames
    assert config.timm_fields()["label_names"] == [config.id2label[i] for i in range(3)]
    config.id2label = {"0": "x", "1": "y"}               # set afterwards, as from_pretrained(..., id2label=) does
    assert config.timm_fields()["label_names"] == ["x", "y"]
