"""scripts/recalibrate_bn.py: the BatchNorm refresh for timm train.py checkpoints (SAN evaluated after a short run).
Weights unchanged, running statistics the plain average over a seeded sample of the split, written as safetensors
that timm's own checkpoint loading (validate.py --checkpoint) reads."""
import runpy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import relzoo  # noqa: F401  (registers SAN with timm)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(widths=[32, 32, 64, 64, 128], stem_width=16, layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3])
SMALL_ARGS = ["--model-kwargs", "widths=[32,32,64,64,128]", "stem_width=16", "layers=[1,1,1,1,1]",
              "kernels=[3,3,3,3,3]"]


def _main():
    return runpy.run_path(str(ROOT / "scripts" / "recalibrate_bn.py"), run_name="not_main")["main"]


def _image_folder(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / "train" / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (72, 72, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(pixels).save(root / "train" / f"class{c}" / f"{i}.png")


def _args(tmp_path, out, *extra):
    return ["--model", "san10_patch", "--checkpoint", str(tmp_path / "last.pth.tar"), "--data-dir",
            str(tmp_path / "data"), "--num-classes", "2", "--img-size", "64", "--batch-size", "4", "--batches", "2",
            "--workers", "0", *SMALL_ARGS, "--output", str(out), *extra]


def test_recalibrated_checkpoint_loads_in_timm_with_new_statistics_and_the_same_weights(tmp_path):
    _image_folder(tmp_path / "data")
    torch.manual_seed(0)
    model = timm.create_model("san10_patch", num_classes=2, **SMALL)
    torch.save({"epoch": 1, "arch": "san10_patch", "state_dict": model.state_dict()}, tmp_path / "last.pth.tar")
    main = _main()
    assert main(_args(tmp_path, tmp_path / "a.safetensors")) == 0
    assert main(_args(tmp_path, tmp_path / "b.safetensors")) == 0
    assert main(_args(tmp_path, tmp_path / "c.safetensors", "--seed", "1")) == 0
    reloaded = timm.create_model("san10_patch", num_classes=2, checkpoint_path=str(tmp_path / "a.safetensors"),
                                 **SMALL)
    again = timm.create_model("san10_patch", num_classes=2, checkpoint_path=str(tmp_path / "b.safetensors"), **SMALL)
    other = timm.create_model("san10_patch", num_classes=2, checkpoint_path=str(tmp_path / "c.safetensors"), **SMALL)
    before, after = model.state_dict(), reloaded.state_dict()
    for name, value in before.items():
        if name.endswith(("running_mean", "running_var")):
            assert not torch.equal(value, after[name]), name                          # re-estimated
            torch.testing.assert_close(after[name], again.state_dict()[name], rtol=0, atol=0)   # seeded sample
        elif not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, after[name], rtol=0, atol=0, msg=name)   # weights untouched
    first = "stem.bn.running_mean"
    assert not torch.equal(after[first], other.state_dict()[first])                   # another seed, other images


@pytest.mark.parametrize("change, message", [
    ({"--output": "x.pth"}, "--output must end with .safetensors, got 'x.pth'"),
    ({"--batches": "0"}, "--batches must be >= 1 and --batch-size >= 2, got 0 and 4"),
    ({"--batch-size": "100"}, "holds fewer than --batch-size (100) images"),
    ({"--checkpoint": "missing.pth.tar"}, "missing.pth.tar' does not exist"),
    ({"--num-classes": "7"}, "cannot load --checkpoint"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, change, message):
    _image_folder(tmp_path / "data")
    torch.save({"state_dict": timm.create_model("san10_patch", num_classes=2, **SMALL).state_dict()},
               tmp_path / "last.pth.tar")
    args = _args(tmp_path, tmp_path / "a.safetensors")
    for key, value in change.items():
        args[args.index(key) + 1] = value if key != "--checkpoint" else str(tmp_path / value)
    with pytest.raises(SystemExit) as exit_info:
        _main()(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
