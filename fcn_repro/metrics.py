"""Segmentation metrics: the confusion matrix over a whole set, and its scores.

FCN's numbers are computed ONCE over the whole evaluation set (FACTS.md,
"Metrics"): every image adds its pixels to one n x n confusion matrix
(rows = ground truth, columns = prediction) and the scores are derived from
that matrix at the end. Averaging per-image scores gives a different (wrong)
number; ``tests/test_metrics.py`` builds a case where the two differ.

- overall acc = trace / sum
- mean acc    = nanmean(diag / rowsum)
- IU          = diag / (rowsum + colsum - diag), per class
- mean IU     = nanmean(IU)   (a class with no ground truth and no prediction
  has 0/0 = nan and drops out of the mean)
- fwavacc     = sum(freq[freq > 0] * IU[freq > 0]), freq = rowsum / sum

Pixels whose label is outside [0, n) (255 = ignore, or void labels mapped
out of range) are skipped.

NumPy versions (:func:`fast_hist`, :func:`scores`) work on host arrays; the
torch versions (:func:`fast_hist_torch`, :func:`all_reduce_hist`) keep the
matrix on the device that computed the predictions and merge matrices of
several processes with ``torch.distributed`` (a SUM all-reduce: confusion
matrices add).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "fast_hist", "scores", "ConfusionMatrix", "fast_hist_torch", "all_reduce_hist",
    "absent_classes", "format_scores",
]


def _check_pred_range(pred_min, pred_max, n):
    if pred_min < 0 or pred_max >= n:
        raise ValueError(
            f"prediction labels must lie in [0, {n}) for an {n}-class confusion matrix; "
            f"got values in [{pred_min}, {pred_max}]")


def fast_hist(label: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Confusion matrix of one image (or any batch of pixels).

    label: integer array (any shape, e.g. H x W) of ground-truth classes;
        values outside [0, n) (255 = ignore) are skipped.
    pred: integer array of the same shape, values in [0, n).
    Returns an (n, n) int64 array, rows = ground truth, columns = prediction.
    Vectorised with one ``np.bincount`` over ``n * label + pred``.
    """
    label = np.asarray(label)
    pred = np.asarray(pred)
    if label.shape != pred.shape:
        raise ValueError(f"label shape {label.shape} and prediction shape {pred.shape} differ")
    if n <= 0:
        raise ValueError(f"class count must be positive, got {n}")
    label = label.reshape(-1).astype(np.int64, copy=False)
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    keep = (label >= 0) & (label < n)
    lk = label[keep]
    pk = pred[keep]
    if pk.size:
        _check_pred_range(int(pk.min()), int(pk.max()), n)
    return np.bincount(n * lk + pk, minlength=n * n).reshape(n, n)


def scores(hist: np.ndarray, exclude: Optional[Iterable[int]] = None) -> dict:
    """Scores of a confusion matrix accumulated over a whole set.

    hist: (n, n) counts, rows = ground truth, columns = prediction.
    exclude: class indices to leave out of the mean IU (their IU is reported
        as nan). SIFT Flow's protocol excludes the classes absent from the
        test set (see :func:`absent_classes`); the FACTS.md formulas already
        drop a class that has neither ground truth nor prediction.

    Returns a dict with floats ``overall_acc``, ``mean_acc``, ``mean_iu``,
    ``fwavacc`` and arrays ``iu`` (n,), ``acc`` (n,) per class (nan where
    undefined), plus ``pixels`` (the number of labelled pixels counted).
    """
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion matrix must be square (n, n); got shape {hist.shape}")
    diag = np.diag(hist)
    rowsum = hist.sum(1)
    colsum = hist.sum(0)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        overall_acc = diag.sum() / total if total > 0 else float("nan")
        acc = diag / rowsum
        iu = diag / (rowsum + colsum - diag)
    # fwavacc weighs every class with ground truth (freq > 0; its IU is then
    # defined), before any exclusion: excluded classes have no ground truth.
    freq = rowsum / total if total > 0 else np.zeros_like(rowsum)
    valid = freq > 0
    fwavacc = float((freq[valid] * iu[valid]).sum()) if total > 0 else float("nan")
    iu = iu.copy()
    if exclude is not None:
        ex = [int(c) for c in exclude]
        iu[ex] = np.nan
    return {
        "overall_acc": float(overall_acc),
        "mean_acc": _nanmean(acc),
        "mean_iu": _nanmean(iu),
        "fwavacc": fwavacc,
        "iu": iu,
        "acc": acc,
        "pixels": int(total),
    }


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else float("nan")


def absent_classes(hist: np.ndarray) -> list[int]:
    """Classes with no ground-truth pixel in the set (row sum 0)."""
    hist = np.asarray(hist)
    return [int(c) for c in np.flatnonzero(hist.sum(1) == 0)]


class ConfusionMatrix:
    """Accumulates :func:`fast_hist` over a set; ``.hist`` is (n, n) int64.

    Matrices add: ``a.merge(b)`` (or ``a += b``) combines two workers' counts.
    """

    def __init__(self, n: int):
        self.n = int(n)
        self.hist = np.zeros((self.n, self.n), dtype=np.int64)

    def update(self, label, pred) -> np.ndarray:
        """Add one image's pixels; returns that image's own matrix."""
        h = fast_hist(label, pred, self.n)
        self.hist += h
        return h

    def merge(self, other: "ConfusionMatrix | np.ndarray") -> "ConfusionMatrix":
        h = other.hist if isinstance(other, ConfusionMatrix) else np.asarray(other)
        if h.shape != self.hist.shape:
            raise ValueError(f"cannot merge a {h.shape} confusion matrix into {self.hist.shape}")
        self.hist += h.astype(np.int64)
        return self

    __iadd__ = merge

    def scores(self, exclude=None) -> dict:
        return scores(self.hist, exclude=exclude)


# ---------------------------------------------------------------- torch side

def fast_hist_torch(label, pred, n: int, check: bool = True):
    """Torch version of :func:`fast_hist`, on the tensors' device.

    label, pred: integer tensors of the same shape (e.g. N x H x W);
    returns an (n, n) int64 tensor on that device. check=False skips the
    prediction range check (an argmax over n channels is in range by
    construction; the check costs a device sync per call).
    """
    import torch

    if label.shape != pred.shape:
        raise ValueError(f"label shape {tuple(label.shape)} and prediction shape {tuple(pred.shape)} differ")
    label = label.reshape(-1).to(torch.int64)
    pred = pred.reshape(-1).to(torch.int64)
    keep = (label >= 0) & (label < n)
    lk = label[keep]
    pk = pred[keep]
    if check and pk.numel():
        _check_pred_range(int(pk.min()), int(pk.max()), n)
    return torch.bincount(n * lk + pk, minlength=n * n).reshape(n, n)


def all_reduce_hist(hist):
    """Sum a confusion matrix over all processes of the default group.

    hist: (n, n) int64 numpy array or tensor. Without an initialised
    ``torch.distributed`` process group this returns the matrix unchanged.
    The tensor is moved to the device the backend needs (CUDA for NCCL).
    Returns the same type it was given.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return hist
    as_numpy = isinstance(hist, np.ndarray)
    t = torch.as_tensor(hist, dtype=torch.int64)
    backend = dist.get_backend()
    if backend == "nccl" and not t.is_cuda:
        t = t.cuda()
    elif backend == "gloo" and t.is_cuda:
        t = t.cpu()
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if as_numpy:
        return t.cpu().numpy()
    return t.to(hist.device) if hasattr(hist, "device") else t


def format_scores(result: dict, class_names: Optional[Sequence[str]] = None,
                  title: str = "", reference: Optional[dict] = None) -> str:
    """Text table: per-class IU (with names), then the four scores.

    reference: optional ``{"overall_acc": .., "mean_iu": .., ...}`` printed in
    a second column with the difference (ours - reference).
    """
    iu = np.asarray(result["iu"])
    n = len(iu)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) < n:
        names = names + [str(i) for i in range(len(names), n)]
    width = max([len("class")] + [len(s) for s in names[:n]])
    lines = []
    if title:
        lines.append(title)
    ref_iu = None if reference is None else reference.get("iu")
    head = f"  {'#':>3}  {'class':<{width}}  {'IU %':>7}"
    if ref_iu is not None:
        head += f"  {'ref %':>7}  {'diff':>8}"
    lines.append(head)
    for c in range(n):
        v = iu[c]
        s = f"  {c:>3}  {names[c]:<{width}}  {_pct(v):>7}"
        if ref_iu is not None:
            r = float(np.asarray(ref_iu)[c])
            s += f"  {_pct(r):>7}  {_diff(v, r):>8}"
        lines.append(s)
    lines.append("")
    keys = [("overall_acc", "overall acc"), ("mean_acc", "mean acc"),
            ("mean_iu", "mean IU"), ("fwavacc", "fwavacc")]
    head = f"  {'score':<12}  {'ours %':>9}"
    if reference is not None:
        head += f"  {'ref %':>9}  {'diff':>9}"
    lines.append(head)
    for k, label in keys:
        s = f"  {label:<12}  {_pct(result[k], 4):>9}"
        if reference is not None and reference.get(k) is not None:
            s += f"  {_pct(reference[k], 4):>9}  {_diff(result[k], reference[k], 4):>9}"
        lines.append(s)
    return "\n".join(lines)


def _pct(v, digits: int = 2) -> str:
    v = float(v)
    return "-" if np.isnan(v) else f"{100 * v:.{digits}f}"


def _diff(a, b, digits: int = 2) -> str:
    a, b = float(a), float(b)
    if np.isnan(a) or np.isnan(b):
        return "-"
    return f"{100 * (a - b):+.{digits}f}"
