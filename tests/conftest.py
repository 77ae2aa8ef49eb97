"""Tests never touch the network, never read this machine's Debian data sets and never write outside tmp folders."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="relzoo-test-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Opening anything under /usr/share/datasets raises, in this process and in every Python process a test starts
# (tests/_guard/sitecustomize.py, first on PYTHONPATH): a fresh machine has no Debian data sets.
GUARD_DIR = str(Path(__file__).resolve().parent / "_guard")
os.environ["PYTHONPATH"] = os.pathsep.join([GUARD_DIR, *filter(None, [os.environ.get("PYTHONPATH")])])
sys.path.insert(0, GUARD_DIR)
import sitecustomize  # noqa: E402,F401  (installs the guard here too)

sys.path.remove(GUARD_DIR)


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


def _rect_mask(rng, shape, value, boundary=False):
    import numpy as np

    h, w = shape
    mask = np.zeros(shape, np.uint8)
    top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    bottom, right = top + int(rng.integers(h // 4, h // 2)), left + int(rng.integers(w // 4, w // 2))
    if boundary:
        mask[max(top - 1, 0):bottom + 1, max(left - 1, 0):right + 1] = 255
    mask[top:bottom, left:right] = value
    return mask


@pytest.fixture(scope="session")
def segmentation_folders(tmp_path_factory):
    """Tiny folders in the official PASCAL-5i, COCO-20i and FSS-1000 layouts, with split folders:
    ``{"root", "pascal_splits", "coco_splits", "fss_splits", "pascal_val", "pascal_train"}``.

    PASCAL: VOC2012/JPEGImages/*.jpg + SegmentationClassAug/*.png (value = class id + 1, 255 boundary ring); ``v*``
    images (listed in ImageSets/Segmentation/val.txt) hold one class of 1..10 each (fold 0 and fold 1 test classes,
    3 images per class), ``t*`` images one class of 6..20 (2 each) and ``t_mix`` holds a fold-0 test class and a
    training class. COCO: annotations/{train2014,val2014} masks with values 1..8 (two classes per image at most).
    FSS-1000: 5 classes of 3 images, grey masks."""
    import pickle

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("segmentation_folders")
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    pascal = {}
    names = [(f"v{c:02d}_{k}", c) for c in range(1, 11) for k in range(3)]
    names += [(f"t{c:02d}_{k}", c) for c in range(6, 21) for k in range(2)]
    for name, value in names:
        shape = (int(rng.integers(30, 50)), int(rng.integers(30, 50)))
        mask = _rect_mask(rng, shape, value, boundary=True)
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(mask).save(voc / "SegmentationClassAug" / f"{name}.png")
        pascal[name] = value
    mix = np.maximum(_rect_mask(rng, (40, 40), 2), np.where(_rect_mask(rng, (40, 40), 1) > 0, 12, 0).astype(np.uint8))
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(voc / "JPEGImages" / "t_mix.jpg")
    Image.fromarray(mix).save(voc / "SegmentationClassAug" / "t_mix.png")
    val = [n for n, _ in names if n.startswith("v")]
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val) + "\n")
    pascal_splits = root / "splits" / "pascal"
    for part in ("trn", "val"):
        (pascal_splits / part).mkdir(parents=True)
        for fold in range(4):
            lines = [f"{n}__{v:02d}" for n, v in pascal.items()
                     if (n.startswith("v") == (part == "val")) and 5 * fold < v <= 5 * fold + 5]
            (pascal_splits / part / f"fold{fold}.txt").write_text("".join(line + "\n" for line in lines))

    coco = root / "COCO2014"
    coco_classes = {}
    for part in ("train2014", "val2014"):
        (coco / part).mkdir(parents=True)
        (coco / "annotations" / part).mkdir(parents=True)
        for i in range(16):
            name = f"COCO_{part}_{i:012d}"
            values = [i % 8 + 1] + ([(i + 3) % 8 + 1] if i % 2 else [])
            mask = np.zeros((36, 44), np.uint8)
            for v in values:
                mask = np.where(_rect_mask(rng, (36, 44), v) > 0, v, mask).astype(np.uint8)
            Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(coco / part / f"{name}.jpg")
            Image.fromarray(mask).save(coco / "annotations" / part / f"{name}.png")
            for v in set(np.unique(mask).tolist()) - {0}:
                coco_classes.setdefault((part, v - 1), []).append(f"{part}/{name}.jpg")
    coco_splits = root / "splits" / "coco"
    for part, sub in (("trn", "train2014"), ("val", "val2014")):
        (coco_splits / part).mkdir(parents=True)
        for fold in range(4):
            test = set(range(fold, 80, 4))
            table = {c: (coco_classes.get((sub, c), []) if (c in test) == (part == "val") else []) for c in range(80)}
            (coco_splits / part / f"fold{fold}.pkl").write_bytes(pickle.dumps(table))

    fss = root / "FSS-1000"
    fss_names = ["apple", "bee", "cat", "dune", "eel"]
    for name in fss_names:
        (fss / name).mkdir(parents=True)
        for i in range(1, 4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(fss / name / f"{i}.jpg")
            grey = np.where(_rect_mask(rng, (32, 32), 1) > 0, 200, 90).astype(np.uint8)
            Image.fromarray(grey).save(fss / name / f"{i}.png")
    fss_splits = root / "splits" / "fss"
    fss_splits.mkdir(parents=True)
    for part, names_ in (("trn", ["eel", "apple"]), ("val", ["cat"]), ("test", ["bee", "dune"])):
        (fss_splits / f"{part}.txt").write_text("\n".join(names_) + "\n")
    return {"root": root, "pascal_splits": pascal_splits, "coco_splits": coco_splits, "fss_splits": fss_splits,
            "pascal": pascal}
