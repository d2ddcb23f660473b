"""SIFT Flow (Liu et al.; Tighe and Lazebnik), semantic and geometric labels.

Layout of ``root`` (SiftFlowDataset.zip unpacked)::

    Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
    SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat   key 'S'
    GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat        key 'S'
    <split>.txt   (optional: the packaged trainval/test lists are used if absent)

Conventions of FCN's SIFT Flow layer (checked against its source text; not
run here on the real files, which are not reachable from this machine):

- input: RGB -> BGR minus SIFT Flow's own (B, G, R) mean, not VOC's
  (``registry.MEAN_SIFTFLOW``, float32);
- semantic 'S': 0 = void, 1..33 = classes; cast to uint8 and shifted by -1
  in uint8 arithmetic, so classes become 0..32 and void wraps to 255 (ignored);
- geometric 'S': -1 = void, 1..3 = classes (sky, horizontal, vertical); -1 is
  first set to 0, then the same uint8 shift gives 0..2 and void 255.

Evaluation leaves the classes absent from the evaluated set out of the mean IU
(``exclude_absent``; on the test set: cow, desert, moon). The two images
without annotations (highway_bost181, street_urb506) are not in the packaged
lists.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fcn_repro.data.base import DataMissingError, Sample, SegDataset, read_mat, resource_path
from fcn_repro.registry import MEAN_SIFTFLOW
from fcn_repro.data.transforms import check_label_size, preprocess, read_rgb

__all__ = ["SIFTFlowSegmentation", "SIFTFLOW_LAYOUT", "read_siftflow_label"]

_SUB = "spatial_envelope_256x256_static_8outdoorcategories"

SIFTFLOW_LAYOUT = f"""\
expected the SIFT Flow directory (SiftFlowDataset.zip unpacked) holding:
  Images/{_SUB}/<id>.jpg
  SemanticLabels/{_SUB}/<id>.mat   (key 'S': 0 void, 1..33)
  GeoLabels/{_SUB}/<id>.mat        (key 'S': -1 void, 1..3)
  <split>.txt (optional; packaged lists: trainval, test)
SIFT Flow: SiftFlowDataset.zip (Liu, Yuen, Torralba; used by Tighe and Lazebnik, ECCV 2010)"""


def read_siftflow_label(path: str | os.PathLike, kind: str) -> np.ndarray:
    """(H, W) uint8 labels from a SIFT Flow .mat; kind 'semantic' or 'geometric'."""
    s = read_mat(path, "S", "SIFT Flow label map")
    if kind == "geometric":
        s = s.copy()
        s[s == -1] = 0  # the layer maps void (-1) to 0 first, so the shift below makes it 255
    elif kind != "semantic":
        raise ValueError(f"unknown SIFT Flow label kind {kind!r}: 'semantic' or 'geometric'")
    # uint8 cast then uint8 subtraction: 0 wraps to 255 (void -> ignore).
    return s.astype(np.uint8) - np.uint8(1)


class SIFTFlowSegmentation(SegDataset):
    """SIFT Flow images with two label heads: 'sem' (33) and 'geo' (3)."""

    name = "siftflow"
    title = "SIFT Flow"
    layout = SIFTFLOW_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "test", keep_image: bool = False,
                 mean=MEAN_SIFTFLOW):
        super().__init__()
        self.root = Path(root)
        if not (self.root / "Images" / _SUB).is_dir():
            raise DataMissingError(f"{self.root} is not the SIFT Flow directory (no Images/{_SUB})\n"
                                   + SIFTFLOW_LAYOUT)
        self._open_split(split, self.root / f"{split}.txt", resource_path("data", f"siftflow-{split}.txt"),
                         keep_image, mean)

    def files(self, index: int):
        i = self.ids[index]
        return [self.root / "Images" / _SUB / f"{i}.jpg",
                self.root / "SemanticLabels" / _SUB / f"{i}.mat",
                self.root / "GeoLabels" / _SUB / f"{i}.mat"]

    def load(self, index: int) -> Sample:
        """inputs {'data': (3, H, W)}; labels {'sem': (H, W), 'geo': (H, W)} uint8."""
        img, sem, geo = self.files(index)
        rgb = read_rgb(img)
        labels = {"sem": check_label_size(read_siftflow_label(sem, "semantic"), rgb.shape, sem, img),
                  "geo": check_label_size(read_siftflow_label(geo, "geometric"), rgb.shape, geo, img)}
        return Sample(self.ids[index], {"data": preprocess(rgb, self.mean)}, labels,
                      rgb if self.keep_image else None)
