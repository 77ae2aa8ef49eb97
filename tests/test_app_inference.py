"""The app's inference path without a browser: relzoo.app.inference and the `relzoo segment` / `relzoo classify`
commands, on small random models written as real folders (the same loading as any relzoo output)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relzoo import (
    CrossTransformerConfig,
    CrossTransformerForFewShotClassification,
    HSNetConfig,
    HSNetForFewShotSegmentation,
    ProtoNetConfig,
    ProtoNetForFewShotClassification,
)
from relzoo.app import InputError, classify, correspondence_picture, load_fewshot_model, read_mask, segment
from relzoo.models.crosstransformer_hub import save_fewshot_folder
from relzoo.models.hsnet_hub import write_hsnet_files

SIZE = 64
TINY = dict(backbone="test_resnet", backbone_kwargs={"output_stride": 8})


@pytest.fixture(scope="module")
def hsnet_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hsnet")
    write_hsnet_files(folder, HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet18", image_size=SIZE)).eval(),
                      SIZE, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    return folder


@pytest.fixture(scope="module", params=["ctx", "protonet"])
def fewshot_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    model = (CrossTransformerForFewShotClassification(CrossTransformerConfig(key_dim=16, value_dim=8, **TINY))
             if request.param == "ctx" else ProtoNetForFewShotClassification(ProtoNetConfig(**TINY)))
    return save_fewshot_folder(model.eval(), tmp_path_factory.mktemp(request.param) / "model", image_size=SIZE)


def picture(seed: int, size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def box_mask(size=(80, 60)) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[15:45, 20:60] = True
    return mask


def test_segment_matches_the_model_and_restores_the_query_size(hsnet_dir):
    fm = load_fewshot_model(hsnet_dir)
    assert fm.task == "few-shot-segmentation" and fm.size == SIZE and fm.std == (0.25, 0.25, 0.25)
    support, query = picture(1), picture(2, (100, 70))
    (result,) = segment(fm, [(support, box_mask())], [query])
    assert result.mask.shape == (70, 100) and result.foreground.shape == (70, 100) and result.shots == 1
    with torch.no_grad():                            # the model itself on the same resized, normalised inputs
        s = fm.pixel_values([support])[None]
        m = torch.from_numpy(np.asarray(Image.fromarray(box_mask().astype(np.uint8) * 255).resize(
            (SIZE, SIZE), Image.NEAREST)) > 127)[None, None].float()
        logits = fm.model(fm.pixel_values([query]), s, m).logits
        expected = torch.nn.functional.interpolate(logits, (70, 100), mode="bilinear", align_corners=True).argmax(1)
    assert np.array_equal(result.mask, expected[0].bool().numpy())


def test_several_shots_vote_and_queries_are_batched_alike(hsnet_dir):
    fm = load_fewshot_model(hsnet_dir)
    supports = [(picture(k), box_mask()) for k in range(3)]
    queries = [picture(10 + i) for i in range(3)]
    together = segment(fm, supports, queries, batch_size=3)
    alone = [segment(fm, supports, [q], batch_size=1)[0] for q in queries]
    assert all(r.shots == 3 for r in together)
    for a, b in zip(together, alone):
        assert np.array_equal(a.mask, b.mask)
    from relzoo.models.hsnet import vote

    with torch.no_grad():
        out = fm.model(fm.pixel_values(queries[:1]), fm.pixel_values([s for s, _ in supports])[None],
                       torch.stack([torch.from_numpy(np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
                           (SIZE, SIZE), Image.NEAREST)) > 127) for _, m in supports])[None].float())
    up = torch.nn.functional.interpolate(out.shot_logits.flatten(0, 1), (60, 80), mode="bilinear",
                                         align_corners=True).unflatten(0, (1, 3))
    assert np.array_equal(together[0].mask, vote(up)[0].bool().numpy())


def test_masks_from_files_layers_and_arrays(tmp_path):
    mask = box_mask()
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "white_on_black.png")
    layer = np.zeros((60, 80, 4), dtype=np.uint8)
    layer[mask] = (255, 0, 0, 255)                    # a brush layer: painted pixels on a transparent layer
    Image.fromarray(layer).save(tmp_path / "layer.png")
    for value in (tmp_path / "white_on_black.png", tmp_path / "layer.png", layer, mask):
        assert np.array_equal(read_mask(value, "m", (80, 60)), mask)
    assert read_mask(tmp_path / "white_on_black.png", "m", (160, 120)).shape == (120, 160)   # same shape, resized
    with pytest.raises(InputError, match=r"m: the mask is 80x60 but its image is 80x80 \(another shape\)"):
        read_mask(mask, "m", (80, 80))
    with pytest.raises(InputError, match="the mask is empty"):
        read_mask(np.zeros((60, 80), dtype=bool), "m")


def test_bad_inputs_are_named_before_the_model_runs(hsnet_dir, fewshot_dir, tmp_path):
    seg, cls = load_fewshot_model(hsnet_dir), load_fewshot_model(fewshot_dir)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="query image 1: 'notes.png' is not an image"):
        segment(seg, [(picture(1), box_mask())], [tmp_path / "notes.png"])
    calls = []
    with pytest.raises(InputError, match="query image 3: 'notes.png' is not an image"):   # before any batch runs
        segment(seg, [(picture(1), box_mask())], [picture(2), picture(3), tmp_path / "notes.png"], batch_size=1,
                progress=calls.append)
    assert calls == []
    with pytest.raises(InputError, match="support mask 1: the mask is empty"):
        segment(seg, [(picture(1), np.zeros((60, 80), dtype=bool))], [picture(2)])
    tiny = np.zeros((60, 80), dtype=bool)
    tiny[30, 42] = True                              # a column nearest-neighbour resizing to 64 px skips
    with pytest.raises(InputError, match="too small to survive resizing"):
        segment(seg, [(picture(1), tiny)], [picture(2)])
    with pytest.raises(InputError, match="support: at least one support image"):
        segment(seg, [], [picture(2)])
    with pytest.raises(InputError, match="needs a few-shot-image-classification model"):
        classify(seg, {"a": [picture(1)], "b": [picture(2)]}, [picture(3)])
    with pytest.raises(InputError, match="class 'b' has no support image"):
        classify(cls, {"a": [picture(1)], "b": []}, [picture(3)])
    with pytest.raises(InputError, match="at least two classes"):
        classify(cls, {"a": [picture(1)]}, [picture(3)])
    huge = Image.new("RGB", (8000, 7000))
    with pytest.raises(InputError, match="8000x7000 is 56 megapixels, above the limit of 50"):
        classify(cls, {"a": [picture(1)], "b": [picture(2)]}, [huge])
    with pytest.raises(InputError, match="--model: expected a few-shot segmentation or classification model"):
        from relzoo import SANConfig, SANForImageClassification

        SANForImageClassification(SANConfig(layers=[1, 1, 1, 1, 1], widths=[32, 32, 64, 64, 128],
                                            stem_width=32)).save_pretrained(tmp_path / "san")
        load_fewshot_model(tmp_path / "san")
    with pytest.raises(InputError, match="--model: cannot read a model config from"):
        load_fewshot_model(tmp_path / "nowhere")


def test_classify_matches_the_model(fewshot_dir):
    fm = load_fewshot_model(fewshot_dir)
    support = {"shirt": [picture(1), picture(2)], "shoe": [picture(3)], "bag": [picture(4), picture(5)]}
    queries = [picture(6), picture(7, (200, 120))]
    results = classify(fm, support, queries, batch_size=1)
    with torch.no_grad():
        logits = fm.model(query_pixel_values=fm.pixel_values(queries),
                          support_pixel_values=fm.pixel_values([im for ims in support.values() for im in ims]),
                          support_labels=torch.tensor([0, 0, 1, 2, 2])).logits.softmax(-1)
    for r, row in zip(results, logits):
        assert list(r.probabilities) == ["shirt", "shoe", "bag"]
        np.testing.assert_allclose(list(r.probabilities.values()), row.numpy(), atol=1e-5)
        assert r.predicted == ["shirt", "shoe", "bag"][int(row.argmax())]
    if fm.family == "crosstransformer":
        assert correspondence_picture(fm, support, queries[0]).size[0] > 0
    else:
        with pytest.raises(InputError, match="need a model with spatial attention"):
            correspondence_picture(fm, support, queries[0])


def _relzoo(*args):
    return subprocess.run([sys.executable, "-m", "relzoo.cli", *map(str, args)], capture_output=True, text=True)


def _relzoo_here(capsys, *args) -> tuple[int, str, str]:
    """The same command in this process (its one-line errors are parser exits)."""
    from relzoo.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _queries(tmp_path):
    (tmp_path / "queries").mkdir(exist_ok=True)
    for i in range(3):
        picture(20 + i, (90, 50)).save(tmp_path / "queries" / f"q{i}.jpg", quality=95)
    return tmp_path / "queries"


def test_segment_command_writes_what_the_api_gives(hsnet_dir, tmp_path, capsys):
    picture(1).save(tmp_path / "s.png")
    Image.fromarray(box_mask().astype(np.uint8) * 255).save(tmp_path / "s_mask.png")
    queries = _queries(tmp_path)
    proc = _relzoo("segment", "--model", hsnet_dir, "--support", tmp_path / "s.png", "--support-mask",
                   tmp_path / "s_mask.png", "--query-dir", queries, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["mask"] for r in summary["queries"]] == ["q0_mask.png", "q1_mask.png", "q2_mask.png"]
    fm = load_fewshot_model(hsnet_dir)
    expected = segment(fm, [(tmp_path / "s.png", tmp_path / "s_mask.png")], [queries / "q1.jpg"])[0]
    written = np.asarray(Image.open(tmp_path / "out" / "q1_mask.png")) > 127
    assert written.shape == (50, 90) and np.array_equal(written, expected.mask)
    assert (tmp_path / "out" / "q1_overlay.png").is_file() and "q1.jpg: " in proc.stdout
    code, _, err = _relzoo_here(capsys, "segment", "--model", hsnet_dir, "--support", tmp_path / "s.png",
                                "--support-mask", tmp_path / "s_mask.png", "--support-mask", tmp_path / "s_mask.png",
                                "--query", tmp_path / "s.png", "--output", tmp_path / "bad")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("relzoo segment: error: --support-mask: one mask per --support image")
    code, _, err = _relzoo_here(capsys, "segment", "--model", tmp_path / "queries", "--support", tmp_path / "s.png",
                                "--support-mask", tmp_path / "s_mask.png", "--query", tmp_path / "s.png", "--output",
                                tmp_path / "bad")
    assert code == 2 and "--model: cannot read a model config from" in err and err.count("\n") == 1


def test_classify_command_writes_what_the_api_gives(fewshot_dir, tmp_path, capsys):
    queries = _queries(tmp_path)
    for name, seeds in (("coat", (1, 2)), ("boot", (3,))):
        (tmp_path / "classes" / name).mkdir(parents=True)
        for s in seeds:
            picture(s).save(tmp_path / "classes" / name / f"{s}.png")
    ctx = "crosstransformer" in json.loads((fewshot_dir / "config.json").read_text())["model_type"]
    code, out, err = _relzoo_here(capsys, "classify", "--model", fewshot_dir, "--support-dir", tmp_path / "classes",
                                  "--query-dir", queries, "--output", tmp_path / "cls",
                                  *(["--correspondence"] if ctx else []))
    assert code == 0, err[-2000:]
    rows = json.loads((tmp_path / "cls" / "results.json").read_text())["queries"]
    fm = load_fewshot_model(fewshot_dir)
    expected = classify(fm, {"boot": [tmp_path / "classes" / "boot" / "3.png"],
                             "coat": [tmp_path / "classes" / "coat" / f"{s}.png" for s in (1, 2)]},
                        sorted(queries.iterdir()))
    assert [r["predicted"] for r in rows] == [e.predicted for e in expected]
    for r, e in zip(rows, expected):
        assert r["probabilities"] == pytest.approx(e.probabilities, abs=1e-5)
    assert rows[0]["query"].endswith("q0.jpg") and "q0.jpg: " in out
    assert (tmp_path / "cls" / "q0_correspondence.png").is_file() == ctx
    code, _, err = _relzoo_here(capsys, "classify", "--model", fewshot_dir, "--support-dir", queries, "--query-dir",
                                queries)
    assert code == 2 and "has no class sub-folders" in err and err.count("\n") == 1


def test_the_core_package_and_the_commands_work_without_gradio():
    """Gradio is the optional `app` extra: relzoo, relzoo.app's inference and the CLI import without it, and
    `relzoo app` says what to install."""
    code = """
import sys
sys.modules["gradio"] = None            # an import of gradio now raises ImportError
import relzoo, relzoo.app, relzoo.app.commands
from relzoo.cli import main
assert "gradio" not in [m for m in sys.modules if sys.modules[m] is not None]
try:
    main(["app", "--segmentation-model", "x"])
except SystemExit as stop:
    assert stop.code == 2
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    assert "relzoo app: error: the app needs Gradio" in proc.stderr and "pip install 'relzoo[app]'" in proc.stderr


def test_a_hub_id_loads_like_its_folder(hsnet_dir, tmp_path):
    """--model takes a Hub id: the folder pushed to a Hub (the in-process fake Hub on 127.0.0.1, through
    huggingface_hub's real upload and download code), then `relzoo segment --model me/hsnet-tiny` in a fresh process
    pointed at that Hub gives the masks the local folder gives."""
    import os

    sys.path.insert(0, str(Path(__file__).parent))
    from fakehub import FakeHub

    picture(1).save(tmp_path / "s.png")
    Image.fromarray(box_mask().astype(np.uint8) * 255).save(tmp_path / "s_mask.png")
    picture(5, (90, 50)).save(tmp_path / "q.png")
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "HF_TOKEN": "test-token-not-a-secret", "HF_HUB_DISABLE_TELEMETRY": "1"}
        push = subprocess.run([sys.executable, "-c", "import sys; from relzoo.publish import push_to_hub; "
                               "print(push_to_hub(sys.argv[1], 'me/hsnet-tiny'))", str(hsnet_dir)], env=env,
                              capture_output=True, text=True)
        assert push.returncode == 0, push.stderr[-2000:]
        assert "config.json" in hub.files("me/hsnet-tiny")
        proc = subprocess.run([sys.executable, "-m", "relzoo.cli", "segment", "--model", "me/hsnet-tiny", "--support",
                               str(tmp_path / "s.png"), "--support-mask", str(tmp_path / "s_mask.png"), "--query",
                               str(tmp_path / "q.png"), "--output", str(tmp_path / "out")], env=env,
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "me/hsnet-tiny" in json.dumps(summary["model"])
    expected = segment(load_fewshot_model(hsnet_dir), [(tmp_path / "s.png", tmp_path / "s_mask.png")],
                       [tmp_path / "q.png"])[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "q_mask.png")) > 127, expected.mask)
