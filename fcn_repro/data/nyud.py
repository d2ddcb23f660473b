"""NYUDv2 in the FCN layout (nyud.tar.gz): colour, HHA and depth, 40 classes.

Layout of ``root``::

    data/images/img_<id>.png     colour
    data/hha/img_<id>.png        HHA encoding of depth (Gupta et al. ECCV 2014), 3 channels
    data/depth/img_<id>.png      depth, 16-bit PNG
    segmentation/img_<id>.mat    key 'segmentation': 0 = void, 1..40 = classes
    <split>.txt                  (optional: packaged train/val/test lists used if absent)

Conventions of FCN's NYUDv2 layer (checked against its source text; not run
here on the real files, which are not reachable from this machine):

- 'color': RGB -> BGR, minus ``registry.MEAN_NYUD_COLOR`` (float32), (3, H, W);
- 'hha': the PNG's three channels in file order (no reversal), minus
  ``registry.MEAN_NYUD_HHA`` (float32), (3, H, W);
- 'depth': log of the PNG's values as float32, minus
  ``registry.MEAN_NYUD_LOGD``, (1, H, W). A
  zero depth gives -inf, as in the original (the FCN layout's depth maps are
  filled, so this does not arise on its files);
- label: 'segmentation' cast to uint8, minus 1 in uint8 arithmetic: classes
  0..39, void 0 wraps to 255 (ignored).

Nets take these by name: colour-only nets feed 'color' to their 'data'
input; early fusion (color-d) concatenates 'color' and 'depth' into a
4-channel 'data'; late fusion (color-hha) has inputs 'color' and 'hha'.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fcn_repro.data.base import DataMissingError, Sample, SegDataset, read_mat, resource_path
from fcn_repro.data.transforms import check_label_size, log_depth, preprocess, read_image, read_rgb
from fcn_repro.registry import MEAN_NYUD_COLOR, MEAN_NYUD_HHA, MEAN_NYUD_LOGD

__all__ = ["NYUDSegmentation", "NYUD_LAYOUT", "read_nyud_label"]

NYUD_LAYOUT = """\
expected the NYUDv2 directory in the FCN layout (nyud.tar.gz) holding:
  data/images/img_<id>.png, data/hha/img_<id>.png, data/depth/img_<id>.png
  segmentation/img_<id>.mat   (key 'segmentation': 0 void, 1..40)
  <split>.txt (optional; packaged lists: train, val, test)
NYUDv2 in the FCN layout: http://dl.caffe.berkeleyvision.org/nyud.tar.gz"""

TOPS = ("color", "hha", "depth")


def read_nyud_label(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8: classes 0..39, void 255."""
    seg = read_mat(path, "segmentation", "NYUDv2 label")
    return seg.astype(np.uint8) - np.uint8(1)


class NYUDSegmentation(SegDataset):
    """NYUDv2 (40 classes). tops: which inputs to load, from 'color', 'hha', 'depth'."""

    name = "nyud"
    title = "NYUDv2"
    layout = NYUD_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "test", tops: Sequence[str] = ("color",),
                 keep_image: bool = False):
        super().__init__()
        self.root = Path(root)
        bad = [t for t in tops if t not in TOPS]
        if bad:
            raise ValueError(f"unknown NYUDv2 input(s) {bad}; choose from {TOPS}")
        if not (self.root / "data").is_dir() or not (self.root / "segmentation").is_dir():
            raise DataMissingError(f"{self.root} is not the NYUDv2 FCN-layout directory\n{NYUD_LAYOUT}")
        self.tops = tuple(tops)
        self._open_split(split, self.root / f"{split}.txt", resource_path("data", f"nyud-{split}.txt"), keep_image)

    def _path(self, kind: str, i: str) -> Path:
        if kind == "label":
            return self.root / "segmentation" / f"img_{i}.mat"
        sub = {"color": "images", "hha": "hha", "depth": "depth"}[kind]
        return self.root / "data" / sub / f"img_{i}.png"

    def files(self, index: int):
        i = self.ids[index]
        return [self._path(t, i) for t in self.tops] + [self._path("label", i)]

    def load(self, index: int) -> Sample:
        i = self.ids[index]
        inputs, rgb = {}, None
        for t in self.tops:
            if t == "color":
                rgb = read_rgb(self._path("color", i))
                inputs["color"] = preprocess(rgb, MEAN_NYUD_COLOR)
            elif t == "hha":
                hha = read_rgb(self._path("hha", i))
                inputs["hha"] = preprocess(hha, MEAN_NYUD_HHA, bgr=False)
            else:
                depth = self._path("depth", i)
                inputs["depth"] = log_depth(read_image(depth, "depth"), MEAN_NYUD_LOGD, depth)
        label = read_nyud_label(self._path("label", i))
        for k, v in inputs.items():
            check_label_size(label, v.shape[1:], self._path("label", i), self._path(k, i))
        if self.keep_image and rgb is None:
            rgb = read_rgb(self._path("color", i))
        return Sample(i, inputs, {"label": label}, rgb if self.keep_image else None)
