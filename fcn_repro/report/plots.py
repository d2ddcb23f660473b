"""Every plot of the project, drawn with matplotlib (the ``report`` extra).

Figures are made with :class:`matplotlib.figure.Figure` and rendered by the
Agg canvas directly: no pyplot, no global backend or state is touched, so
this is safe in threads and under any ``MPLBACKEND``. Each function returns
PNG bytes (or an RGB array) for the caller to embed or write through
:mod:`fcn_repro.outputs`.

* :func:`iu_chart`: per-class IU as horizontal bars, ours beside a reference.
* :func:`confusion_heatmap`: the row-normalised confusion matrix, class names
  on both axes.
* :func:`learning_curve`: training loss and validation scores against the
  iteration (two panels).
* :func:`legend_strip`: the class colours and names of an overlay, as pixels.
"""
from __future__ import annotations

import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fcn_repro.labels import LabelSet
from fcn_repro.report.extra import require

__all__ = ["iu_chart", "confusion_heatmap", "learning_curve", "legend_strip", "figure", "png_bytes", "plain", "percent"]

_OURS = "#1f77b4"
_REF = "#b0b0b0"
_DPI = 100
#: an overlay legend widens to fit its names up to this many pixels
LEGEND_MAX_WIDTH = 2000


def plain(text) -> str:
    """``text`` as matplotlib shall draw it, letter for letter: a '$' in a user's class or run
    name would otherwise start mathtext (and a malformed formula fails the whole plot)."""
    return str(text).replace("$", r"\$")


def percent(fraction: float) -> str:
    """A share of the pixels as a legend or summary shows it: one decimal, and '<0.1%' rather
    than '0.0%' for a class that is there."""
    f = float(fraction)
    return "<0.1%" if 0 < f < 0.0005 else f"{100 * f:.1f}%"


def tick(name, longest: int = 32) -> str:
    """A class name as an axis label: :func:`plain`, cut to ``longest`` characters (the page's
    tables carry the whole name)."""
    name = str(name)
    return plain(name if len(name) <= longest else name[: longest - 1] + "\u2026")


def figure(width_in: float, height_in: float, what: str = "this plot"):
    """A new matplotlib Figure with its Agg canvas (MissingExtraError without matplotlib)."""
    require("matplotlib", what)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def iu_chart(names: Sequence[str], iu: Sequence[float], reference: Optional[Sequence[float]] = None,
             ref_label: str = "reference", excluded: Sequence[int] = (), title: str = "") -> bytes:
    """Per-class IU (percent) as horizontal bars, class 0 at the top; ``reference`` beside ours.
    ``excluded`` classes (SIFT Flow: absent from the set) are named '(not scored)' and get no bar."""
    n = len(names)
    ours = 100 * np.asarray(iu, dtype=np.float64)
    ref = None if reference is None else 100 * np.asarray(reference, dtype=np.float64)
    skip = set(int(c) for c in excluded)
    labels = [tick(names[c]) + (" (not scored)" if c in skip else "") for c in range(n)]
    row = 0.34 if ref is not None else 0.26
    fig = figure(5.6, max(2.2, 0.9 + row * n), "the per-class IU chart")
    ax = fig.add_subplot()
    y = np.arange(n)
    h = 0.4 if ref is not None else 0.7
    vals = np.where([c in skip for c in range(n)], np.nan, ours)
    ax.barh(y - (h / 2 if ref is not None else 0), np.nan_to_num(vals), height=h, color=_OURS, label="ours")
    if ref is not None:
        rv = np.where([c in skip for c in range(n)], np.nan, ref)
        ax.barh(y + h / 2, np.nan_to_num(rv), height=h, color=_REF, label=plain(ref_label))
    for c in range(n):
        if c not in skip:
            finite = math.isfinite(vals[c])   # NaN: no pixel of the class in truth or prediction
            ax.text((vals[c] if finite else 0) + 0.8, y[c] - (h / 2 if ref is not None else 0),
                    f"{vals[c]:.1f}" if finite else "no pixels", va="center", fontsize=7,
                    color="#333333" if finite else "#999999")
    ax.set_yticks(y, labels, fontsize=8)
    for c, t in enumerate(ax.get_yticklabels()):
        if c in skip:
            t.set_color("#999999")
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, 108)
    ax.set_xlabel("IU (%)")
    ax.grid(axis="x", color="#e5e5e5")
    ax.set_axisbelow(True)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    if title:
        ax.set_title(plain(title), fontsize=10, loc="left")
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    fig.tight_layout()
    return png_bytes(fig)


def confusion_heatmap(hist: np.ndarray, names: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix normalised by row (each ground-truth class sums to 100 %),
    ground truth down, prediction across; rows without pixels are grey."""
    h = np.asarray(hist, dtype=np.float64)
    n = h.shape[0]
    rows = h.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, 100 * h / rows, np.nan)
    cell = 0.45 if n <= 8 else 0.32 if n <= 25 else 0.24
    side = max(3.5, 1.8 + cell * n)
    fig = figure(side + 1.2, side, "the confusion matrix heatmap")
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["Blues"].with_extremes(bad="#e4e4e4")   # rows without ground truth: grey
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
    fs = 8 if n <= 25 else 7
    ax.set_xticks(range(n), [tick(x) for x in names], rotation=90, fontsize=fs)
    ax.set_yticks(range(n), [tick(x) for x in names], fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                v = norm[i, j]
                if math.isfinite(v) and v >= 0.5:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=9 if n <= 8 else 7,
                            color="white" if v > 55 else "#222222")
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, shrink=0.75)
    cb.set_label("% of the ground-truth class's pixels", fontsize=8)
    if title:
        ax.set_title(plain(title), fontsize=10, loc="left")
    fig.tight_layout()
    return png_bytes(fig)


def _series(records: Sequence[dict]) -> Tuple[list, list, Dict[str, Dict[str, list]]]:
    train = [(r["iter"], r.get("loss"), r.get("smoothed_loss", r.get("loss"))) for r in records
             if r.get("type") == "train" and r.get("loss") is not None]
    tests: Dict[str, Dict[str, list]] = {}
    lr = [(r["iter"], r.get("lr")) for r in records if r.get("type") == "train" and r.get("lr") is not None]
    for r in records:
        if r.get("type") != "test":
            continue
        for blob, v in (r.get("scores") or {}).items():
            for key in ("mean_iu", "overall_acc"):
                val = v.get(key)
                if val is not None and math.isfinite(float(val)):
                    tests.setdefault(blob, {}).setdefault(key, []).append((r["iter"], 100 * float(val)))
    return train, lr, tests


def learning_curve(records: Sequence[dict], title: str = "") -> bytes:
    """Two panels against the iteration: the training loss (raw, faint; smoothed, solid) and the
    validation scores (mean IU and pixel accuracy of each head, percent)."""
    from matplotlib.ticker import MaxNLocator

    train, _, tests = _series(records)
    fig = figure(9, 6.4, "the learning curve")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    fin = [(i, lo, s) for i, lo, s in train if lo is not None and math.isfinite(lo)]
    if fin:
        it = [t[0] for t in fin]
        ax1.plot(it, [t[1] for t in fin], color=_OURS, alpha=0.4, linewidth=0.9, label="loss")
        ax1.plot(it, [t[2] for t in fin], color=_OURS, linewidth=1.8, label="smoothed loss")
        ax1.legend(fontsize=8, loc="best")
        ax1.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    else:
        ax1.text(0.5, 0.5, "no training iterations yet", ha="center", va="center", transform=ax1.transAxes,
                 color="#888888")
    ax1.set_ylabel("training loss")
    ax1.set_title(plain(title or "learning curve"), fontsize=10, loc="left")
    styles = {"mean_iu": ("-", "o", "mean IU"), "overall_acc": ("--", "s", "pixel acc")}
    colours = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    any_test = False
    for k, (blob, series) in enumerate(tests.items()):
        for key, pts in series.items():
            ls, mk, lab = styles[key]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=ls, marker=mk, markersize=4,
                     color=colours[k % len(colours)], label=plain(lab + ("" if len(tests) == 1 else f" ({blob})")))
            any_test = True
    if any_test:
        ax2.legend(fontsize=8, loc="lower right")
        ax2.set_ylim(0, 100)
    else:
        ax2.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax2.transAxes,
                 color="#888888")
    ax2.set_ylabel("validation (%)")
    ax2.set_xlabel("iteration")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax1, ax2):
        ax.grid(color="#e5e5e5")
        ax.set_axisbelow(True)
    fig.tight_layout()
    return png_bytes(fig)


def legend_strip(labels: LabelSet, classes: Sequence[int], width: int,
                 fractions: Optional[Dict[int, float]] = None, untinted: Sequence[int] = ()) -> np.ndarray:
    """(h, w, 3) uint8: a white strip listing ``classes`` (colour swatch, name and, given
    ``fractions``, the share of pixels), in as many columns as ``width`` holds; ``untinted``
    classes (left as the photo in the overlay) say so. ``w`` is ``width``, or more where a
    name needs it (at most :data:`LEGEND_MAX_WIDTH`)."""
    from matplotlib.patches import Patch

    classes = list(classes)
    handles: List = []
    names: List[str] = []
    for c in classes:
        rgb = tuple(int(v) / 255 for v in labels.palette[c])
        handles.append(Patch(facecolor=rgb, edgecolor="#555555", linewidth=0.6))
        f = None if fractions is None else fractions.get(c)
        share = "" if f is None else " " + percent(f)
        names.append(plain(labels.name(c) + share + (" (not tinted)" if c in untinted else "")))
    ncol = max(1, min(len(classes), width // 230)) if classes else 1
    for _ in range(2):   # a second time only when the names are wider than ``width``: as wide as they need
        nrow = max(1, math.ceil(len(classes) / ncol))
        height = 14 + 21 * nrow
        fig = figure(width / _DPI, height / _DPI, "the overlay legend")
        fig.patch.set_facecolor("white")
        leg = fig.legend(handles, names, loc="upper left", ncol=ncol, frameon=False, fontsize=10,
                         handlelength=1.2, handleheight=1.0, columnspacing=1.2, borderaxespad=0.3,
                         bbox_to_anchor=(0, 1)) if handles else None
        fig.canvas.draw()
        need = 0 if leg is None else math.ceil(leg.get_window_extent().x1) + 6
        if need <= width or width >= LEGEND_MAX_WIDTH:
            break
        width = min(need, LEGEND_MAX_WIDTH)
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    out = np.full((height, width, 3), 255, np.uint8)
    h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
    out[:h, :w] = rgb[:h, :w]
    return out
