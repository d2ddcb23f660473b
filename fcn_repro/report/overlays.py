"""``infer``'s overlay pictures: the class colours over the photo, with a legend.

:func:`overlay_picture` blends a prediction over its image in the head's
colours (:class:`~fcn_repro.labels.LabelSet`: the dataset's, or a user's own),
leaving the background (classes coloured black) undimmed unless asked, and
puts below it a legend of the classes present, each with its colour, name and
share of the pixels (drawn by matplotlib: :func:`fcn_repro.report.plots.legend_strip`).
``side_by_side`` puts the untouched image on the left of the overlay. The
overlay's own pixels are those of :func:`fcn_repro.data.transforms.overlay`,
at the image's size.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from fcn_repro.data.transforms import overlay
from fcn_repro.labels import LabelSet
from fcn_repro.registry import IGNORE_LABEL
from fcn_repro.report import plots

__all__ = ["overlay_picture", "present_classes"]

_GAP = 8   # white pixels between the image and the overlay


def present_classes(label: np.ndarray) -> tuple:
    """(classes present by decreasing pixel count, {class: fraction of the pixels}); 255 left out."""
    counts = np.bincount(np.asarray(label, dtype=np.uint8).reshape(-1), minlength=256)
    counts[IGNORE_LABEL] = 0
    total = counts.sum()
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    return order, {c: counts[c] / total for c in order}


def overlay_picture(image: np.ndarray, label: np.ndarray, labels: LabelSet, alpha: float = 0.5,
                    background_alpha: float = 0.0, legend: bool = True, side_by_side: bool = False,
                    legend_width: Optional[int] = None) -> np.ndarray:
    """(H', W', 3) uint8: the overlay (beside the image with ``side_by_side``), the legend below
    it when ``legend`` (needs matplotlib)."""
    ov = overlay(image, label, alpha=alpha, labels=labels, background_alpha=background_alpha)
    if side_by_side:
        h = ov.shape[0]
        ov = np.concatenate([np.asarray(image, dtype=np.uint8), np.full((h, _GAP, 3), 255, np.uint8), ov], axis=1)
    if not legend:
        return ov
    classes, fractions = present_classes(label)
    width = max(ov.shape[1], legend_width or 180)
    # overlay()'s rule: classes coloured black (the background) are blended at background_alpha
    untinted = {c for c in classes if not labels.palette[c].any()} if background_alpha == 0 else set()
    strip = plots.legend_strip(labels, classes, width, fractions, untinted=untinted)
    width = strip.shape[1]   # wider than asked where the names need it
    if ov.shape[1] < width:
        ov = np.concatenate([ov, np.full((ov.shape[0], width - ov.shape[1], 3), 255, np.uint8)], axis=1)
    return np.concatenate([ov, strip], axis=0)
