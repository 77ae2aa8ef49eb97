"""Tests never touch the network and never write outside tmp folders."""
import os
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="relzoo-test-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def fresh_accelerate_state():
    """Each training test builds its own Accelerator: reset Accelerate's process-wide singletons afterwards."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _folder_with_broken_image(root, classes=3, per_class=6):
    """imagefolder root/{train,test}/c<k>/*.png with one truncated file in train/c1 and one in test/c<last>."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(classes):
            d = root / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    broken = [root / "train" / "c1" / "2.png", root / "test" / f"c{classes - 1}" / "4.png"]
    for path in broken:
        path.write_bytes(path.read_bytes()[:60])
    return broken


@pytest.fixture
def broken_image_folder():
    """``make(root, classes=3, per_class=6) -> [broken train file, broken test file]``: an imagefolder of random PNGs
    with one truncated file in train/c1 and one in the last test class."""
    return _folder_with_broken_image
