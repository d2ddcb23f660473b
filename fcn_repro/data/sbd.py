"""SBD (Semantic Boundaries Dataset, Hariharan et al.), FCN's PASCAL training set.

Layout of ``root`` (``benchmark_RELEASE/dataset`` of benchmark.tgz)::

    img/<id>.jpg
    cls/<id>.mat      MATLAB struct GTcls; GTcls.Segmentation = (H, W) class indices
    train.txt, val.txt

Labels are read with ``scipy.io.loadmat(...)['GTcls'][0]['Segmentation'][0]``
cast to uint8, as FCN's SBD layer did (0..20, no ignore label in SBD; VOC's
255 borders do not exist there). Input preprocessing is VOC's.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fcn_repro.data.base import DataMissingError, Sample, SegDataset, read_mat
from fcn_repro.registry import MEAN_VOC
from fcn_repro.data.transforms import check_label_size, preprocess, read_rgb
from fcn_repro.errors import FcnReproError

__all__ = ["SBDSegmentation", "SBD_LAYOUT", "read_sbd_label"]

SBD_LAYOUT = """\
expected the SBD 'dataset' directory (benchmark_RELEASE/dataset from benchmark.tgz) holding:
  img/<id>.jpg
  cls/<id>.mat       (GTcls.Segmentation: class indices)
  <split>.txt        (train.txt, val.txt)
SBD: the Semantic Boundaries Dataset, http://home.bharathh.info/pubs/codes/SBD/download.html"""


def read_sbd_label(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 class indices from an SBD cls/<id>.mat file."""
    gt = read_mat(path, "GTcls", "SBD label")
    try:
        seg = gt[0]["Segmentation"][0]
    except (KeyError, IndexError, ValueError) as e:
        raise FcnReproError(f"expected a struct GTcls with field Segmentation ({e})", path) from None
    return np.asarray(seg).astype(np.uint8)


class SBDSegmentation(SegDataset):
    """SBD images and class labels; inputs {'data'}, labels {'label'}."""

    name = "sbd"
    title = "SBD"
    layout = SBD_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "train", keep_image: bool = False,
                 mean=MEAN_VOC):
        super().__init__()
        self.root = Path(root)
        if not (self.root / "img").is_dir() or not (self.root / "cls").is_dir():
            hint = ""
            if (self.root / "dataset" / "img").is_dir():
                hint = f"\n(pass {self.root / 'dataset'})"
            raise DataMissingError(f"{self.root} is not the SBD dataset directory{hint}\n{SBD_LAYOUT}")
        self._open_split(split, self.root / f"{split}.txt", None, keep_image, mean)

    def files(self, index: int):
        i = self.ids[index]
        return [self.root / "img" / f"{i}.jpg", self.root / "cls" / f"{i}.mat"]

    def load(self, index: int) -> Sample:
        img_path, lab_path = self.files(index)
        rgb = read_rgb(img_path)
        lab = check_label_size(read_sbd_label(lab_path), rgb.shape, lab_path, img_path)
        return Sample(self.ids[index], {"data": preprocess(rgb, self.mean)}, {"label": lab},
                      rgb if self.keep_image else None)
