"""Few-shot segmentation metrics: mIoU (class-wise, pooled over episodes) and FB-IoU as the official HSNet code
computes them, with 255 ignored."""
import pytest
import torch

from relzoo.metrics import FewShotSegmentationIoU


def _t(rows):
    return torch.tensor(rows)


def test_miou_pools_episodes_per_class_then_averages_classes():
    meter = FewShotSegmentationIoU([3, 5, 7])
    # class 3, episode 1: fg pred {0,1}, fg gt {1,2} -> inter 1, union 3; bg pred {2,3}, bg gt {0,3} -> 1, 3
    meter.update(_t([[[1, 1, 0, 0]]]), _t([[[0, 1, 1, 0]]]), [3])
    # class 3, episode 2: exact -> fg 2/2, bg 2/2; class 5: the gt pixel 255 is ignored everywhere
    meter.update(_t([[[1, 1, 0, 0]], [[1, 0, 0, 1]]]), _t([[[1, 1, 0, 0]], [[1, 0, 0, 255]]]), [3, 5])
    res = meter.compute()
    iou3 = (1 + 2) / (3 + 2)            # pooled over episodes, not averaged per episode
    iou5 = 1 / 1
    assert res["per_class_iou"][3] == pytest.approx(100 * iou3)
    assert res["per_class_iou"][5] == pytest.approx(100 * iou5)
    assert res["per_class_iou"][7] == 0 and res["classes_seen"] == 2 and res["episodes"] == 3
    assert res["miou"] == pytest.approx(100 * (iou3 + iou5 + 0) / 3)
    fg = (1 + 2 + 1) / (3 + 2 + 1)
    bg = (1 + 2 + 2) / (3 + 2 + 2)
    assert res["fb_iou"] == pytest.approx(100 * (fg + bg) / 2)


def test_counts_summed_over_processes_equal_one_meter():
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 2, (6, 5, 7), generator=g)
    targets = torch.randint(0, 2, (6, 5, 7), generator=g)
    targets[targets.sum(-1) > 4] = 255
    ids = [1, 2, 1, 0, 2, 2]
    whole, a, b = (FewShotSegmentationIoU([0, 1, 2]) for _ in range(3))
    whole.update(preds, targets, ids)
    a.update(preds[:4], targets[:4], ids[:4])
    b.update(preds[4:], targets[4:], ids[4:])
    merged = FewShotSegmentationIoU([0, 1, 2])
    merged.load_state(a.state() + b.state())
    assert merged.compute() == whole.compute()
    a.merge(b)
    assert a.compute() == whole.compute()


@pytest.mark.parametrize("pred,target,ids,match", [
    (_t([[[2, 0]]]), _t([[[1, 0]]]), [0], r"`pred` must hold 0 \(background\) or 1"),
    (_t([[[1, 0]]]), _t([[[7, 0]]]), [0], "`target` must hold 0, 1 or 255"),
    (_t([[[1, 0]]]), _t([[[1, 0, 1]]]), [0], r"both be \(B, H, W\)"),
    (_t([[[1, 0]]]), _t([[[1, 0]]]), [0, 1], "one class per episode"),
    (_t([[[1, 0]]]), _t([[[1, 0]]]), [9], r"`class_ids` must be in 0..2"),
])
def test_bad_values_are_named(pred, target, ids, match):
    with pytest.raises(ValueError, match=match):
        FewShotSegmentationIoU([0, 1, 2]).update(pred, target, ids)
