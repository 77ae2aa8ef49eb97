"""HSNet fine-tuning on the built-in composites: a short run with evaluation, pictures and a loadable model folder,
exact resume, backbone weights from a few-shot classifier, 2 real processes, named argument errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relzoo import (
    AutoModelForFewShotSegmentation,
    HSNetConfig,
    HSNetForFewShotSegmentation,
    ProtoNetConfig,
    ProtoNetForFewShotClassification,
)
from relzoo.checksums import ChecksumError
from relzoo.train.checkpoints import RunMismatchError
from relzoo.train.segmentation import SegmentationTrainingArguments, train_segmentation

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _args(out, data_dir, **kw):
    base = dict(backbone="resnet18", image_size=64, batch_size=2, max_steps=6, eval_episodes=10, eval_shots="1,2",
                checkpoint_every=2, log_every=1, data_dir=str(data_dir), output_dir=str(out))
    return SegmentationTrainingArguments(**{**base, **kw})


def test_run_evaluates_unseen_classes_and_writes_a_loadable_model(tmp_path, fashion_like):
    res = train_segmentation(_args(tmp_path, fashion_like, pictures=2))
    assert res["steps"] == 6 and res["replicas_in_sync"] is True
    assert [(r["shot"], r["episodes"], r["classes"]) for r in res["results"]] == [(1, 10, [1, 3, 5, 7, 9]),
                                                                                (2, 10, [1, 3, 5, 7, 9])]
    assert all(0 <= r["miou"] <= 100 and 0 <= r["fb_iou"] <= 100 for r in res["results"])
    assert [Path(p).name for p in res["pictures"]] == ["episode000_class1.png", "episode001_class3.png"]
    model = AutoModelForFewShotSegmentation.from_pretrained(tmp_path / "model")
    processor = json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.485, 0.456, 0.406] and processor["size"] == {"height": 64, "width": 64}
    assert model.config.backbone == "resnet18" and json.loads((tmp_path / "results.json").read_text())["steps"] == 6
    assert model.config.image_size == 64                      # the config says the size the run used, as the processor


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, fashion_like):
    full = train_segmentation(_args(tmp_path / "full", fashion_like))
    part = train_segmentation(_args(tmp_path / "split", fashion_like, stop_after_steps=3, save_model=False))
    assert part["interrupted"] and part["steps"] == 3
    resumed = train_segmentation(_args(tmp_path / "split", fashion_like, resume=True))
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 6
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["results"] == resumed["results"]
    with pytest.raises(RunMismatchError, match="fold: 0 there, 1 here"):
        train_segmentation(_args(tmp_path / "split", fashion_like, resume=True, fold=1))


def test_backbone_pretraining_stage_trains_then_freezes_and_resumes_exactly(tmp_path, fashion_like):
    kw = dict(pretrain_backbone_steps=4, pretrain_batch_size=2, max_steps=2, eval_shots="1", eval_episodes=4)
    torch.manual_seed(0)                                               # the run's seed: the same initial backbone
    before = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet18")).backbone.state_dict()
    full = train_segmentation(_args(tmp_path / "full", fashion_like, **kw))
    assert full["backbone_pretraining"]["steps"] == 4 and full["steps"] == 2
    trained = load_file(tmp_path / "full" / "backbone" / "final" / "backbone.safetensors")
    saved = load_file(tmp_path / "full" / "model" / "model.safetensors")
    assert "fc.weight" not in trained and "fc.weight" not in before                  # the classifier: never held
    assert not torch.equal(trained["layer3.0.conv1.weight"], before["layer3.0.conv1.weight"])   # it trained
    assert not torch.equal(trained["bn1.running_mean"], before["bn1.running_mean"])
    # then frozen: the HSNet steps leave it as stage 0 wrote it
    assert all(torch.equal(saved[f"backbone.{k}"], v) for k, v in trained.items())
    # interrupted inside stage 0, resumed: bit-identical to the uninterrupted run
    part = train_segmentation(_args(tmp_path / "split", fashion_like, stop_after_steps=3, save_model=False, **kw))
    assert part["interrupted"] and part["backbone_pretraining"]["steps"] == 3
    resumed = train_segmentation(_args(tmp_path / "split", fashion_like, resume=True, **kw))
    assert resumed["backbone_pretraining"]["resumed_from_step"] == 2
    again = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], again[k]) for k in saved) and full["results"] == resumed["results"]
    # a resumed run whose stage 0 is complete loads it and skips it
    third = train_segmentation(_args(tmp_path / "split", fashion_like, resume=True, **kw))
    assert third["backbone_pretraining"]["loaded"].endswith("backbone.safetensors")
    final = tmp_path / "split" / "backbone" / "final" / "backbone.safetensors"
    data = bytearray(final.read_bytes())
    data[-8:] = b"\x00" * 8                                            # damaged: named, not loaded
    final.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="backbone.safetensors"):
        train_segmentation(_args(tmp_path / "split", fashion_like, resume=True, **kw))


def test_backbone_weights_from_a_fewshot_classifier(tmp_path, fashion_like):
    source = ProtoNetForFewShotClassification(ProtoNetConfig(backbone="resnet18"))
    source.save_pretrained(tmp_path / "protonet")
    (tmp_path / "protonet" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3,
                                                                                 "image_std": [0.5] * 3}))
    res = train_segmentation(_args(tmp_path / "run", fashion_like, max_steps=1, eval_shots="1", save_model=True,
                                   backbone_weights=str(tmp_path / "protonet" / "model.safetensors")))
    assert res["backbone_weights"]["missing_classifier"] == [] and res["backbone_weights"]["unused_classifier"] == []
    # the backbone's own normalisation is used for the episodes (normalization=auto) and saved with the model
    processor = json.loads((tmp_path / "run" / "model" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.5] * 3
    loaded = load_file(tmp_path / "run" / "model" / "model.safetensors")
    torch.testing.assert_close(loaded["backbone.layer3.0.conv1.weight"], source.backbone.layer3[0].conv1.weight)
    import timm  # a whole classifier's weights: its head is left out, named
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.safetensors")
    res = train_segmentation(_args(tmp_path / "whole", fashion_like, max_steps=1, eval_shots="1", save_model=False,
                                   backbone_weights=str(tmp_path / "resnet18.safetensors")))
    assert res["backbone_weights"]["unused_classifier"] == ["fc.bias", "fc.weight"]
    wrong = ProtoNetForFewShotClassification(ProtoNetConfig(backbone="resnet34"))
    wrong.save_pretrained(tmp_path / "rn34")
    with pytest.raises(ValueError, match=r"do not fit resnet18: 0 with other shapes .*unexpected \['layer1.2"):
        train_segmentation(_args(tmp_path / "bad", fashion_like, max_steps=1,
                                 backbone_weights=str(tmp_path / "rn34" / "model.safetensors")))


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def test_folder_dataset_run_crosses_epochs_and_resumes_exactly(tmp_path, segmentation_folders):
    # FSS-1000 layout: 2 training classes x 3 images = 3 steps per epoch at batch 2, so 5 steps cross an epoch
    root = segmentation_folders["root"]
    kw = dict(dataset="fss1000", split_dir=str(segmentation_folders["fss_splits"]), max_steps=5, eval_shots="1,2", eval_episodes=6)
    full = train_segmentation(_args(tmp_path / "full", root, **kw))
    assert [(r["shot"], r["episodes"], r["classes"]) for r in full["results"]] == [(1, 6, [3, 4]), (2, 6, [3, 4])]
    train_segmentation(_args(tmp_path / "split", root, stop_after_steps=4, save_model=False, **kw))
    resumed = train_segmentation(_args(tmp_path / "split", root, resume=True, **kw))
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 5
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and full["results"] == resumed["results"]
    pascal = train_segmentation(_args(tmp_path / "pascal", root, dataset="pascal5i", fold=1, max_steps=2,
                                      eval_shots="1", eval_episodes=4, save_model=False,
                                      split_dir=str(segmentation_folders["pascal_splits"])))
    assert pascal["results"][0]["classes"] == [5, 6, 7, 8, 9] and pascal["results"][0]["episodes"] == 4


@pytest.mark.parametrize("argument,value,message", [("--fold", "2", "`fold` must be in 0..1 for fashion_mnist"),
                                                    ("--dataset", "pascal5i", "`data_dir` must be the folder holding"),
                                                    ("--pretrain_lr", "0", "`pretrain_lr` must be a positive number"),
                                                    ("--eval_shots", "1,x", "`eval_shots` must be comma-separated"),
                                                    ("--batch_size", "0", "`batch_size` must be an integer >= 1")])
def test_script_reports_a_bad_argument_in_one_line(tmp_path, argument, value, message):
    proc = subprocess.run([sys.executable, "scripts/finetune_hsnet.py", argument, value, "--output_dir", str(tmp_path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_two_real_processes(tmp_path, fashion_like):
    out = tmp_path / "ddp"
    args = dict(backbone="resnet18", image_size=64, batch_size=2, max_steps=3, eval_episodes=10, eval_shots="1",
                checkpoint_every=2, data_dir=fashion_like, output_dir=out, pretrain_backbone_steps=2,
                pretrain_batch_size=2)
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "scripts/finetune_hsnet.py", *[f"--{k}={v}" for k, v in args.items()]]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["num_processes"] == 2 and res["distributed_type"] == "DistributedType.MULTI_CPU"
    assert res["steps"] == 3 and res["replicas_in_sync"] is True
    assert res["backbone_pretraining"]["steps"] == 2 and res["backbone_pretraining"]["num_processes"] == 2
    assert res["results"][0]["episodes"] == 10                       # every test episode counted once over 2 ranks
    assert (out / "checkpoints" / "step_00000002" / "rng_1.safetensors").is_file()
