"""The built-in few-shot segmentation benchmark: Fashion-MNIST items composited on canvases, folds by class."""
import numpy as np
import pytest
import torch

from relzoo.data.segmentation import FOLD_CLASSES, CompositeSegmentation, FashionMNISTComposites


@pytest.fixture(scope="module")
def test_fold0(fashion_like):
    return FashionMNISTComposites("test", fold=0, shots=2, episodes=12, image_size=64, data_dir=fashion_like)


def test_episode_shapes_masks_and_class_cycle(test_fold0):
    batch = torch.utils.data.default_collate([test_fold0[i] for i in range(5)])
    assert batch["query_pixel_values"].shape == (5, 3, 64, 64)
    assert batch["support_pixel_values"].shape == (5, 2, 3, 64, 64)
    assert batch["support_masks"].shape == (5, 2, 64, 64) and batch["labels"].shape == (5, 64, 64)
    assert batch["class_id"].tolist() == [1, 3, 5, 7, 9]                # test episodes cycle the fold's classes
    assert set(batch["support_masks"].unique().tolist()) <= {0.0, 1.0} and batch["labels"].dtype == torch.int64
    area = 0.01 * 64 * 64
    assert (batch["labels"].flatten(1).sum(1) >= area).all()             # the class is visible in every canvas
    assert (batch["support_masks"].flatten(2).sum(2) >= area).all()


def test_episodes_are_deterministic_per_seed_epoch_and_index(test_fold0, fashion_like):
    again = FashionMNISTComposites("test", fold=0, shots=2, episodes=12, image_size=64, data_dir=fashion_like)
    a, b = test_fold0[4], again[4]
    assert all(torch.equal(a[k], b[k]) for k in ("query_pixel_values", "support_masks", "labels"))
    again.set_epoch(1)
    assert not torch.equal(again[4]["query_pixel_values"], a["query_pixel_values"])


def test_normalisation_is_configurable(test_fold0, fashion_like):
    half = FashionMNISTComposites("test", fold=0, shots=2, episodes=12, image_size=64, data_dir=fashion_like,
                                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    a, b = test_fold0[3], half[3]
    torch.testing.assert_close(a["query_pixel_values"] * test_fold0.std + test_fold0.mean,
                               b["query_pixel_values"] * 0.5 + 0.5)
    assert torch.equal(a["labels"], b["labels"])


def test_masks_are_the_silhouettes_of_the_class_and_folds_keep_classes_apart(fashion_like):
    train = FashionMNISTComposites("train", fold=0, shots=1, episodes=20, image_size=64, data_dir=fashion_like)
    assert sorted(train.classes) == [0, 2, 4, 6, 8] and set(train.classes).isdisjoint(FOLD_CLASSES[0])
    rng = np.random.default_rng(0)
    for target in train.classes:
        image, owner = train.canvas(rng, target)
        present = set(owner.unique().tolist()) - {-1}
        assert target in present and present <= set(train.classes)     # no test-class item, even as clutter
        assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    episode = train[0]
    assert episode["class_id"] in train.classes


@pytest.mark.parametrize("kwargs,message", [(dict(split="val"), "`split` must be 'train' or 'test'"),
                                            (dict(fold=2), "`fold` must be one of"),
                                            (dict(shots=0), "`shots` must be an int >= 1"),
                                            (dict(image_size=16), "`image_size` must be an int >= 32"),
                                            (dict(items=(3, 2)), "`items` must be"),
                                            (dict(item_size=(4, 10)), "`item_size` must be"),
                                            (dict(std=(0.5, 0, 0.5)), r"`std` must be three numbers > 0"),
                                            (dict(mean=(0.5,)), "`mean` must be three numbers")])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FashionMNISTComposites(**{"split": "test", **kwargs})


def test_backbone_pretraining_canvases_hold_training_classes_only(fashion_like):
    data = CompositeSegmentation(fold=1, samples=6, image_size=64, data_dir=fashion_like)
    assert data.classes == [1, 3, 5, 7, 9] and data.num_labels == 6          # fold 1 tests the even classes
    sample = data[2]
    assert sample["pixel_values"].shape == (3, 64, 64) and sample["labels"].shape == (64, 64)
    assert set(sample["labels"].unique().tolist()) <= set(range(6)) and (sample["labels"] > 0).any()
    # the labels are the training classes of the canvas's owners, in the order of `classes`
    rng = np.random.default_rng(np.random.SeedSequence([0, 0, 2, 1]))
    image, owner = data.canvases.canvas(rng, int(rng.choice(data.classes)))
    expected = torch.zeros_like(owner)
    for i, c in enumerate(data.classes, start=1):
        expected[owner == c] = i
    assert torch.equal(sample["labels"], expected) and set(owner.unique().tolist()) <= {-1, 1, 3, 5, 7, 9}
    assert torch.equal(sample["pixel_values"], data[2]["pixel_values"])      # deterministic
