"""Episode sampling (fixed and Meta-Dataset variable), SimCLR episodes and the collate, on scikit-learn's digits."""
import collections

import pytest
import torch
from torchvision.transforms import v2

from relzoo.data import load_digits
from relzoo.data.episodes import EpisodeCollator, EpisodeSampler, episode_loader, simclr_transform


@pytest.fixture(scope="module")
def digits():
    return load_digits("train")


def test_fixed_episodes(digits):
    labels = digits["label"]
    sampler = EpisodeSampler(digits, n_way=3, n_shot=2, n_query=4, num_episodes=5, seed=3, classes=[1, 4, 7, 9])
    episodes = list(sampler)
    assert len(episodes) == 5
    for ep in episodes:
        support = [it for it in ep if not it.query]
        query = [it for it in ep if it.query]
        assert collections.Counter(it.label for it in support) == {0: 2, 1: 2, 2: 2}
        assert collections.Counter(it.label for it in query) == {0: 4, 1: 4, 2: 4}
        assert not {it.index for it in support} & {it.index for it in query}
        for it in ep:  # episode label <-> dataset class is one mapping, inside the class split
            assert labels[it.index] == it.class_id and it.class_id in (1, 4, 7, 9)
        assert len({(it.label, it.class_id) for it in ep}) == 3
    assert sampler.episode(2) == episodes[2]                            # deterministic per (seed, epoch, index)
    sampler.set_epoch(1)
    assert sampler.episode(2) != episodes[2]
    assert EpisodeSampler(digits, n_way=3, n_shot=2, n_query=4, seed=4, classes=[1, 4, 7, 9]).episode(2) != episodes[2]


def test_variable_episodes_follow_meta_dataset_bounds(digits):
    sampler = EpisodeSampler(digits, variable=True, min_way=3, max_way=8, max_query=5, max_support=60,
                             num_episodes=20, seed=0)
    sizes = collections.Counter(digits["label"])
    ways_seen, shots_seen = set(), set()
    for ep in sampler:
        support = collections.Counter(it.label for it in ep if not it.query)
        query = collections.Counter(it.label for it in ep if it.query)
        ways = len(support)
        ways_seen.add(ways)
        assert 3 <= ways <= 8 and set(query) == set(support)
        assert len(set(query.values())) == 1 and 1 <= next(iter(query.values())) <= 5       # same queries per class
        assert sum(support.values()) <= 60 + ways and min(support.values()) >= 1
        class_of = {it.label: it.class_id for it in ep}
        assert all(support[c] <= sizes[class_of[c]] - query[c] for c in support)
        shots_seen |= set(support.values())
    assert len(ways_seen) > 2 and len(shots_seen) > 3                                          # really variable


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=[1, 2, 42]), r"\[42\] have no image"),
    (dict(n_way=11), "10 usable classes, but episodes need 11"),
    (dict(n_shot=100, n_query=100), "fewer than 200 images"),
    (dict(n_query=0), "`n_query` must be an int >= 1"),
])
def test_sampler_errors(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(digits, **kwargs)


def test_collate_regular_episode(digits):
    sampler = EpisodeSampler(digits, n_way=4, n_shot=3, n_query=2, num_episodes=2, seed=0)
    batch = next(iter(episode_loader(digits, sampler, EpisodeCollator(24))))
    assert batch["support_pixel_values"].shape == (12, 3, 24, 24) and batch["query_pixel_values"].shape == (8, 3, 24, 24)
    assert batch["support_labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert batch["query_labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch["support_pixel_values"].min() >= -1 and batch["support_pixel_values"].max() <= 1
    assert batch["simclr"] is False and len(batch["class_ids"]) == 4


def test_simclr_episode_structure(digits):
    """Every support image its own class; the first k support images of each class (k = its query count) become the
    queries, labelled with their support index. With identity views the query pixels equal their source's."""
    sampler = EpisodeSampler(digits, n_way=3, n_shot=4, n_query=2, num_episodes=1, seed=0)
    collate = EpisodeCollator(16, simclr_probability=1.0)
    collate.simclr_support = collate.simclr_query = collate.plain  # deterministic views to check the copying
    items = sampler.episode(0)
    episode = collate([(digits[it.index]["image"].convert("RGB"), it) for it in items])
    assert episode["simclr"] is True
    assert episode["support_labels"].tolist() == list(range(12))
    assert episode["query_labels"].tolist() == [0, 1, 4, 5, 8, 9]
    torch.testing.assert_close(episode["query_pixel_values"], episode["support_pixel_values"][[0, 1, 4, 5, 8, 9]])
    assert (episode["class_ids"] == -1).all()


def test_simclr_views_are_independent_and_follow_the_recipe(digits):
    sampler = EpisodeSampler(digits, n_way=3, n_shot=2, n_query=1, num_episodes=1, seed=0)
    collate = EpisodeCollator(32, simclr_probability=1.0)
    items = sampler.episode(0)
    episode = collate([(digits[it.index]["image"].convert("RGB"), it) for it in items])
    source = episode["query_labels"]
    assert not torch.allclose(episode["query_pixel_values"], episode["support_pixel_values"][source])
    again = collate([(digits[it.index]["image"].convert("RGB"), it) for it in items])
    torch.testing.assert_close(again["query_pixel_values"], episode["query_pixel_values"])   # seeded per episode
    query_ops = [type(t).__name__ for t in simclr_transform(224, blur=True).transforms]
    support_ops = [type(t).__name__ for t in simclr_transform(224, blur=False).transforms]
    assert "GaussianBlur" in query_ops and "GaussianBlur" not in support_ops
    crop = simclr_transform(224, blur=True).transforms[1]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.scale == (0.08, 1.0)
    blur = [t for t in simclr_transform(224, blur=True).transforms if isinstance(t, v2.GaussianBlur)][0]
    assert tuple(blur.kernel_size) == (23, 23) and list(blur.sigma) == [0.1, 2.0]


def test_simclr_probability_mixes_episodes(digits):
    sampler = EpisodeSampler(digits, n_way=2, n_shot=1, n_query=1, num_episodes=40, seed=0)
    loader = episode_loader(digits, sampler, EpisodeCollator(8, simclr_probability=0.5))
    flags = [batch["simclr"] for batch in loader]
    assert 8 < sum(flags) < 32
    with pytest.raises(ValueError, match="simclr_probability"):
        EpisodeCollator(8, simclr_probability=1.5)


def test_unreadable_image_in_an_episode_is_named_or_replaced_by_its_class(tmp_path, broken_image_folder):
    from relzoo.data import EpisodeImages, UnreadableImageError, load_image_dataset

    broken = broken_image_folder(tmp_path)[0]
    ds = load_image_dataset(str(tmp_path), "train")
    sampler = EpisodeSampler(ds, n_way=3, n_shot=2, n_query=2, num_episodes=8, seed=0)
    with pytest.raises(UnreadableImageError, match=f"unreadable image '{broken}'.*--skip_unreadable_images"):
        for _ in episode_loader(ds, sampler, EpisodeCollator(16)):
            pass
    skipped = set()
    for batch in episode_loader(ds, sampler, EpisodeCollator(16, simclr_probability=0.5), skip_unreadable=True):
        skipped.update(batch["skipped"])
        assert batch["support_pixel_values"].shape[0] == 6 and batch["query_pixel_values"].shape[0] > 0
    assert skipped == {repr(str(broken))}
    with pytest.raises(ValueError, match="needs `class_rows`"):
        EpisodeImages(ds, skip_unreadable=True)
