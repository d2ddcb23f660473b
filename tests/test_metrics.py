"""Metrics against hand-computed confusion matrices and scores (FACTS.md, "Metrics")."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcn_repro.data import resource_path
from fcn_repro.metrics import (ConfusionMatrix, absent_classes, all_reduce_hist, fast_hist, fast_hist_torch,
                               format_scores, scores)


def test_hand_computed_three_classes_with_ignore():
    label = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    h = fast_hist(label, pred, 3)
    # rows = ground truth, cols = prediction; the 255 pixel is skipped
    assert h.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert h.dtype == np.int64
    s = scores(h)
    assert s["pixels"] == 5
    assert s["overall_acc"] == pytest.approx(4 / 5)
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    # IU = diag / (rowsum + colsum - diag): 1/(2+1-1), 2/(2+3-2), 1/(1+1-1)
    assert s["iu"].tolist() == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert s["mean_iu"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # freq = rowsum / sum = (2, 2, 1) / 5
    assert s["fwavacc"] == pytest.approx(0.4 * 0.5 + 0.4 * 2 / 3 + 0.2 * 1.0)


def test_labels_outside_range_are_skipped():
    label = np.array([0, 1, 3, 21, 255, -1], dtype=np.int64)
    pred = np.array([0, 1, 0, 1, 2, 2])
    h = fast_hist(label, pred, 3)
    assert h.sum() == 2
    assert h[0, 0] == 1 and h[1, 1] == 1


def test_prediction_out_of_range_is_an_error():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fast_hist(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="shape"):
        fast_hist(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_class_absent_from_ground_truth_and_prediction_is_nan_and_excluded():
    # class 2 never appears: 0/0 -> nan -> left out of mean IU and mean acc
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    s = scores(fast_hist(label, pred, 3))
    assert math.isnan(s["iu"][2]) and math.isnan(s["acc"][2])
    assert s["iu"][:2].tolist() == pytest.approx([1 / 2, 2 / 3])
    assert s["mean_iu"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1) / 2)


def test_class_absent_from_ground_truth_but_predicted_counts_as_zero():
    # class 2 has no ground truth but is predicted once: IU = 0/(0+1-0) = 0, counted
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    h = fast_hist(label, pred, 3)
    s = scores(h)
    assert s["iu"].tolist() == pytest.approx([1 / 2, 1.0, 0.0])
    assert s["mean_iu"] == pytest.approx(0.5)
    # mean acc: class 2 has no ground truth -> nan, left out
    assert s["mean_acc"] == pytest.approx((0.5 + 1.0) / 2)
    # SIFT Flow's protocol: classes absent from the set's ground truth are excluded
    assert absent_classes(h) == [2]
    se = scores(h, exclude=absent_classes(h))
    assert math.isnan(se["iu"][2])
    assert se["mean_iu"] == pytest.approx((0.5 + 1.0) / 2)
    assert se["fwavacc"] == pytest.approx(s["fwavacc"])
    assert se["overall_acc"] == pytest.approx(3 / 4)


def test_per_image_average_trap():
    """The set's mean IU comes from the summed matrix, not the mean of per-image IUs."""
    n = 2
    img1 = (np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]))   # per-image mean IU 1.0 (class 1 nan)
    img2 = (np.array([0, 1, 1, 1]), np.array([1, 1, 1, 1]))   # IU0 = 0/1, IU1 = 3/4 -> 0.375
    per_image = [scores(fast_hist(l, p, n))["mean_iu"] for l, p in (img1, img2)]
    assert per_image == pytest.approx([1.0, 0.375])
    cm = ConfusionMatrix(n)
    for l, p in (img1, img2):
        cm.update(l, p)
    # summed: [[4, 1], [0, 3]]: IU0 = 4/(5+4-4) = 0.8, IU1 = 3/(3+4-3) = 0.75
    assert cm.hist.tolist() == [[4, 1], [0, 3]]
    s = cm.scores()
    assert s["mean_iu"] == pytest.approx(0.775)
    assert abs(s["mean_iu"] - np.mean(per_image)) > 0.08  # 0.775 vs 0.6875


def test_confusion_matrix_merge():
    rng = np.random.default_rng(0)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    la, pa = rng.integers(0, 5, 100), rng.integers(0, 4, 100)
    lb, pb = rng.integers(0, 5, 50), rng.integers(0, 4, 50)
    a.update(la, pa)
    b.update(lb, pb)
    a += b
    assert (a.hist == fast_hist(np.r_[la, lb], np.r_[pa, pb], 4)).all()
    with pytest.raises(ValueError, match="merge"):
        a.merge(np.zeros((3, 3)))


def test_empty_matrix_gives_nan_without_error():
    s = scores(np.zeros((3, 3), dtype=np.int64))
    assert all(math.isnan(s[k]) for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc"))
    with pytest.raises(ValueError, match="square"):
        scores(np.zeros((2, 3)))


def test_torch_hist_equals_numpy():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 23, (2, 17, 19)).astype(np.uint8)
    label[0, :3] = 255
    pred = rng.integers(0, 21, (2, 17, 19))
    ht = fast_hist_torch(torch.from_numpy(label), torch.from_numpy(pred), 21)
    assert ht.dtype == torch.int64
    assert (ht.numpy() == fast_hist(label, pred, 21)).all()
    with pytest.raises(ValueError, match=r"\[0, 21\)"):
        fast_hist_torch(torch.zeros(3, dtype=torch.long), torch.tensor([0, 21, 1]), 21)


def test_all_reduce_without_process_group_is_identity():
    h = np.arange(9).reshape(3, 3)
    assert all_reduce_hist(h) is h


def test_scores_reproduce_caffe_sample_metrics():
    """The formulas give Caffe's own numbers from Caffe's own matrix (sample fixture)."""
    z = np.load(resource_path("sample", "sample.caffe.npz"))
    s = scores(z["hist"])
    for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc"):
        assert s[k] == pytest.approx(float(z[f"metric/{k}"]), abs=1e-12), k
    np.testing.assert_allclose(s["iu"], z["metric/iu"], atol=1e-7)


def test_format_scores_table():
    h = np.array([[4, 1], [0, 3]])
    text = format_scores(scores(h), ["background", "thing"], title="T",
                         reference={"mean_iu": 0.7, "overall_acc": 0.875, "mean_acc": None, "fwavacc": None})
    assert "background" in text and "thing" in text
    assert "80.00" in text and "75.00" in text       # per-class IU %
    assert "77.5000" in text and "+7.5000" in text     # mean IU and its difference to 70
