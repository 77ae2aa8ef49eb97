"""Long-tailed subsets (the CIFAR-LT exponential profile), many/medium/few groups, API-Net's class-balanced batches."""
import numpy as np
import pytest

from relzoo.data.sampling import ClassBalancedBatchSampler, long_tailed_indices, shot_groups


def test_long_tail_follows_the_exponential_profile():
    labels = np.repeat(np.arange(10), 6000)                    # Fashion-MNIST's training split
    keep = long_tailed_indices(labels, imbalance=100, seed=0)
    counts = np.bincount(labels[keep], minlength=10)
    assert counts.tolist() == [round(6000 * 100 ** (-k / 9)) for k in range(10)]
    assert counts[0] == 6000 and counts[-1] == 60 and counts[0] / counts[-1] == 100
    assert len(np.unique(keep)) == len(keep) and np.all(np.diff(keep) > 0)
    again = long_tailed_indices(labels, imbalance=100, seed=0)
    assert np.array_equal(keep, again) and not np.array_equal(keep, long_tailed_indices(labels, seed=1))
    reverse = long_tailed_indices(labels, order=list(range(9, -1, -1)))
    assert np.bincount(labels[reverse], minlength=10)[9] == 6000
    assert shot_groups(dict(enumerate(counts.tolist()))) == {"many": [0, 1, 2, 3, 4, 5, 6, 7], "medium": [8, 9],
                                                             "few": []}
    with pytest.raises(ValueError, match="`imbalance` must be a number >= 1"):
        long_tailed_indices(labels, imbalance=0.5)
    with pytest.raises(ValueError, match="`order` must list every class"):
        long_tailed_indices(labels, order=[0, 1])


def test_class_balanced_batches():
    labels = np.repeat(np.arange(6), [5, 5, 6, 7, 8, 9])
    sampler = ClassBalancedBatchSampler(labels, n_classes=3, n_samples=2, batches=20, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 3 and (counts == 2).all() and len(set(batch)) == 6
    # every class cycles through all its images before repeating one
    seen = {c: [] for c in range(6)}
    for batch in batches:
        for i in batch:
            seen[int(labels[i])].append(i)
    for c, picks in seen.items():
        size = int((labels == c).sum())
        first = picks[:size - size % 2]
        assert len(set(first)) == len(first)
    assert [list(b) for b in ClassBalancedBatchSampler(labels, 3, 2, batches=20, seed=0)] == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


@pytest.mark.parametrize("kwargs,message", [(dict(n_classes=1, n_samples=2), "`n_classes` must be an int >= 2"),
                                            (dict(n_classes=2, n_samples=1), "`n_samples` must be an int >= 2"),
                                            (dict(n_classes=7, n_samples=2), r"`n_classes` \(7\) exceeds the 6"),
                                            (dict(n_classes=2, n_samples=6), r"fewer than n_samples = 6 images")])
def test_bad_sampler_arguments_are_named(kwargs, message):
    labels = np.repeat(np.arange(6), [5, 5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match=message):
        ClassBalancedBatchSampler(labels, **kwargs)
