"""Episodic training: recipe pieces, exact resume, evaluation with confidence intervals, the Hub folder and its card,
attention pictures, 2 real processes, and named argument errors."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relzoo import AutoModelForFewShotClassification
from relzoo.metrics import mean_confidence_interval
from relzoo.train.checkpoints import RunMismatchError
from relzoo.train.fewshot import FewShotTrainingArguments, normalize_gradients, staircase, train_fewshot

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


BASE = dict(backbone="test_resnet", backbone_kwargs='{"output_stride": 8}', dataset="digits", train_classes="0,1,2,3,4",
            eval_sets="digits:test:5,6,7,8,9", image_size=32, n_way=3, n_shot=2, n_query=2, max_steps=6,
            eval_episodes=20, eval_shots="1,2", eval_queries=3, checkpoint_every=2, log_every=1, seed=1,
            simclr_probability=0.5)


def _args(out, **kw):
    return FewShotTrainingArguments(**{**BASE, "output_dir": str(out), **kw})


def test_normalized_gradients_and_staircase():
    net = torch.nn.Linear(3, 2)
    net.weight.grad, net.bias.grad = torch.full((2, 3), 2.0), torch.full((2,), 2.0)
    norm = normalize_gradients(net)
    assert math.isclose(norm, math.sqrt(8 * 4), rel_tol=1e-6)
    total = torch.cat([net.weight.grad.flatten(), net.bias.grad]).norm()
    assert math.isclose(float(total), 1.0, rel_tol=1e-6)
    net.weight.grad, net.bias.grad = torch.full((2, 3), 1e-6), torch.zeros(2)   # tiny gradients: floored norm
    normalize_gradients(net)
    torch.testing.assert_close(net.weight.grad, torch.full((2, 3), 1e-6 / math.sqrt(1e-5)))
    decay = staircase(2000)
    assert decay(1999) == 1.0 and decay(2000) == 0.915193802145601 and math.isclose(decay(100_000), 0.9152 ** 50,
                                                                                     rel_tol=1e-3)


def test_confidence_interval():
    mean, ci = mean_confidence_interval([0.5, 0.7, 0.6, 0.8])
    assert math.isclose(mean, 0.65) and math.isclose(ci, 1.96 * math.sqrt(0.05 / 3 / 4))
    assert mean_confidence_interval([0.3]) == (0.3, 0.0)
    with pytest.raises(ValueError, match="empty"):
        mean_confidence_interval([])


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    full = train_fewshot(_args(tmp_path / "full"))
    assert full["steps"] == 6 and full["replicas_in_sync"] is True
    part = train_fewshot(_args(tmp_path / "split", stop_after_steps=3, save_model=False))
    assert part["interrupted"] and part["steps"] == 3
    resumed = train_fewshot(_args(tmp_path / "split", resume=True))
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 6   # the step-2 checkpoint, then 4 more
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["results"] == resumed["results"]
    with pytest.raises(RunMismatchError, match="model: 'crosstransformer' there, 'protonet' here"):
        train_fewshot(_args(tmp_path / "split", resume=True, model="protonet"))


def test_results_card_folder_and_attention_pictures(tmp_path):
    res = train_fewshot(_args(tmp_path, attention_maps=2, checkpoint_every=0))
    rows = res["results"]
    assert [(r["dataset"], r["shot"], r["episodes"], r["classes"]) for r in rows] == [
        ("digits", 1, 20, [5, 6, 7, 8, 9]), ("digits", 2, 20, [5, 6, 7, 8, 9])]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 < r["ci95"] < 0.5 and r["way"] == 5 and r["queries"] == 3
    assert res["simclr_episodes_this_process"] + 0 <= res["episodes_this_process"] == 6
    model = AutoModelForFewShotClassification.from_pretrained(tmp_path / "model")
    assert type(model).__name__ == "CrossTransformerForFewShotClassification"
    card = (tmp_path / "model" / "README.md").read_text()
    first = rows[0]
    assert f"{100 * first['accuracy']:.2f} ± {100 * first['ci95']:.2f}" in card
    assert "model-index" in card and "trained by relzoo" in card and '"simclr_probability": 0.5' in card
    assert json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())["image_mean"] == [0.5] * 3
    pictures = sorted((tmp_path / "attention").glob("*.png"))
    assert len(pictures) == 2 and res["attention_maps"] == [str(p) for p in pictures]
    from PIL import Image

    with Image.open(pictures[0]) as im:
        assert im.size[0] == 6 * (32 * 3 + 4)          # the query, then one support image per class (5-way)


def test_protonet_with_the_plain_recipe_and_variable_episodes(tmp_path):
    res = train_fewshot(_args(tmp_path, model="protonet", recipe="plain", variable_episodes=True, checkpoint_every=0,
                              save_model=False, eval_shots="1"))
    assert res["steps"] == 6 and len(res["results"]) == 1 and res["lr"] == 1e-3


@pytest.mark.parametrize("field, value, expected", [
    ("eval_sets", "digits:test:3,5,6,7,8", "tests classes [3] that are training classes"),
    ("eval_sets", "digits:test:all", "uses the training dataset with all classes"),
    ("eval_sets", "digits-test", "dataset:split:classes"),
    ("eval_shots", "1,x", "`eval_shots` must be comma-separated positive ints"),
    ("train_classes", "1,1,2", "distinct comma-separated class ids"),
    ("simclr_probability", 1.5, "`simclr_probability` must be in [0, 1]"),
    ("recipe", "sgd", "`recipe` must be one of ('official', 'plain')"),
    ("n_way", 1, "`n_way` must be an integer >= 2"),
    ("backbone_kwargs", "[1]", "`backbone_kwargs` must be a JSON object"),
])
def test_bad_arguments_are_named(tmp_path, field, value, expected):
    with pytest.raises(ValueError) as err:
        _args(tmp_path, **{field: value})
    assert expected in str(err.value)


def test_attention_pictures_need_crosstransformers(tmp_path):
    with pytest.raises(ValueError, match="`attention_maps` needs `model` crosstransformer"):
        _args(tmp_path, model="protonet", attention_maps=1)


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_script_reports_a_bad_argument_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/train_fewshot.py", "--n_query", "0", "--output_dir",
                           str(tmp_path)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("error: `n_query` must be an integer >= 1, got 0")


@pytest.mark.slow
def test_two_real_processes(tmp_path):
    out = tmp_path / "ddp"
    cli = [f"--{k}={v}" for k, v in {**BASE, "max_steps": 3, "output_dir": out}.items()]
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "scripts/train_fewshot.py", *cli]
    env = _env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["num_processes"] == 2 and res["distributed_type"] == "DistributedType.MULTI_CPU"
    assert res["steps"] == 3 and res["replicas_in_sync"] is True
    assert all(r["episodes"] == 20 for r in res["results"])       # every test episode counted once over 2 ranks
    assert (out / "checkpoints" / "step_00000002" / "rng_1.safetensors").is_file()


def test_episodes_from_pixels_agree_with_episodes_from_features(tmp_path):
    """ProtoNet's official test-time BatchNorm (each episode's support moments) runs every episode through the whole
    model; with running statistics that path must give exactly what the embed-once path gives."""
    from accelerate import Accelerator

    from relzoo.train.fewshot import build_model, embed_pool, evaluate_episodes, load_split, read_pool

    accelerator = Accelerator(cpu=True)
    ds = load_split("digits", "test")
    rows = [i for i, label in enumerate(ds["label"]) if label >= 5][:60]
    labels = [ds[i]["label"] for i in rows]
    for test_bn_stats in ("running", "support"):
        torch.manual_seed(0)
        model = build_model(_args(tmp_path, model="protonet", test_bn_stats=test_bn_stats)).eval()
        assert model.config.test_bn_stats == test_bn_stats
        pixels, ok = read_pool(ds, rows, 32)
        assert all(ok) and pixels.shape == (60, 3, 32, 32)
        by_pixels = evaluate_episodes(model, pixels, labels, 3, 2, 3, 12, 0, accelerator, from_pixels=True)
        if test_bn_stats == "running":
            features, _ = embed_pool(model, ds, rows, 32, accelerator)
            assert evaluate_episodes(model, features, labels, 3, 2, 3, 12, 0, accelerator) == by_pixels
        else:
            assert not model.episode_independent_features and by_pixels["episodes"] == 12


@pytest.mark.parametrize("model", ["crosstransformer", "protonet"])
def test_unreadable_images_stop_the_run_or_are_skipped_and_counted(tmp_path, broken_image_folder, model):
    from relzoo.data import UnreadableImageError

    broken = broken_image_folder(tmp_path / "data", classes=6, per_class=8)
    kw = dict(dataset=str(tmp_path / "data"), train_classes="0,1,2", eval_sets=f"{tmp_path / 'data'}:test:3,4,5",
              eval_way=3, eval_shots="1", eval_queries=2, max_steps=8, checkpoint_every=0, save_model=False, simclr_probability=0,
              model=model)   # ProtoNet's test episodes run from pixels (test_bn_stats "support"), CTX's from features
    with pytest.raises(UnreadableImageError, match=f"unreadable image '{broken[0]}'"):
        train_fewshot(_args(tmp_path / "stop", **kw))
    res = train_fewshot(_args(tmp_path / "skip", skip_unreadable_images=True, **kw))
    assert res["steps"] == 8 and res["skipped_unreadable_images"] == 2
    assert res["skipped_unreadable_files"] == sorted(repr(str(p)) for p in broken)
    assert res["results"][0]["episodes"] == 20


def test_fewshot_table_runs_folds_and_seeds_and_keeps_finished_runs(tmp_path, fashion_like, monkeypatch, capsys):
    """scripts/fewshot_table.py: both class folds, several seeds, a table per fold with the spread across seeds;
    runs already in table.json with the same arguments are kept on a second call."""
    import importlib

    from transformers import HfArgumentParser

    from relzoo.train.fewshot import FewShotTrainingArguments

    HfArgumentParser(FewShotTrainingArguments)      # rewrites the fields' types in place, as any earlier run does
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fewshot_table
        fewshot_table = importlib.reload(fewshot_table)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    monkeypatch.setenv("RELZOO_FASHION_MNIST_DIR", str(fashion_like))
    tiny = ["--backbone=test_resnet", '--backbone_kwargs={"output_stride": 8}', "--image_size=32", "--n_way=3",
            "--n_shot=2", "--n_query=2", "--max_steps=2", "--eval_way=3", "--eval_shots=1,2", "--eval_queries=2",
            "--eval_episodes=4", "--eval_pool_per_class=6", "--log_every=1"]
    argv = ["--output_dir", str(tmp_path), "--rows", "0,2", "--seeds", "0,1", "--folds", "0,1", *tiny]
    table = fewshot_table.main(argv)
    runs = json.loads((tmp_path / "table.json").read_text())["runs"]
    assert sorted((r["fold"], r["seed"], r["row"]) for r in runs) == [(f, s, i) for f in (0, 1) for s in (0, 1)
                                                                    for i in (0, 2)]
    fold1 = next(r for r in runs if r["fold"] == 1)
    assert fold1["arguments"]["train_classes"] == "1,3,5,7,9" and fold1["results"][0]["classes"] == [0, 2, 4, 6, 8]
    assert table.count("| ProtoNet |") == 2 and table.count("| CTX |") == 2 and "Fold 1: trained on" in table
    assert " ± " in table.split("| ProtoNet |")[1].split("\n")[0]       # the spread across the two seeds
    capsys.readouterr()
    assert fewshot_table.main(argv) == table                            # nothing rerun
    assert capsys.readouterr().out.count("kept from") == 8


def test_attention_report_agrees_with_the_trainers_evaluation_and_measures_what_it_says(tmp_path, fashion_like,
                                                                                       monkeypatch, capsys):
    """scripts/fewshot_attention.py: its CTX accuracy is the trainer's evaluation of the same episodes; the attention
    statistics are those of uniform weights (largest 1/(K·P), entropy 1, top shot 1/K) and of one-hot weights."""
    from accelerate import Accelerator

    from relzoo import CrossTransformerConfig, CrossTransformerForFewShotClassification
    from relzoo.train.fewshot import _pool, embed_pool, evaluate_episodes, load_split

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fewshot_attention
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    uniform = torch.full((2, 4, 6, 5), 1 / 15)
    stats = fewshot_attention.attention_statistics(uniform, labels, torch.tensor([0, 1]))
    assert stats["count"] == 8
    assert abs(stats["largest"] / 8 - 1 / 15) < 1e-6 and abs(stats["entropy"] / 8 - 1) < 1e-6
    assert abs(stats["top_shot"] / 8 - 1 / 3) < 1e-6
    one_hot = torch.zeros(2, 4, 6, 5)
    one_hot[:, :, 1, 2] = one_hot[:, :, 4, 0] = 1
    stats = fewshot_attention.attention_statistics(one_hot, labels, torch.tensor([0, 1]))
    assert stats["largest"] == stats["top_shot"] == 8 and abs(stats["entropy"]) < 1e-6

    monkeypatch.setenv("RELZOO_FASHION_MNIST_DIR", str(fashion_like))
    torch.manual_seed(0)
    model = CrossTransformerForFewShotClassification(CrossTransformerConfig(
        backbone="test_resnet", backbone_kwargs={"output_stride": 8})).eval()
    model.save_pretrained(tmp_path / "m")
    rows = fewshot_attention.main([str(tmp_path / "m"), "--eval_set", "fashion_mnist:test:1,3,5,7,9", "--shots",
                                   "1,2", "--episodes", "4", "--queries", "2", "--image_size", "32", "--pool_per_class", "20",
                                   "--json", str(tmp_path / "r.json")])
    assert [r["shot"] for r in rows] == [1, 2] and rows[0]["top_shot_share"] > 0.999999
    assert 0.5 - 1e-6 <= rows[1]["top_shot_share"] <= 1 and 0 <= rows[1]["normalised_entropy"] <= 1
    ds = load_split("fashion_mnist", "test")
    pool, _ = _pool(ds, [1, 3, 5, 7, 9], 20, 0)
    features, _ = embed_pool(model, ds, pool, 32, Accelerator(cpu=True))
    labels = [int(x) for x in ds.select(pool.tolist())["label"]]
    for r in rows:
        expected = evaluate_episodes(model, features, labels, 5, r["shot"], 2, 4, 1, Accelerator(cpu=True))
        assert abs(r["ctx_accuracy"] - expected["accuracy"]) < 1e-9
    assert "| 2 |" in capsys.readouterr().out and json.loads((tmp_path / "r.json").read_text())["rows"] == rows
