"""PASCAL-5i, COCO-20i and FSS-1000 episode datasets on tiny generated folders in the official layouts."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from relzoo.data.segmentation_folders import FSS1000, Coco20i, Pascal5i, safe_load_split_pickle
from relzoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, UnreadableImageError


def _check_episode(ep, shots, size):
    assert ep["query_pixel_values"].shape == (3, size, size)
    assert ep["support_pixel_values"].shape == (shots, 3, size, size)
    assert ep["support_masks"].shape == (shots, size, size) and ep["support_masks"].dtype == torch.float32
    assert set(ep["support_masks"].unique().tolist()) <= {0.0, 1.0}
    assert ep["labels"].shape == (size, size) and ep["labels"].dtype == torch.int64
    assert ep["query_name"] not in ep["support_names"] and len(set(ep["support_names"])) == shots


def test_pascal_test_split_derived_from_masks(segmentation_folders):
    root = segmentation_folders["root"]
    ds = Pascal5i(root, "test", fold=0, shots=2, image_size=40, seed=3)
    assert ds.classes == [0, 1, 2, 3, 4] and len(ds) == 1000          # official: 1000 test episodes
    assert sorted(ds.queries) == sorted((n, v - 1) for n, v in segmentation_folders["pascal"].items()
                                        if n.startswith("v") and v <= 5)
    for i in (0, 7, 999):
        ep = ds[i]
        _check_episode(ep, 2, 40)
        assert (ep["query_name"], ep["class_id"]) == ds.queries[i % len(ds.queries)]   # query i = pair i mod n
        assert all(segmentation_folders["pascal"][s] == ep["class_id"] + 1 for s in ep["support_names"])
    # labels: the class as 1, boundary 255 kept (ignored by loss and metrics), everything else 0; nearest resize
    ep = ds[4]
    raw = np.array(Image.open(root / "VOC2012" / "SegmentationClassAug" / f"{ep['query_name']}.png"))
    want = np.where(raw == ep["class_id"] + 1, 1, np.where(raw == 255, 255, 0))
    want = F.interpolate(torch.from_numpy(want)[None, None].float(), (40, 40), mode="nearest")[0, 0].long()
    assert torch.equal(ep["labels"], want) and set(ep["labels"].unique().tolist()) == {0, 1, 255}
    # supports: boundary is background
    raw = np.array(Image.open(root / "VOC2012" / "SegmentationClassAug" / f"{ep['support_names'][0]}.png"))
    want = F.interpolate(torch.from_numpy((raw == ep["class_id"] + 1).astype(np.float32))[None, None], (40, 40),
                         mode="nearest")[0, 0]
    assert torch.equal(ep["support_masks"][0], want)
    # image: resized, ImageNet-normalised
    img = torch.from_numpy(np.array(Image.open(root / "VOC2012" / "JPEGImages" / f"{ep['query_name']}.jpg")))
    img = F.interpolate(img.permute(2, 0, 1)[None].float() / 255, (40, 40), mode="bilinear", antialias=True)[0]
    want = (img - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(ep["query_pixel_values"], want, atol=0.05, rtol=0)
    # deterministic per (seed, epoch, index)
    again = Pascal5i(root, "test", fold=0, shots=2, image_size=40, seed=3)[4]
    assert again["support_names"] == ep["support_names"] and torch.equal(again["query_pixel_values"],
                                                                          ep["query_pixel_values"])
    picks = {tuple(Pascal5i(root, "test", fold=0, shots=2, image_size=40, seed=s)[4]["support_names"])
             for s in range(8)}
    assert len(picks) > 1


def test_pascal_train_never_queries_test_classes(segmentation_folders):
    root = segmentation_folders["root"]
    ds = Pascal5i(root, "train", fold=0, shots=1, image_size=32)
    assert ds.classes == list(range(5, 20))
    assert all(c >= 5 for _, c in ds.queries) and ("t_mix", 11) in ds.queries
    assert not any(n.startswith("v") for n, _ in ds.queries)          # VOC val images are test images
    assert len(ds) == len(ds.queries)
    epoch0 = [ds[i]["query_name"] for i in range(len(ds))]
    assert sorted(epoch0) == sorted(n for n, _ in ds.queries)          # each pair once per epoch
    ds.set_epoch(1)
    epoch1 = [ds[i]["query_name"] for i in range(len(ds))]
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)


def test_pascal_official_split_files(segmentation_folders):
    root, splits = segmentation_folders["root"], segmentation_folders["pascal_splits"]
    ds = Pascal5i(root, "test", fold=1, shots=1, image_size=32, split_dir=splits)
    lines = (splits / "val" / "fold1.txt").read_text().split()
    assert ds.queries == [(line.split("__")[0], int(line.split("__")[1]) - 1) for line in lines]
    train = Pascal5i(root, "train", fold=1, shots=1, image_size=32, split_dir=splits)
    other = [line for f in (0, 2, 3) for line in (splits / "trn" / f"fold{f}.txt").read_text().split()]
    assert sorted(train.queries) == sorted((line.split("__")[0], int(line.split("__")[1]) - 1) for line in other)
    assert ds.episodes == 1000 and len(Pascal5i(root, "test", fold=1, shots=1, episodes=7, split_dir=splits)) == 7


def test_pascal_bad_input(segmentation_folders, tmp_path):
    root = segmentation_folders["root"]
    with pytest.raises(ValueError, match="`fold` must be one of"):
        Pascal5i(root, "test", fold=4)
    with pytest.raises(ValueError, match="`split` must be"):
        Pascal5i(root, "trn")
    with pytest.raises(ValueError, match="`shots` must be an int >= 1, got 0"):
        Pascal5i(root, shots=0)
    with pytest.raises(ValueError, match="VOC2012/JPEGImages"):
        Pascal5i(tmp_path)
    with pytest.raises(ValueError, match=r"at least 4 images per class; class id -> images: \{0: 3"):
        Pascal5i(root, "test", fold=0, shots=3)
    bad = tmp_path / "splits"
    (bad / "val").mkdir(parents=True)
    (bad / "val" / "fold0.txt").write_text("v01_0__01\nv01_1-01\n")
    with pytest.raises(ValueError, match=r"fold0.txt line 2 should be 'imagename__NN'.*'v01_1-01'"):
        Pascal5i(root, "test", fold=0, split_dir=bad)


def test_unreadable_file_is_named(segmentation_folders, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(segmentation_folders["root"] / "FSS-1000", root / "FSS-1000")
    broken = root / "FSS-1000" / "bee" / "2.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    ds = FSS1000(root, "test", shots=1, image_size=32, split_dir=segmentation_folders["fss_splits"])
    index = [k for k, _ in ds.queries].index("bee/2")
    with pytest.raises(UnreadableImageError, match=r"unreadable file .*bee/2.jpg"):
        ds[index]


def test_coco_splits_from_pickles_and_masks(segmentation_folders):
    root, splits = segmentation_folders["root"], segmentation_folders["coco_splits"]
    for split_dir in (splits, None):
        ds = Coco20i(root, "test", fold=0, shots=1, image_size=36, split_dir=split_dir, seed=1)
        assert ds.classes == list(range(0, 80, 4)) and len(ds) == 1000
        assert ds.drawable == [0, 4]                        # of {0, 4, ..., 76} only 0 and 4 have images
        seen = set()
        for i in range(40):
            ep = ds[i]
            _check_episode(ep, 1, 36)
            assert ep["class_id"] in (0, 4) and ep["query_name"].startswith("val2014/")
            raw = np.array(Image.open(root / "COCO2014" / "annotations" / ep["query_name"].replace(".jpg", ".png")))
            assert (raw == ep["class_id"] + 1).any()
            assert set(ep["labels"].unique().tolist()) <= {0, 1}
            seen.add(ep["class_id"])
        assert seen == {0, 4}                               # the class is drawn per episode
        train = Coco20i(root, "train", fold=0, shots=1, image_size=36, split_dir=split_dir)
        assert train.drawable == [1, 2, 3, 5, 6, 7] and all(n.startswith("train2014/") for n, _ in train.queries)
    assert sorted(Coco20i(root, "test", fold=1, split_dir=splits).queries) == \
        sorted(Coco20i(root, "test", fold=1).queries)


def test_split_pickle_refuses_objects(tmp_path):
    import collections

    path = tmp_path / "fold0.pkl"
    path.write_bytes(pickle.dumps({0: ["train2014/a.jpg"], 1: []}))
    assert safe_load_split_pickle(path) == {0: ["train2014/a.jpg"], 1: []}
    path.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(ValueError, match="refusing to load collections.OrderedDict"):
        safe_load_split_pickle(path)


def test_fss_splits(segmentation_folders):
    root, splits = segmentation_folders["root"], segmentation_folders["fss_splits"]
    ds = FSS1000(root, "test", shots=2, image_size=32, split_dir=splits)
    assert ds.class_names == ["eel", "apple", "cat", "bee", "dune"] and ds.classes == [3, 4]   # ids run through lists
    assert len(ds) == 6 and [k for k, _ in ds.queries] == ["bee/1", "bee/2", "bee/3", "dune/1", "dune/2", "dune/3"]
    ep = ds[4]
    _check_episode(ep, 2, 32)
    assert ep["query_name"] == "dune/2" and sorted(ep["support_names"]) == ["dune/1", "dune/3"]
    grey = np.array(Image.open(root / "FSS-1000" / "dune" / "2.png").convert("L"))
    want = F.interpolate(torch.from_numpy((grey >= 128).astype(np.float32))[None, None], (32, 32), mode="nearest")
    assert torch.equal(ep["labels"], want[0, 0].long())
    derived = FSS1000(root, "train", shots=1, image_size=32)       # sorted folders, 52 / 24 / 24 %
    assert derived.class_names == ["apple", "bee", "cat", "dune", "eel"] and derived.classes == [0, 1, 2]
    with pytest.raises(ValueError, match="`fold` must be one of \\[0\\] for fss1000, got 1"):
        FSS1000(root, fold=1)


def test_episodes_batch_and_feed_hsnet(segmentation_folders):
    from relzoo.models.hsnet import HSNetConfig, HSNetForFewShotSegmentation

    ds = Pascal5i(segmentation_folders["root"], "test", fold=0, shots=2, image_size=64)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    torch.manual_seed(0)
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet18")).eval()
    with torch.no_grad():
        out = model(query_pixel_values=batch["query_pixel_values"],
                    support_pixel_values=batch["support_pixel_values"],
                    support_masks=batch["support_masks"], labels=batch["labels"])
    assert out.logits.shape == (2, 2, 64, 64) and torch.isfinite(out.loss)
