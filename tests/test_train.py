"""Training loop: loss, exact resume, bf16, 2 real processes, the command-line script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from relzoo.train import ClassifierTrainingArguments, smoothed_cross_entropy, train_classifier
from relzoo.train.checkpoints import RunMismatchError, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = json.dumps(dict(widths=[32, 32, 64, 64, 128], stem_width=32, layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3]))


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


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
    from relzoo.hub import check_export_folder

    names = {p.name for p in folder.iterdir()}
    assert {n for n in names if not n.endswith(".py")} == {"README.md", "config.json", "model.safetensors",
                                                           "preprocessor_config.json", "checksums.json"}
    assert "relzoo_models_san.py" in names and sorted(check_export_folder(folder)) == sorted(names)  # pushable
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
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([os.environ["PYTHONPATH"], str(ROOT)]))
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
    assert (out / "checkpoints" / "step_00000002" / "rng_1.safetensors").is_file()  # each rank's RNG saved


@pytest.mark.parametrize("field, value, expected", [
    ("log_every", 0, "`log_every` must be an integer >= 1, got 0"),
    ("train_samples", 0, "`train_samples` must be an integer >= 1 or None (all), got 0"),
    ("eval_samples", -5, "`eval_samples` must be an integer >= 1 or None (all), got -5"),
    ("keep_checkpoints", 0, "`keep_checkpoints` must be an integer >= 1, got 0"),
    ("checkpoint_every", -1, "`checkpoint_every` must be an integer >= 0, got -1"),
    ("crop_pct", 0.0, "`crop_pct` must be in (0, 1], got 0.0"),
    ("lr", float("nan"), "`lr` must be a positive number"),
    ("in_chans", 2, "`in_chans` must be 1 or 3, got 2"),
])
def test_bad_arguments_are_named_before_anything_loads(tmp_path, field, value, expected):
    with pytest.raises(ValueError) as err:
        _args(tmp_path, **{field: value})
    assert expected in str(err.value)
    assert not tmp_path.joinpath("checkpoints").exists()


def test_script_reports_a_bad_argument_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/train_classifier.py", "--log_every", "0", "--output_dir",
                           str(tmp_path)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("error: `log_every` must be an integer >= 1, got 0")


def _image_folder(root: Path, per_class: int = 6) -> Path:
    """imagefolder root/{train,test}/{a,b}/*.jpg with one truncated JPEG in train/b."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    broken = root / "train" / "b" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    return broken


def test_unreadable_image_is_named_or_skipped_and_counted(tmp_path):
    from relzoo.data import UnreadableImageError

    broken = _image_folder(tmp_path / "data")
    kw = dict(dataset=str(tmp_path / "data"), train_samples=None, eval_samples=None, epochs=2, batch_size=4,
              checkpoint_every=0, save_model=False, recalibrate_bn_batches=1)
    with pytest.raises(UnreadableImageError, match=f"unreadable image '{broken}'.*--skip_unreadable_images"):
        train_classifier(_args(tmp_path / "stop", **kw))
    res = train_classifier(_args(tmp_path / "skip", skip_unreadable_images=True, **kw))
    assert res["steps"] == 6 and res["skipped_unreadable_images"] == 1  # seen in both epochs, counted once
    assert res["skipped_unreadable_files"] == [repr(str(broken))] and res["eval_samples"] == 12


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "train" / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"`dataset` folder .*data' holds no image files \(expected an imagefolder"):
        train_classifier(_args(tmp_path / "out", dataset=str(tmp_path / "data")))


def _weights(folder: Path) -> dict:
    return load_file(folder / "model" / "model.safetensors")


@pytest.mark.parametrize("damage", ["optimizer.pt", "model.safetensors", "state.json", "rng_0.json", "missing"])
def test_resume_names_a_damaged_checkpoint_and_falls_back_to_the_previous_one(tmp_path, damage, capsys):
    full = train_classifier(_args(tmp_path / "full"))
    train_classifier(_args(tmp_path / "split", stop_after_steps=4))
    newest = tmp_path / "split" / "checkpoints" / "step_00000004"
    if damage == "missing":
        (newest / "optimizer.pt").unlink()
        expected = "optimizer.pt' is missing"
    else:
        data = bytearray((newest / damage).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (newest / damage).write_bytes(bytes(data))
        expected = f"{damage}' is damaged"
    resumed = train_classifier(_args(tmp_path / "split", resume=True))
    out = capsys.readouterr().out
    assert "skipping checkpoint step_00000004: " in out and expected in out
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 6
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the fallback still resumes exactly
    assert resumed["eval_loss"] == full["eval_loss"]


def test_resume_without_any_usable_checkpoint_or_from_another_run_says_so(tmp_path, fashion_like, monkeypatch):
    monkeypatch.setenv("RELZOO_FASHION_MNIST_DIR", str(fashion_like))
    train_classifier(_args(tmp_path, stop_after_steps=4))
    with pytest.raises(RunMismatchError) as err:  # before any weights are read: no state-dict mismatch dump
        train_classifier(_args(tmp_path, resume=True, model="san10_pair"))
    message = str(err.value)
    assert "\n" not in message and "model: 'san10_patch' there, 'san10_pair' here" in message
    with pytest.raises(RunMismatchError, match="dataset: 'digits' there, 'fashion_mnist' here"):
        train_classifier(_args(tmp_path, resume=True, dataset="fashion_mnist", train_samples=24))
    for ckpt in (tmp_path / "checkpoints").iterdir():
        (ckpt / "checksums.json").unlink()
    with pytest.raises(RuntimeError, match=r"none of the 2 checkpoints .* is usable .*checksums\.json' is missing"):
        train_classifier(_args(tmp_path, resume=True))


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a hostile checkpoint file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["optimizer.pt", "scheduler.pt", "custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_resume_never_unpickles_code_whatever_the_manifest_says(tmp_path, where, capsys):
    """A checkpoint is data: a pickled payload in any file, with checksums.json regenerated to match, never runs
    (accelerate's load_state unpickled custom_checkpoint_0.pkl with weights_only=False). Files relzoo does not write
    (accelerate's *.pkl) are never read; its own .pt files are read with weights_only=True and refused."""
    from relzoo.checksums import write_checksums

    train_classifier(_args(tmp_path, stop_after_steps=4, checkpoint_every=4))
    ckpt = tmp_path / "checkpoints" / "step_00000004"
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(marker)}, ckpt / where)
    write_checksums(ckpt, every_file=True)
    if where.endswith(".pt"):
        with pytest.raises(RuntimeError, match=f"none of the 1 checkpoints .*{where}' holds Python code or objects besides tensors"):
            train_classifier(_args(tmp_path, resume=True, checkpoint_every=4))
    else:   # not a file relzoo reads: the resume goes on from the intact parts
        assert train_classifier(_args(tmp_path, resume=True, checkpoint_every=4))["resumed_from_step"] == 4
    assert not marker.exists()
