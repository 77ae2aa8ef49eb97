"""Training runs that never lose or mix work (issue 21): one run owns its output folder (lock), a previous run is
kept unless --overwrite, the run identity covers every argument that changes the weights, an unwritable folder or a
full disk is said plainly, and a divergent run or non-finite data stops with a named error instead of saving."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import ROOT, TINY, _args, _env

from relzoo.train import train_classifier
from relzoo.train.checkpoints import CheckpointWriteError, RunMismatchError
from relzoo.train.engine import TrainingDivergedError, TrainingEngine, make_accelerator, non_finite_inputs
from relzoo.train.run_folder import LOCK, RunFolderError

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_a_second_run_into_a_running_runs_folder_refuses_naming_it(tmp_path):
    """Two trainings into one output_dir both ran before (one died on the other's temporary checkpoint name and the
    folder ended with two seeds' checkpoints). The second now refuses in one line, naming the first."""
    out = tmp_path / "run"
    cmd = [sys.executable, "scripts/train_classifier.py", "--model", "san10_patch", "--model_kwargs", TINY,
           "--dataset", "digits", "--train_samples", "32", "--eval_samples", "16", "--image_size", "64",
           "--batch_size", "4", "--epochs", "100000", "--max_steps", "0", "--checkpoint_every", "1000", "--output_dir", str(out)]
    first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / LOCK).is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == first.pid and "train_classifier.py" in holder["command"]
        with pytest.raises(RunFolderError, match=f"in use by another run: pid {first.pid} on "):
            train_classifier(_args(out, seed=4))
        proc = subprocess.run(cmd + ["--seed", "4"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"in use by another run: pid {first.pid}" in proc.stderr.strip().splitlines()[-1]
    finally:
        first.kill()
        first.wait()
    assert first.returncode != 0


def test_a_dead_runs_lock_is_taken_over_and_every_lock_is_released(tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                     "started": "yesterday", "command": "train.py"}))
    res = train_classifier(_args(tmp_path / "run", epochs=1, checkpoint_every=0))
    assert res["steps"] == 3 and "taking over the lock of a run that is no longer running" in capsys.readouterr().out
    assert not (tmp_path / "run" / LOCK).exists()                     # released at the end
    part = train_classifier(_args(tmp_path / "part", stop_after_steps=2))
    assert part["interrupted"] and not (tmp_path / "part" / LOCK).exists()
    with pytest.raises(ValueError):
        train_classifier(_args(tmp_path / "bad", dataset=str(tmp_path / "nowhere")))
    assert not (tmp_path / "bad" / LOCK).exists()                     # released on errors too


def test_a_previous_run_is_kept_unless_overwrite_or_resume(tmp_path, capsys):
    first = train_classifier(_args(tmp_path))
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(RunFolderError, match=r"holds a previous run \(results.json, checkpoints, model\): pass "
                                             r"--resume to continue it or --overwrite"):
        train_classifier(_args(tmp_path, seed=9))
    assert (tmp_path / "results.json").read_text() == before
    resumed = train_classifier(_args(tmp_path, resume=True))          # the finished run: nothing left to train
    assert resumed["steps"] == first["steps"] and resumed["resumed_from_step"] == 6
    again = train_classifier(_args(tmp_path, seed=9, overwrite=True))
    assert "--overwrite: removed the previous run's results.json, checkpoints, model" in capsys.readouterr().out
    assert again["resumed_from_step"] is None
    seeds = {json.loads((c / "run.json").read_text())["run"]["seed"] for c in (tmp_path / "checkpoints").iterdir()}
    assert seeds == {9}                                                # no checkpoint of the first run left


def test_resume_refuses_other_optimiser_settings_before_reading_weights(tmp_path):
    """A run stopped, then a run with another learning rate in the same folder resumed from the first run's step
    (the run identity omitted the optimiser settings) and results.json described settings the weights never saw."""
    train_classifier(_args(tmp_path, stop_after_steps=4))
    for change, field in ((dict(lr=0.5), "lr: None there, 0.5 here"), (dict(momentum=0.5), "momentum: 0.9 there"),
                          (dict(label_smoothing=0.0), "label_smoothing: 0.1 there, 0.0 here")):
        with pytest.raises(RunMismatchError, match=field):
            train_classifier(_args(tmp_path, resume=True, **change))
    resumed = train_classifier(_args(tmp_path, resume=True, eval_samples=8, log_every=2))   # evaluation, logging: ok
    assert resumed["resumed_from_step"] == 4


def test_an_output_dir_that_is_a_file_or_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        train_classifier(_args(tmp_path / "file"))
    proc = subprocess.run([sys.executable, "scripts/train_classifier.py", "--output_dir", str(tmp_path / "file")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("is a file, not a folder")
    import relzoo.train.run_folder as run_folder

    real_open = os.open

    def read_only(path, flags, *args):   # as root, chmod does not stop writes: simulate a read-only mount
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(run_folder.os, "open", read_only)
    calls = []
    monkeypatch.setattr("relzoo.data.load_image_dataset", lambda *a: calls.append(a))
    with pytest.raises(RunFolderError, match=r"`output_dir` .*ro' cannot be written \(Permission denied\)"):
        train_classifier(_args(tmp_path / "ro"))
    assert calls == []                                                # before any data is loaded


def test_a_full_disk_at_a_checkpoint_is_said_plainly_and_leaves_nothing_partial(tmp_path, monkeypatch):
    import relzoo.train.checkpoints as checkpoints

    real_save, calls = torch.save, []

    def disk_full_at_step_4(obj, path, *args, **kwargs):
        calls.append(Path(path).parent.name)
        if "step_00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", disk_full_at_step_4)
    with pytest.raises(CheckpointWriteError, match="could not write checkpoint step_00000004 .*: the disk is full; "
                                                   "the partial checkpoint was removed"):
        train_classifier(_args(tmp_path))
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step_00000002"]                                  # no .tmp-step_* keeping the disk full
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert train_classifier(_args(tmp_path, resume=True))["resumed_from_step"] == 2


def test_a_divergent_run_stops_and_saves_nothing(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"the training loss became (nan|inf) at step \d+ \(learning "
                                                    r"rate [0-9.e+]+\): the run diverged"):
        train_classifier(_args(tmp_path / "a", lr=1e30))
    assert not (tmp_path / "a" / "model").exists() and not (tmp_path / "a" / "results.json").exists()
    cmd = [sys.executable, "scripts/train_classifier.py", "--model", "san10_patch", "--model_kwargs", TINY,
           "--dataset", "digits", "--train_samples", "16", "--eval_samples", "8", "--image_size", "64",
           "--batch_size", "4", "--max_steps", "3", "--output_dir", str(tmp_path / "b")]
    proc = subprocess.run(cmd + ["--lr", "1e30"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "the run diverged" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(cmd + ["--lr", "inf"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "`lr` must be a positive number" in proc.stderr


def test_a_non_finite_training_batch_stops_before_the_forward_pass(tmp_path):
    """One forward pass with a NaN pixel poisoned every BatchNorm running statistic of SAN (every later evaluation
    NaN). The engine checks each batch first."""
    accelerator = make_accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(2, 3, 8, 8))
    images = torch.randn(8, 3, 8, 8)
    images[5, 0, 2, 2] = float("nan")
    data = torch.utils.data.DataLoader([{"pixel_values": x, "labels": 0} for x in images], batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, data = accelerator.prepare(model, optimizer, data)
    engine = TrainingEngine(accelerator, model, optimizer, scheduler, data, tmp_path, {"x": 1}, total_steps=4)
    seen = []

    def step(batch):
        seen.append(batch["pixel_values"].shape[0])
        return model(batch["pixel_values"]).logsumexp(-1).mean()

    with pytest.raises(TrainingDivergedError, match="the training batch of step 2 holds NaN or infinite values in "
                                                    "pixel_values"):
        engine.fit(step)
    assert seen == [4] and bool(torch.isfinite(model[1].running_mean).all())
    assert non_finite_inputs({"a": torch.tensor([1.0, float("inf")]), "b": torch.tensor([1])}) == ["a"]


@pytest.mark.parametrize("script, argv, expected", [
    ("classifier", ["--model", "resnet_nope"], "`model` must be a timm model name"),
    ("classifier", ["--dataset", "nope"], "`dataset` must be one of"),
    ("classifier", ["--train_split", "nope"], "`dataset` 'digits', `train_split` 'nope', `eval_split` 'test': "
                                              "`split` for digits must be 'train' or 'test'"),
    ("classifier", ["--model_kwargs", '{"nope": 1}'], "`model` 'resnet10t', `model_kwargs` '{\"nope\": 1}': TypeError"),
    ("classifier", ["--batch_size", "5000"], "`batch_size` 5000 x 1 processes is larger than the training set"),
    ("classifier", ["--batch_size", "1"], "`batch_size` must be at least 2 for resnet10t: BatchNorm"),
    ("classifier", ["--image_size", "30000"], "`image_size` must be at most 4096"),
    ("fewshot", ["--n_way", "20"], "5 usable classes, but episodes need 20"),
    ("fewshot", ["--n_shot", "1000"], "have fewer than 1010 images"),
    ("fewshot", ["--backbone_kwargs", '{"output_stride": 7}'], "`backbone_kwargs` '{\"output_stride\": 7}': "
                                                               "AssertionError (the library gave no message)"),
    ("fewshot", ["--backbone", "nope18"], "`backbone` must be a timm model name"),
    ("fewshot", ["--eval_way", "10"], "the test episodes of digits:test (10-way, up to 5-shot, 15 queries per class) "
                                      "cannot be drawn: 5 usable classes, but episodes need 10"),
    ("fewshot", ["--eval_queries", "1000"], "cannot be drawn: 0 usable classes"),
    ("fewshot", ["--eval_sets", "nope:test:5,6,7,8,9"], "`eval_sets` 'nope:test:5,6,7,8,9': `dataset` must be one of"),
    ("fewshot", ["--eval_sets", "digits:test:5,6,7,8,19"], "`eval_sets` entry digits:test: classes [19] have no image"),
    ("segmentation", ["--backbone", "vit_tiny_patch16_224"], "HSNet needs a CNN with feature maps at output strides "
                                                             "[8, 16, 32]; VisionTransformer has strides [16]"),
])
def test_arguments_that_do_not_fit_the_data_or_model_are_one_line_exit_2(tmp_path, fashion_like, monkeypatch, capsys,
                                                                         script, argv, expected):
    """Each of these was a traceback with exit 1 (RuntimeError: Unknown model, a bare AssertionError, ...) or was found
    only after training."""
    from relzoo.train.cli import run_script

    monkeypatch.setenv("RELZOO_FASHION_MNIST_DIR", str(fashion_like))
    base = {"classifier": ["--model", "resnet10t", "--dataset", "digits", "--max_steps", "1", "--batch_size", "4",
                           "--image_size", "32", "--eval_samples", "8"],
            "fewshot": ["--backbone", "resnet10t", "--dataset", "digits", "--train_classes", "0,1,2,3,4",
                        "--eval_sets", "digits:test:5,6,7,8,9", "--max_steps", "1", "--image_size", "32"],
            "segmentation": ["--max_steps", "1", "--image_size", "64", "--data_dir", str(fashion_like)]}[script]
    from relzoo.train import ClassifierTrainingArguments
    from relzoo.train.fewshot import FewShotTrainingArguments, train_fewshot
    from relzoo.train.segmentation import SegmentationTrainingArguments, train_segmentation

    cls, fn = {"classifier": (ClassifierTrainingArguments, train_classifier),
               "fewshot": (FewShotTrainingArguments, train_fewshot),
               "segmentation": (SegmentationTrainingArguments, train_segmentation)}[script]
    monkeypatch.setattr(sys, "argv", [f"train_{script}.py"])     # argparse names the program from argv[0]
    with pytest.raises(SystemExit) as err:
        run_script(cls, fn, [*base, *argv, "--output_dir", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    message = stderr.strip().splitlines()[-1]          # (datasets prints its progress bars above)
    assert err.value.code == 2 and message.startswith(f"train_{script}.py: error: ") and expected in message
    assert "Traceback" not in stderr
