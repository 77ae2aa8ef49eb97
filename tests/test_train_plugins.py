"""scripts/train_classifier.py with the training-only plug-ins: each trains, the saved model is the plain timm
network (no plug-in key), API-Net batches are class-balanced, resume is exact with a plug-in, the long-tail report,
Fashion-MNIST-LT, named errors."""
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relzoo.models.batchformer import default_plugin_after
from relzoo.train import ClassifierTrainingArguments, train_classifier
from relzoo.train.classification import ClassifierTrainingModule, shot_group_accuracy

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _args(out, **kw):
    base = dict(model="test_resnet", dataset="digits", train_samples=64, eval_samples=40, image_size=32,
                batch_size=8, eval_batch_size=20, epochs=2, max_steps=4, checkpoint_every=2, output_dir=str(out),
                log_every=1, seed=3, recalibrate_bn_batches=2)
    base.update(kw)
    return ClassifierTrainingArguments(**base)


def _saved_is_the_plain_network(res: dict) -> dict:
    import timm

    weights = load_file(Path(res["model_dir"]) / "model.safetensors")
    assert set(weights) == set(timm.create_model("test_resnet", num_classes=10).state_dict())  # nothing else
    assert res["plugin"] in (Path(res["model_dir"]) / "README.md").read_text()                  # the card says how
    return weights


def test_batchformer_trains_with_its_own_learning_rate_and_saves_the_plain_network(tmp_path):
    res = train_classifier(_args(tmp_path, plugin="batchformer", plugin_lr_scale=0.1, checkpoint_every=0))
    assert res["plugin"] == "batchformer" and res["steps"] == 4 and 0 <= res["top1"] <= 1
    assert len(res["per_class_top1"]) == 10 and res["train_class_counts"]
    _saved_is_the_plain_network(res)


def test_apinet_batches_are_balanced_and_resume_is_exact(tmp_path):
    seen = []
    original = ClassifierTrainingModule.forward

    def spy(self, pixel_values, labels=None):
        if labels is not None:
            seen.append(collections.Counter(labels.tolist()))
        return original(self, pixel_values, labels)

    ClassifierTrainingModule.forward = spy
    try:
        full = train_classifier(_args(tmp_path / "full", plugin="apinet", samples_per_class=2))
    finally:
        ClassifierTrainingModule.forward = original
    assert len(seen) == 4 and all(len(c) == 4 and set(c.values()) == {2} for c in seen)   # 4 classes x 2 images
    train_classifier(_args(tmp_path / "split", plugin="apinet", samples_per_class=2, stop_after_steps=2))
    resumed = train_classifier(_args(tmp_path / "split", plugin="apinet", samples_per_class=2, resume=True))
    assert resumed["resumed_from_step"] == 2
    a, b = _saved_is_the_plain_network(full), _saved_is_the_plain_network(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)                     # bit-identical to the uninterrupted run


def test_batchformer_v2_resume_is_exact(tmp_path):
    full = train_classifier(_args(tmp_path / "full", plugin="batchformer_v2", plugin_after="layer3"))
    train_classifier(_args(tmp_path / "split", plugin="batchformer_v2", plugin_after="layer3", stop_after_steps=2))
    resumed = train_classifier(_args(tmp_path / "split", plugin="batchformer_v2", plugin_after="layer3", resume=True))
    a, b = _saved_is_the_plain_network(full), _saved_is_the_plain_network(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shot_groups_and_default_insertion_points():
    report = shot_group_accuracy({0: 1.0, 1: 0.5, 2: 0.25, 3: 0.0}, {0: 500, 1: 300, 2: 50, 3: 10}, many=100, few=20)
    assert report["shot_groups"] == {"many": [0, 1], "medium": [2], "few": [3]}
    assert (report["many_top1"], report["medium_top1"], report["few_top1"]) == (0.75, 0.25, 0.0)
    assert shot_group_accuracy({0: 1.0}, {0: 5}, 100, 20)["many_top1"] is None
    import timm

    assert default_plugin_after(timm.create_model("vit_tiny_patch16_224", depth=12)) == ["blocks.8"]  # official
    assert default_plugin_after(timm.create_model("resnet18")) == ["layer3"]
    with pytest.raises(ValueError, match="`plugin_after`: no default insertion point"):
        default_plugin_after(torch.nn.Linear(2, 2))


def test_fashion_mnist_lt_is_long_tailed_with_a_balanced_test_split(fashion_like):
    from relzoo.data import load_fashion_mnist, load_fashion_mnist_lt

    counts = collections.Counter(load_fashion_mnist_lt("train", data_dir=fashion_like)["label"])
    full = collections.Counter(load_fashion_mnist("train", data_dir=fashion_like)["label"])
    n = [counts[c] for c in range(10)]
    assert n[0] == full[0] and n == sorted(n, reverse=True) and n[-1] < n[0]
    assert len(load_fashion_mnist_lt("test", data_dir=fashion_like)) == len(load_fashion_mnist("test",
                                                                                               data_dir=fashion_like))


@pytest.mark.parametrize("field, value, expected", [
    ("plugin", "mixup", "`plugin` must be one of"),
    ("plugin_after", "layer3", "`plugin_after` is for --plugin batchformer_v2"),
    ("plugin_lr_scale", 0.0, "`plugin_lr_scale` must be a positive number"),
])
def test_bad_plugin_arguments_are_named(tmp_path, field, value, expected):
    with pytest.raises(ValueError, match=expected):
        _args(tmp_path, **{field: value})
    with pytest.raises(ValueError, match="`batch_size` must be a multiple of samples_per_class=4"):
        _args(tmp_path, plugin="apinet", batch_size=6)
    with pytest.raises(ValueError, match="`samples_per_class` must be an int >= 2"):
        _args(tmp_path, plugin="apinet", samples_per_class=1)


@pytest.mark.slow
def test_apinet_on_two_real_processes(tmp_path):
    """Each rank takes whole class-balanced batches (accelerate shards the batch sampler) and DDP keeps the replicas
    equal, the mutual-vector MLP included."""
    out = tmp_path / "ddp"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "scripts/train_classifier.py", "--model", "test_resnet", "--dataset",
           "digits", "--train_samples", "64", "--eval_samples", "20", "--image_size", "32", "--batch_size", "8",
           "--samples_per_class", "2", "--plugin", "apinet", "--max_steps", "3", "--output_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["num_processes"] == 2 and res["steps"] == 3 and res["replicas_in_sync"] is True
