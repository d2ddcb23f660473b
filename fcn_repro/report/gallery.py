"""The gallery of an evaluation: the k worst and k best images by per-image IU.

:class:`Gallery` is fed one image at a time by the evaluation loop
(:func:`fcn_repro.evaluation.run`'s ``observe`` hook) and keeps, per score
head, only the k lowest and k highest per-image mean IU seen so far (two
bounded heaps) plus the first few images (TensorBoard shows the same images at
every validation), each as a small thumbnail: memory stays bounded whatever
the size of the set.

Per-image mean IU: the mean, over the classes present in the image's ground
truth or prediction, of intersection over union (the whole-set metric's
definition on one image's confusion matrix; pixels labelled 255 are not
counted). An image with no labelled pixel has none and is not ranked.

The panels of an entry (:func:`panels`) are arrays, not drawings: the image,
the ground truth and the prediction coloured by the head's
:class:`~fcn_repro.labels.LabelSet`, and where they differ (the image in grey,
wrong pixels red, unlabelled pixels left grey).

This module needs numpy and PIL only (no matplotlib).
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from fcn_repro.labels import LabelSet
from fcn_repro.registry import IGNORE_LABEL

__all__ = ["Gallery", "Entry", "image_iu", "thumbnail", "panels", "WRONG_RGB", "THUMB"]

#: longest side of a kept thumbnail, pixels
THUMB = 256
#: colour of a wrongly labelled pixel in the difference panel
WRONG_RGB = (230, 25, 25)


def image_iu(hist: np.ndarray) -> Optional[float]:
    """Mean IU of one image's (C, C) confusion matrix over the classes in its ground truth or
    prediction; None when it has no labelled pixel."""
    h = np.asarray(hist, dtype=np.float64)
    inter = np.diag(h)
    union = h.sum(0) + h.sum(1) - inter
    present = union > 0
    if not present.any():
        return None
    return float(np.mean(inter[present] / union[present]))


def _scale(shape, longest: int) -> tuple:
    h, w = shape[:2]
    f = min(1.0, longest / max(h, w, 1))
    return max(1, round(w * f)), max(1, round(h * f))


def thumbnail(image: Optional[np.ndarray], label: np.ndarray, pred: np.ndarray, longest: int = THUMB):
    """(image, label, pred) at most ``longest`` pixels on a side: the image smoothly
    (bilinear), the label maps by nearest neighbour (class indices stay classes)."""
    size = _scale(label.shape, longest)
    if size == (label.shape[1], label.shape[0]):
        return (None if image is None else np.ascontiguousarray(image),
                np.ascontiguousarray(label), np.ascontiguousarray(pred))
    small = lambda a, m: np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize(size, m))  # noqa: E731
    img = None if image is None else small(np.asarray(image, dtype=np.uint8), Image.BILINEAR)
    return img, small(label.astype(np.uint8), Image.NEAREST), small(pred.astype(np.uint8), Image.NEAREST)


@dataclass
class Entry:
    """One kept image of one head: its id, per-image IU, order in the set and thumbnails."""

    id: str
    iu: float
    order: int
    image: Optional[np.ndarray]   # (h, w, 3) uint8 RGB, or None where the reader gave no image
    label: np.ndarray             # (h, w) uint8
    pred: np.ndarray              # (h, w) uint8

    def classes(self) -> List[int]:
        """Class indices in the ground truth or the prediction (255 left out)."""
        both = np.union1d(np.unique(self.label), np.unique(self.pred))
        return [int(c) for c in both if c != IGNORE_LABEL]


class _Head:
    def __init__(self, k: int, first: int):
        self.k, self.first_n = k, first
        self.worst: list = []   # max-heap of the k lowest: (-iu, -order, entry)
        self.best: list = []    # min-heap of the k highest: (iu, -order, entry)
        self.first: List[Entry] = []
        self.ranked = 0


class Gallery:
    """Keeps, per score head, the ``k`` worst and ``k`` best images by per-image IU and the first
    ``first`` images (see the module docstring). Feed it with :meth:`observe`."""

    def __init__(self, k: int = 4, first: int = 0, longest: int = THUMB):
        if k < 0 or first < 0:
            raise ValueError("gallery sizes must be >= 0")
        self.k, self.first_n, self.longest = int(k), int(first), int(longest)
        self.heads: Dict[str, _Head] = {}
        self._order = itertools.count()

    def observe(self, sample_id: str, blob: str, image: Optional[np.ndarray], label: np.ndarray,
                pred: np.ndarray, hist: np.ndarray) -> None:
        """One image's result on one head: ``pred`` and ``label`` (H, W), ``hist`` its (C, C) matrix."""
        head = self.heads.setdefault(blob, _Head(self.k, self.first_n))
        order = next(self._order)
        iu = image_iu(hist)
        want_first = len(head.first) < head.first_n
        if iu is None and not want_first:
            return
        enters_worst = iu is not None and (len(head.worst) < head.k or (head.k and -head.worst[0][0] > iu))
        enters_best = iu is not None and (len(head.best) < head.k or (head.k and head.best[0][0] < iu))
        if not (want_first or enters_worst or enters_best):
            if iu is not None:
                head.ranked += 1
            return
        img, lab, prd = thumbnail(image, np.asarray(label), np.asarray(pred), self.longest)
        entry = Entry(sample_id, float("nan") if iu is None else iu, order, img, lab, prd)
        if want_first:
            head.first.append(entry)
        if iu is None:
            return
        head.ranked += 1
        self._offer(head, entry)

    @staticmethod
    def _offer(head: "_Head", entry: Entry) -> None:
        """``entry`` (ranked) into the worst and best heaps of ``head`` where it belongs."""
        iu, order = entry.iu, entry.order
        if len(head.worst) < head.k or (head.k and -head.worst[0][0] > iu):
            (heapq.heappush if len(head.worst) < head.k else heapq.heapreplace)(head.worst, (-iu, -order, entry))
        if len(head.best) < head.k or (head.k and head.best[0][0] < iu):
            (heapq.heappush if len(head.best) < head.k else heapq.heapreplace)(head.best, (iu, -order, entry))

    def absorb(self, heads: Dict[str, "_Head"]) -> None:
        """Take in another gallery's kept images (its ``heads``: another process's share): they
        compete with these for the worst and best places; its ranked count adds to ours."""
        for blob, other in heads.items():
            head = self.heads.setdefault(blob, _Head(self.k, self.first_n))
            head.ranked += other.ranked
            seen = set()
            for _, _, e in other.worst + other.best:
                if id(e) not in seen:   # an image among both the worst and the best: once
                    seen.add(id(e))
                    self._offer(head, replace(e, order=next(self._order)))

    def gathered(self, world: int) -> "Gallery":
        """Under torch.distributed (``world`` processes, every one calling this): on rank 0, this
        gallery with every other process's kept images absorbed (the whole set's worst and best);
        on the others, their own. One process: itself."""
        if world <= 1:
            return self
        import torch.distributed as dist

        rank = dist.get_rank()
        parts: Optional[list] = [None] * world if rank == 0 else None
        dist.gather_object(self.heads, parts, dst=0)
        if rank == 0:
            for r, heads in enumerate(parts or []):
                if r != 0 and heads:
                    self.absorb(heads)
        return self

    def worst(self, blob: str) -> List[Entry]:
        """The kept worst images of ``blob``, lowest IU first."""
        h = self.heads.get(blob)
        return [] if h is None else sorted((e for _, _, e in h.worst), key=lambda e: (e.iu, e.order))

    def best(self, blob: str) -> List[Entry]:
        """The kept best images of ``blob``, highest IU first, none already among the worst
        (a set of fewer than 2k images is split between the two)."""
        h = self.heads.get(blob)
        if h is None:
            return []
        shown = {e.order for e in self.worst(blob)}
        return sorted((e for _, _, e in h.best if e.order not in shown), key=lambda e: (-e.iu, e.order))

    def first(self, blob: str) -> List[Entry]:
        """The first images of ``blob`` in the order seen."""
        h = self.heads.get(blob)
        return [] if h is None else list(h.first)

    def ranked(self, blob: str) -> int:
        """How many images of ``blob`` had a per-image IU (were ranked)."""
        h = self.heads.get(blob)
        return 0 if h is None else h.ranked


def _grey(image: np.ndarray) -> np.ndarray:
    g = (np.asarray(image, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return np.repeat(np.clip(np.rint(g), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def panels(entry: Entry, labels: LabelSet) -> Dict[str, np.ndarray]:
    """{'image', 'truth', 'prediction', 'difference'}: (h, w, 3) uint8 RGB arrays of ``entry``
    ('image' only where the reader gave one; the difference is then drawn on a white ground)."""
    out: Dict[str, np.ndarray] = {}
    if entry.image is not None:
        out["image"] = entry.image
    out["truth"] = labels.colorize(entry.label)
    out["prediction"] = labels.colorize(entry.pred)
    base = _grey(entry.image) if entry.image is not None else np.full(entry.label.shape + (3,), 255, np.uint8)
    diff = base.copy()
    wrong = (entry.label != entry.pred) & (entry.label != IGNORE_LABEL)
    diff[wrong] = WRONG_RGB
    out["difference"] = diff
    return out
