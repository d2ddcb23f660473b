"""What a training run draws into its output directory (the trainer's hooks).

:class:`TrainingPictures`, held by :class:`fcn_repro.trainer.Trainer` on the
writing process:

* ``curve.png`` (:func:`draw_curve`): the training loss and the validation
  scores against the iteration, two panels drawn by matplotlib;
* ``tensorboard/``: TensorBoard event files when the ``tensorboard`` package is
  installed: ``train/loss``, ``train/smoothed_loss``, ``train/lr``, ``train/top/<loss top>``,
  ``val/<head>/<score>`` (the four scores), ``val_iu/<head>/<class>`` (per
  class IU) and, at each validation, the first few validation images as
  image | ground truth | prediction strips (``val_images/<head>/<id>``)
  (``tensorboard --logdir RUN/tensorboard``);
* ``report/index.html`` at the end of the run: the evaluation report
  (:mod:`fcn_repro.report.page`) of its last validation, with its gallery.

Both extras are optional (``pip install 'fcn_repro[report]'``): without
matplotlib there is no curve or report, without tensorboard no event files;
either is said once on stderr, and training goes on.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fcn_repro.evaluation import SCORE_KEYS, Validator, head_result, sum_scalar
from fcn_repro.outputs import output_file
from fcn_repro.report import plots
from fcn_repro.report.extra import EXTRA, available
from fcn_repro.report.gallery import Gallery, panels
from fcn_repro.report.page import write_report

__all__ = ["TrainingPictures", "draw_curve", "validation_report", "validation_gallery", "TB_DIR", "REPORT_DIR"]

#: under the run's directory: the TensorBoard event files and the final report
TB_DIR = "tensorboard"
REPORT_DIR = "report"
#: validation images shown in TensorBoard (the same ones at every validation)
TB_IMAGES = 3
#: the worst and best validation images the end-of-run report shows
GALLERY = 4


def draw_curve(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """The learning-curve PNG of a run's log records (:func:`fcn_repro.report.plots.learning_curve`),
    written atomically; needs matplotlib."""
    png = plots.learning_curve(records, title)
    with output_file(path, len(png), "wb") as f:
        f.write(png)


def validation_report(validator: Validator, weights: Any = None, net: Optional[str] = None) -> dict:
    """The validator's last run as :func:`fcn_repro.evaluation.evaluate_set`'s report (the input of
    :func:`fcn_repro.report.write_report`); ``weights`` names the weights it scored."""
    last = validator.last
    if last is None:
        raise ValueError("no validation has run yet")
    ds = validator.dataset
    heads = {b: head_result(h, ds, validator.labelset(b, h.shape[0]), validator.heads[b])
             for b, h in last["hists"].items()}
    sec = last["seconds"]
    return {"net": net or validator.prototxt, "prototxt": validator.prototxt,
            "weights": str(weights or "(the training net's weights, in memory)"), "weights_check": None,
            "dataset": getattr(ds, "name", "dataset"), "data": str(getattr(ds, "root", "")),
            "split": str(getattr(ds, "split", "")), "split_file": str(getattr(ds, "split_file", None) or ""),
            "limit": last["limit"], "images": last["images"], "device": str(validator.device),
            "world_size": validator.world, "fast": False, "time": last["time"], "seconds": sec,
            "images_per_s": last["images"] / sec if sec > 0 else None, "heads": heads, "rank": validator.rank}


def validation_gallery(pictures: Optional["TrainingPictures"], world: int) -> Optional[Gallery]:
    """The gallery the next validation feeds on this process, or None. Every process calls it
    (with ``world`` > 1 it is collective: the processes agree on whether rank 0's pictures want
    images); the writer gets its pictures' gallery, the others one of their own, which
    :meth:`Gallery.gathered` after the validation brings to rank 0: the report's worst and best
    are the whole validation set's, not rank 0's share."""
    want = pictures is not None and pictures.wants_images()
    if world > 1:
        want = sum_scalar(float(want), world, op="max") > 0
    if not want:
        return None
    if pictures is not None:
        pictures.observer()
        return pictures.gallery
    return Gallery(GALLERY)


class TrainingPictures:
    """The curve, TensorBoard events and final report of one run in ``out_dir`` (see the module
    docstring). ``tensorboard``/``report``: False turns that part off. ``say``: where the
    once-only notes about a missing extra go (default: stderr)."""

    def __init__(self, out_dir: str | os.PathLike, *, tensorboard: bool = True, report: bool = True,
                 gallery: int = GALLERY, say: Optional[Callable[[str], None]] = None):
        self.out_dir = Path(out_dir)
        self.say = say or (lambda m: print(m, file=sys.stderr))
        self.plots = available("matplotlib")
        self.report_wanted = report
        self.gallery_k = gallery
        self.gallery: Optional[Gallery] = None
        self._told: set = set()
        self.tb = None
        if tensorboard:
            if available("tensorboard"):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(self.out_dir / TB_DIR))
            else:
                self._note("tensorboard", "no TensorBoard event files")
        if not self.plots:
            self._note("matplotlib", "no curve.png and no report page")

    def _note(self, pkg: str, what: str) -> None:
        if pkg not in self._told:
            self._told.add(pkg)
            self.say(f"note: {what}: {pkg} is not installed (pip install 'fcn_repro[{EXTRA}]')")

    # -- the trainer's hooks
    def train(self, rec: dict) -> None:
        """One training iteration's log record."""
        if self.tb is None:
            return
        it = int(rec["iter"])
        for key in ("loss", "smoothed_loss", "lr"):
            v = rec.get(key)
            if v is not None and math.isfinite(float(v)):
                self.tb.add_scalar(f"train/{key}", float(v), it)
        for top, v in (rec.get("losses") or {}).items():
            self.tb.add_scalar(f"train/top/{top}", float(v), it)

    def wants_images(self) -> bool:
        """Whether anything (TensorBoard, the report) would show the validation's images."""
        return self.tb is not None or (self.plots and self.report_wanted)

    def observer(self) -> Optional[Callable[..., None]]:
        """The per-image hook for the next validation (a fresh gallery), or None when nothing
        would show its images."""
        if not self.wants_images():
            return None
        self.gallery = Gallery(self.gallery_k, first=TB_IMAGES if self.tb is not None else 0)
        return self.gallery.observe

    def test(self, rec: dict, validator: Validator) -> None:
        """One validation's log record (after :meth:`observer`'s gallery saw its images)."""
        if self.tb is None:
            return
        it = int(rec["iter"])
        for blob, v in (rec.get("scores") or {}).items():
            for key in SCORE_KEYS:
                if v.get(key) is not None and math.isfinite(float(v[key])):
                    self.tb.add_scalar(f"val/{blob}/{key}", float(v[key]), it)
            iu = v.get("iu")
            if iu is None:
                continue
            ls = validator.labelset(blob, len(iu))
            skip = set(v.get("excluded_classes") or ())
            for c, val in enumerate(iu):
                if c not in skip and val is not None and math.isfinite(float(val)):
                    self.tb.add_scalar(f"val_iu/{blob}/{ls.name(c)}", float(val), it)
            for e in (self.gallery.first(blob) if self.gallery is not None else []):
                p = panels(e, ls)
                strip = np.concatenate([p.get("image", p["truth"]), p["truth"], p["prediction"]], axis=1)
                self.tb.add_image(f"val_images/{blob}/{e.id}", strip, it, dataformats="HWC")
        self.tb.flush()

    def curve(self, records: Sequence[dict], title: str) -> None:
        """Redraw ``curve.png``."""
        if self.plots:
            draw_curve(records, self.out_dir / "curve.png", title)

    def finish(self, validator: Optional[Validator], weights: Any = None, iteration: Optional[int] = None,
               net: Optional[str] = None) -> Optional[Path]:
        """At the end of a run: the report page of the last validation (None when there was none
        or matplotlib is missing); the event files are closed. Where they are is said (``say``)."""
        page = None
        if validator is not None and validator.last is not None and self.plots and self.report_wanted:
            report = validation_report(validator, weights, net)
            title = f"run {self.out_dir.resolve().name} ({Path(str(net or validator.prototxt)).name}): validation" + (
                f" at iteration {iteration}" if iteration is not None else "")
            page = write_report(self.out_dir / REPORT_DIR, report, self.gallery, title=title)
            self.say(f"report: {page}")
        if self.tb is not None:
            self.say(f"TensorBoard: tensorboard --logdir {self.out_dir / TB_DIR}")
        self.close()
        return page

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
