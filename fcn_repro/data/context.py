"""PASCAL-Context, the 59-class task (Mottaghi et al. CVPR 2014), as FCN read it.

Two directories:

- ``root``: the PASCAL-Context annotations, holding ``trainval/<id>.mat``
  (key 'LabelMap': indices into the full label list) and ``labels.txt``
  (the full list, lines ``<n>: <name>``). ``59_labels.txt`` (``<n>: <name>``,
  n = 1..59) is used when present, else the packaged 59-class list.
- ``voc_dir``: the VOC2010 year directory with ``JPEGImages/<id>.jpg`` and
  ``ImageSets/Main/<split>.txt`` (default: ``root/VOC2010`` or
  ``root/VOCdevkit/VOC2010``).

Conventions of FCN's PASCAL-Context layer (checked against its source text;
not run here on the real files, which are not reachable from this machine):

- input: RGB -> BGR minus ``registry.MEAN_CONTEXT`` (VOC's (B, G, R) mean
  rounded, float32);
- names compared with spaces removed; three task names are renamed to the
  full list's names first: diningtable -> table, bedcloth -> bedclothes,
  clothes -> cloth;
- the k-th of the 59 classes (k = 1..59) gets label k; every other pixel
  (the other labels and the unlabelled 0) gets 0, "background". There is no
  ignore label: the nets score 60 classes, and evaluation counts all 60.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from fcn_repro.data.base import DataMissingError, Sample, SegDataset, class_names, read_mat, read_text_lines
from fcn_repro.registry import MEAN_CONTEXT
from fcn_repro.data.transforms import check_label_size, preprocess, read_rgb
from fcn_repro.errors import FcnReproError

__all__ = ["ContextSegmentation", "CONTEXT_LAYOUT", "context_label_map", "map_context_labels"]

CONTEXT_LAYOUT = """\
expected the PASCAL-Context annotation directory holding:
  trainval/<id>.mat   (key 'LabelMap')
  labels.txt          (the full label list, '<n>: <name>')
  59_labels.txt       (optional; the packaged 59-class list is used if absent)
and the VOC2010 year directory (JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt),
by default at <context dir>/VOC2010 or <context dir>/VOCdevkit/VOC2010.
PASCAL-Context: https://cs.stanford.edu/~roozbeh/pascal-context/ ; VOC2010: http://host.robots.ox.ac.uk/pascal/VOC/"""

_RENAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def _read_numbered(path: Path) -> dict:
    out = {}
    for ln in read_text_lines(path, "label list"):
        if not ln.strip():
            continue
        n, sep, name = ln.partition(":")
        if not sep:
            raise FcnReproError(f"expected lines '<n>: <name>', got {ln!r}", path)
        out[int(n)] = name.strip()
    return out


def context_label_map(full_labels: Path, labels_59: Optional[Path] = None) -> np.ndarray:
    """Lookup table: full-list label index -> 59-task label (0 = background).

    Returns an int64 array ``lut`` with ``lut[i]`` the task label of full
    label i (index 0, unlabelled, maps to 0).
    """
    full = {n: name.replace(" ", "") for n, name in _read_numbered(full_labels).items()}
    if labels_59 is not None and labels_59.is_file():
        task = _read_numbered(labels_59)
    else:
        task = {i: name for i, name in enumerate(class_names("pascalcontext"))}
    task = {n: name.replace(" ", "") for n, name in task.items() if n != 0}
    if sorted(task) != list(range(1, 60)):
        raise ValueError(f"59-class list must number its classes 1..59; got {sorted(task)[:3]}...")
    by_name = {name: n for n, name in full.items()}
    lut = np.zeros(max(full) + 1, dtype=np.int64)
    for k in range(1, 60):
        name = _RENAMES.get(task[k], task[k])
        if name not in by_name:
            raise ValueError(f"class {k} {task[k]!r} (as {name!r}) is not in the full label list {full_labels}")
        lut[by_name[name]] = k
    return lut


def map_context_labels(label_full: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W) full-list indices -> (H, W) uint8 59-task labels; unknown -> 0."""
    a = np.asarray(label_full).astype(np.int64)
    inside = (a >= 0) & (a < len(lut))
    out = np.zeros(a.shape, dtype=np.uint8)
    out[inside] = lut[a[inside]]
    return out


class ContextSegmentation(SegDataset):
    """PASCAL-Context 59-class task: inputs {'data'}, labels {'label'} (0..59)."""

    name = "context"
    title = "PASCAL-Context"
    layout = CONTEXT_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val", voc_dir: str | os.PathLike | None = None,
                 keep_image: bool = False, mean=MEAN_CONTEXT):
        super().__init__()
        self.root = Path(root)
        if not (self.root / "trainval").is_dir() or not (self.root / "labels.txt").is_file():
            raise DataMissingError(f"{self.root} is not the PASCAL-Context directory "
                                   f"(needs trainval/ and labels.txt)\n{CONTEXT_LAYOUT}")
        if voc_dir is None:
            for c in (self.root / "VOC2010", self.root / "VOCdevkit" / "VOC2010"):
                if (c / "JPEGImages").is_dir():
                    voc_dir = c
                    break
        if voc_dir is None or not (Path(voc_dir) / "JPEGImages").is_dir():
            raise DataMissingError(f"VOC2010 images not found (looked at {voc_dir or self.root / 'VOC2010'})\n"
                                   + CONTEXT_LAYOUT)
        self.voc_dir = Path(voc_dir)
        self._open_split(split, self.voc_dir / "ImageSets" / "Main" / f"{split}.txt", None, keep_image, mean)
        self.lut = context_label_map(self.root / "labels.txt", self.root / "59_labels.txt")

    def files(self, index: int) -> List[Path]:
        i = self.ids[index]
        return [self.voc_dir / "JPEGImages" / f"{i}.jpg", self.root / "trainval" / f"{i}.mat"]

    def load(self, index: int) -> Sample:
        img, mat = self.files(index)
        rgb = read_rgb(img)
        full = read_mat(mat, "LabelMap", "PASCAL-Context label")
        label = check_label_size(map_context_labels(full, self.lut), rgb.shape, mat, img)
        return Sample(self.ids[index], {"data": preprocess(rgb, self.mean)}, {"label": label},
                      rgb if self.keep_image else None)
