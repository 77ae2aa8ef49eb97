"""Hub-ready folders, model cards and the published-variant configs."""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard

from relzoo.hub import atomic_folder, save_hub_folder

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_folder_replaces_or_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("crash half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp left, old content intact
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with pytest.raises(FileExistsError, match="exists and is not empty; pass --overwrite"):
        with atomic_folder(target) as tmp:          # never replaced without overwrite
            (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    with pytest.raises(ValueError, match="holds the input .*c.txt'"):   # not even with overwrite
        with atomic_folder(target, overwrite=True, inputs=[target / "c.txt"]):
            pass
    assert (target / "c.txt").is_file()


def test_atomic_folder_clears_what_a_killed_writer_left(tmp_path):
    """A write killed half-way leaves .<name>.tmp-<pid>-*: the next write into the same place removes it when that
    process is gone (and leaves a live writer's alone)."""
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".model.tmp-{dead.pid}-abc").mkdir()
    (tmp_path / f".model.tmp-{os.getppid()}-live").mkdir()
    with atomic_folder(tmp_path / "model") as tmp:
        (tmp / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".model.tmp-{os.getppid()}-live", "model"]


def test_san_folder_card(tmp_path):
    model = timm.create_model("san10_pair", num_classes=2, widths=[32, 32, 64, 64, 128], stem_width=32,
                              layers=[1, 1, 1, 1, 1])
    folder = save_hub_folder(model, tmp_path / "m", class_names=["cat", "dog"], image_size=128, crop_pct=1.0,
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), model_id="me/san-cats", dataset="cats",
                             metrics={"top1": 0.75, "top5": 1.0}, training={"steps": 3})
    assert model.training  # saving does not switch the caller's model to eval mode
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and "san" in card.data.tags
    assert card.data.eval_results[0].metric_value == 0.75 and card.data.datasets == ["cats"]
    assert "import relzoo" in card.text and "Zhao, Jia and Koltun" in card.text and '"steps": 3' in card.text
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)  # timm's transform, from config.json's pretrained_cfg
    assert type(processor).__name__ == "TimmWrapperImageProcessor"
    assert processor.data_config["input_size"] == (3, 128, 128) and processor.data_config["crop_pct"] == 1.0
    assert list(processor.data_config["mean"]) == [0.5] * 3
    hub_file = json.loads((folder / "preprocessor_config.json").read_text())  # what a Hub download reads
    assert hub_file["image_processor_type"] == "TimmWrapperImageProcessor"
    assert hub_file["pretrained_cfg"] == json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "cat", "1": "dog"}


def test_plain_timm_model_folder_loads_in_timm_and_transformers(tmp_path):
    from transformers import AutoModelForImageClassification

    model = timm.create_model("resnet10t", num_classes=3).eval()
    cfg_before = dict(model.pretrained_cfg)
    folder = save_hub_folder(model, tmp_path / "r", class_names=["a", "b", "c"], image_size=64, crop_pct=0.9,
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), dataset="toy")
    assert model.pretrained_cfg == cfg_before  # the caller's model is not modified
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert "num_classes" not in json.loads((folder / "config.json").read_text()).get("model_args", {})
    assert json.loads((folder / "config.json").read_text())["label_names"] == ["a", "b", "c"]
    x = torch.randn(1, 3, 64, 64)
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    hf = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
        torch.testing.assert_close(hf(x).logits, model(x))
    assert hf.config.id2label == {0: "a", 1: "b", 2: "c"}  # the pipeline's labels, not LABEL_0..2
    assert ModelCard.load(folder / "README.md").data.library_name == "timm"


def _overwrite_middle(path: Path, n: int = 64) -> None:
    """Overwrite ``n`` bytes in the middle of a file, keeping its size: the damage nothing but a checksum sees."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_damaged_weights_are_refused_by_every_loader(tmp_path, caplog):
    from transformers import AutoModelForImageClassification

    from relzoo import SANForImageClassification
    from relzoo.checksums import MANIFEST, ChecksumError, read_checksums

    model = timm.create_model("san10_pair", num_classes=2, widths=[32, 32, 64, 64, 128], stem_width=32,
                              layers=[1, 1, 1, 1, 1]).eval()
    folder = save_hub_folder(model, tmp_path / "m", class_names=["a", "b"], image_size=64, crop_pct=1.0,
                             mean=(0.5,) * 3, std=(0.5,) * 3)
    assert set(read_checksums(folder)) == {"model.safetensors"}  # tensor files only: config and card stay editable
    file = folder / "model.safetensors"
    kw = dict(widths=[32, 32, 64, 64, 128], stem_width=32, layers=[1, 1, 1, 1, 1], num_classes=2, pretrained=True,
              pretrained_cfg_overlay=dict(file=str(file)))
    timm.create_model("san10_pair", **kw)  # intact: loads
    SANForImageClassification.from_pretrained(folder)
    _overwrite_middle(file)
    from safetensors.torch import load_file

    load_file(file)  # the damage is invisible to the file format itself ...
    for load in (lambda: SANForImageClassification.from_pretrained(folder),
                 lambda: AutoModelForImageClassification.from_pretrained(folder),
                 lambda: timm.create_model("san10_pair", **kw)):
        with pytest.raises(ChecksumError, match=r"model\.safetensors' is damaged: its SHA-256 differs"):
            load()  # ... the manifest is not
    truncated = tmp_path / "truncated"
    shutil.copytree(folder, truncated)
    (truncated / "model.safetensors").write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(ChecksumError, match=r"is damaged: .*truncated or extended"):
        SANForImageClassification.from_pretrained(truncated)
    # a file replaced on purpose by one holding other tensors (another header) loads as transformers would: here it
    # lacks every weight, which transformers reports as missing keys
    from safetensors.torch import save_file

    save_file({"other": torch.ones(2)}, file, metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="relzoo.checksums"):
        _, info = SANForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert "holds other tensors" in caplog.text and "san.stem.conv.weight" in info["missing_keys"]
    (folder / MANIFEST).unlink()  # folders written by other tools have no manifest and load as before
    SANForImageClassification.from_pretrained(folder)
    # save_pretrained of relzoo models writes the manifest too; a missing listed file is named
    again = tmp_path / "again"
    SANForImageClassification.from_pretrained(folder).save_pretrained(again)
    assert set(read_checksums(again)) == {"model.safetensors"}
    (again / "model.safetensors").rename(again / "other.safetensors")
    with pytest.raises(ChecksumError, match=r"model\.safetensors' is missing"):
        SANForImageClassification.from_pretrained(again)


def test_plain_timm_model_folder_has_a_checksum_manifest(tmp_path):
    from relzoo.checksums import verify_checksums

    folder = save_hub_folder(timm.create_model("resnet10t", num_classes=3), tmp_path / "r", class_names=["a", "b", "c"],
                             image_size=64, crop_pct=0.9, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert verify_checksums(folder) == 1
    _overwrite_middle(folder / "model.safetensors")
    with pytest.raises(ValueError, match="damaged"):
        verify_checksums(folder)
