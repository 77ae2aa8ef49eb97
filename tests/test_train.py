"""Training loop: loss, exact resume, bf16, 2 real processes, the command-line script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relzoo.train import ClassifierTrainingArguments, smoothed_cross_entropy, train_classifier
from relzoo.train.classification import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = json.dumps(dict(widths=[32, 32, 64, 64, 128], stem_width=32, layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3]))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _args(out, **kw):
    base = dict(model="san10_patch", model_kwargs=TINY, dataset="digits", train_samples=24, eval_samples=16,
                image_size=64, batch_size=8, eval_batch_size=8, epochs=2, checkpoint_every=2, output_dir=str(out),
                log_every=1, seed=3)
    base.update(kw)
    return ClassifierTrainingArguments(**base)


def test_smoothed_cross_entropy_matches_the_official_definition():
    torch.manual_seed(0)
    logits, target, eps = torch.randn(4, 6), torch.tensor([0, 5, 2, 2]), 0.1
    q = torch.full((4, 6), eps / 5)
    q[torch.arange(4), target] = 1 - eps
    expected = -(q * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, eps), expected)
    assert not torch.allclose(expected, torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps))
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, 0.0),
                               torch.nn.functional.cross_entropy(logits, target))


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    full = train_classifier(_args(tmp_path / "full"))
    assert full["steps"] == 6 and full["resumed_from_step"] is None and full["replicas_in_sync"] is True
    part = train_classifier(_args(tmp_path / "split", stop_after_steps=4))
    assert part["interrupted"] and part["steps"] == 4
    ckpts = tmp_path / "split" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000002", "step_00000004"]
    (ckpts / ".tmp-step_00000005").mkdir()  # a save killed half-way must be ignored
    assert latest_checkpoint(ckpts).name == "step_00000004"
    resumed = train_classifier(_args(tmp_path / "split", resume=True))
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6  # resumes mid-epoch (3 steps per epoch)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["top1"] == full["top1"] and resumed["eval_loss"] == full["eval_loss"]


def test_outputs_are_a_hub_ready_folder(tmp_path):
    from transformers import AutoModelForImageClassification

    res = train_classifier(_args(tmp_path, epochs=1, checkpoint_every=0))
    folder = Path(res["model_dir"])
    assert {p.name for p in folder.iterdir()} == {"README.md", "config.json", "model.safetensors",
                                                  "preprocessor_config.json"}
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "top1" in card and "digits" in card
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert model.config.id2label[3] == "3" and model.config.num_labels == 10
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 <= results["top1"] <= results["top5"] <= 1 and results["eval_samples"] == 16


def test_bf16_autocast_and_bad_arguments(tmp_path):
    res = train_classifier(_args(tmp_path, mixed_precision="bf16", epochs=1, checkpoint_every=0, save_model=False))
    assert res["steps"] == 3 and res["last_train_loss"] == res["last_train_loss"]  # not NaN
    with pytest.raises(ValueError, match="`schedule`"):
        train_classifier(_args(tmp_path, schedule="linear"))
    with pytest.raises(ValueError, match="`model_kwargs` must be a JSON object"):
        train_classifier(_args(tmp_path, model_kwargs="[1]"))


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def test_script_command_line(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "scripts/train_classifier.py", "--model", "san10_pair", "--model_kwargs",
                           TINY, "--dataset", "digits", "--train_samples", "16", "--eval_samples", "8",
                           "--image_size", "64", "--batch_size", "8", "--max_steps", "1", "--output_dir", str(out)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["steps"] == 1


@pytest.mark.slow
def test_two_real_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "scripts/train_classifier.py", "--model", "san10_patch", "--model_kwargs",
           TINY, "--dataset", "digits", "--train_samples", "32", "--eval_samples", "20", "--image_size", "64",
           "--batch_size", "4", "--max_steps", "3", "--checkpoint_every", "2", "--output_dir", str(out)]
    bin_dir = Path(sys.executable).parent
    env = _env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["num_processes"] == 2 and res["distributed_type"] == "DistributedType.MULTI_CPU"
    assert res["steps"] == 3 and res["eval_samples"] == 20  # gather_for_metrics drops the padding duplicates
    assert res["replicas_in_sync"] is True  # DDP weights and re-estimated BN statistics agree on both ranks
    assert (out / "checkpoints" / "step_00000002" / "random_states_1.pkl").is_file()  # each rank's RNG saved
