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


@pytest.fixture(scope="session")
def fashion_like(tmp_path_factory):
    """A folder in Fashion-MNIST's idx layout (pass it as ``data_dir``): per split, 6 items per class, each a bright
    ellipse on black, so that tests never need the Debian package."""
    import numpy as np

    from relzoo.data import write_idx

    root = tmp_path_factory.mktemp("fashion_like")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    for stem in ("train", "t10k"):
        images, labels = [], []
        for label in range(10):
            for _ in range(6):
                cy, cx, ry, rx = rng.uniform(10, 18), rng.uniform(10, 18), rng.uniform(4, 10), rng.uniform(4, 10)
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                images.append(np.where(inside, rng.integers(80, 256, (28, 28)), 0))
                labels.append(label)
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", np.stack(images))
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", np.array(labels))
    return root
