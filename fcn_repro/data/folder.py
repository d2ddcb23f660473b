"""A user's own data: a plain folder of images and index-PNG labels, read by every tool.

Layout of ``root``::

    images/<stem>.<any suffix PIL reads>   (jpg, png, bmp, tif, ...)
    labels/<stem>.png                      index PNG (mode P or L): class c = value c, 255 = ignore
    classes.txt                            optional: one class name a line (or --classes a,b,c)
    train.txt, val.txt                     optional: one stem a line

Images and labels pair by file stem. Without ``train.txt`` / ``val.txt`` the
split is deterministic and stated (:func:`split_rule`): the stems in sorted
order, every fifth (the 5th, 10th, ...) to ``val``, the rest to ``train``.
``split`` may also be ``all`` or a path to any .txt list. Ids in a list are
plain stems (:func:`fcn_repro.data.base.read_id_list` refuses a path or ``..``),
so a list can not reach outside the folder.

A VOC-layout directory (``JPEGImages/``, ``SegmentationClass/``,
``ImageSets/Segmentation/<split>.txt``) with any number of classes is read by
:class:`~fcn_repro.data.voc.VOCSegmentation` with the classes given here;
:func:`open_own` picks the reader by layout. The classes, names and colours,
come from :func:`own_labels` (``--classes`` or ``classes.txt``; the label
PNGs' own palette where they have one).

Input: RGB -> BGR -> minus the VOC mean (the pretrained nets' preprocessing,
FACTS.md) -> (3, H, W) float32; label: (H, W) uint8.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from fcn_repro.data.base import DataMissingError, Sample, SegDataset, read_id_list, read_text_lines
from fcn_repro.data.voc import VOCSegmentation
from fcn_repro.data.transforms import check_label_size, open_checked, preprocess, read_label_png, read_rgb
from fcn_repro.errors import FcnReproError
from fcn_repro.labels import LabelSet
from fcn_repro.registry import MEAN_VOC

__all__ = ["FolderSegmentation", "FOLDER_LAYOUT", "OwnDataError", "is_folder", "is_voc_layout", "own_labels",
           "open_own", "split_rule", "image_files", "parse_classes", "read_classes", "label_values"]

FOLDER_LAYOUT = """\
expected your own data as a folder holding:
  images/<stem>.<jpg|png|...>   the images (any format PIL reads)
  labels/<stem>.png             index PNGs (mode P or L): class c = value c, 255 = ignore
  classes.txt                   optional: one class name a line (or pass --classes a,b,c)
  train.txt, val.txt            optional: one stem a line (else every 5th stem is val)
or a VOC-layout directory (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt)"""

#: every VAL_EVERY-th stem (sorted) is a validation image when the folder has no lists
VAL_EVERY = 5


class OwnDataError(FcnReproError):
    """A user's dataset that can not be read as given (the message names the file)."""


def split_rule() -> str:
    """The deterministic split of a folder without train.txt / val.txt, in words (logs)."""
    return (f"stems in sorted order, every {VAL_EVERY}th (the {VAL_EVERY}th, {2 * VAL_EVERY}th, ...) to val, "
            "the rest to train")


def is_folder(root: str | os.PathLike) -> bool:
    """True when ``root`` has the images/ + labels/ layout."""
    p = Path(root)
    return (p / "images").is_dir() and (p / "labels").is_dir()


def is_voc_layout(root: str | os.PathLike) -> bool:
    p = Path(root)
    return (p / "JPEGImages").is_dir() and (p / "SegmentationClass").is_dir()


def image_files(images_dir: Path) -> tuple[Dict[str, Path], List[tuple]]:
    """stem -> image file of ``images_dir`` (suffixes PIL registers), and (stem, [files]) for stems
    with several image files (ambiguous pairs)."""
    exts = {e.lower() for e in Image.registered_extensions()}
    found: Dict[str, List[Path]] = {}
    for p in sorted(images_dir.iterdir()):
        if p.suffix.lower() in exts and not p.name.startswith("."):
            found.setdefault(p.stem, []).append(p)
    dups = [(s, fs) for s, fs in found.items() if len(fs) > 1]
    return {s: fs[0] for s, fs in found.items()}, dups


def parse_classes(text: Optional[str]) -> Optional[List[str]]:
    """``--classes a,b,c`` -> ['a', 'b', 'c'] (None stays None)."""
    if text is None:
        return None
    return [c.strip() for c in text.split(",")]


def read_classes(path: str | os.PathLike) -> List[str]:
    """The class names of a classes.txt: one a line, blank lines and surrounding space dropped."""
    return [ln.strip() for ln in read_text_lines(path, "class list") if ln.strip()]


def _first_label_palette(label_dir: Path, suffix: str = ".png") -> Optional[list]:
    for p in sorted(label_dir.glob("*" + suffix)):
        try:
            with open_checked(p, "label") as im:
                return im.getpalette() if im.mode == "P" else None
        except (FcnReproError, OSError):
            continue   # the checker names unreadable labels
    return None


def own_labels(root: str | os.PathLike, classes: Optional[Sequence[str]] = None) -> LabelSet:
    """The classes of the data in ``root``: ``classes`` (from --classes) else ``root/classes.txt``;
    colours from the label PNGs' palette where they have one (:meth:`LabelSet.own`)."""
    root = Path(root)
    where = None
    if classes is None:
        f = root / "classes.txt"
        if not f.is_file():
            raise OwnDataError("no class names: pass --classes a,b,c (one name per label value 0, 1, ...) "
                               f"or write {f} (one name a line)", os.fspath(root))
        classes, where = read_classes(f), f
    label_dir = root / ("labels" if is_folder(root) else "SegmentationClass")
    pal = _first_label_palette(label_dir) if label_dir.is_dir() else None
    return LabelSet.own(list(classes), pal, where=where or root)


class FolderSegmentation(SegDataset):
    """Images and index-PNG labels of a plain folder (see the module docstring).

    root: the folder. split: 'train', 'val', 'all' or a .txt list. classes:
    class names (default: classes.txt, else none known). keep_image: also
    return the decoded RGB image. mean: (B, G, R) mean. labels: read labels/.
    """

    name = "folder"
    title = "folder"
    layout = FOLDER_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "val", keep_image: bool = False, mean=MEAN_VOC,
                 labels: bool = True, classes: Optional[Sequence[str]] = None):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataMissingError(f"data directory not found: {self.root}\n{FOLDER_LAYOUT}")
        self.image_dir, self.label_dir = self.root / "images", self.root / "labels"
        need = [self.image_dir] + ([self.label_dir] if labels else [])
        missing = [d for d in need if not d.is_dir()]
        if missing:
            raise DataMissingError(f"{self.root}: missing {', '.join(str(m) for m in missing)}\n{FOLDER_LAYOUT}")
        self.images, _ = image_files(self.image_dir)
        self.split, self.keep_image, self.mean, self.with_labels = split, keep_image, mean, labels
        self.split_file: Optional[Path] = None
        self.ids = self._split_ids(split)
        if classes is None and (self.root / "classes.txt").is_file():
            classes = read_classes(self.root / "classes.txt")
        self.classes = list(classes) if classes is not None else None
        self.heads = {"label": self.classes} if labels else {}

    def card_heads(self) -> Dict[str, Optional[List[str]]]:
        return dict(self.heads)

    def _split_ids(self, split: str) -> List[str]:
        listed = Path(split) if split.endswith(".txt") else self.root / f"{split}.txt"
        if listed.is_file():
            self.split_file = listed
            return read_id_list(listed)
        if split.endswith(".txt"):
            raise DataMissingError(f"split list not found: {listed}\n{FOLDER_LAYOUT}")
        stems = sorted(self.images)
        if split == "all":
            return stems
        if split not in ("train", "val"):
            raise DataMissingError(f"split {split!r}: no {listed} (without lists the splits are "
                                   f"'train', 'val' and 'all')\n{FOLDER_LAYOUT}")
        if len(stems) < 2:
            return stems      # one image: it is both
        val = set(stems[VAL_EVERY - 1::VAL_EVERY] or stems[-1:])
        return [s for s in stems if (s in val) == (split == "val")]

    @property
    def split_note(self) -> str:
        """Where the split came from, for the log."""
        if self.split_file is not None:
            return f"{self.split_file} ({len(self.ids)} images)"
        return f"{self.split!r}: no {self.split}.txt in {self.root}, so {split_rule()} ({len(self.ids)} images)"

    def image_path(self, i: int) -> Path:
        stem = self.ids[i]
        p = self.images.get(stem)
        return p if p is not None else self.image_dir / f"{stem}.jpg"

    def label_path(self, i: int) -> Path:
        return self.label_dir / f"{self.ids[i]}.png"

    def files(self, index: int) -> List[Path]:
        return [self.image_path(index)] + ([self.label_path(index)] if self.with_labels else [])

    def load(self, index: int) -> Sample:
        """Sample with inputs {'data': (3, H, W) float32} and labels {'label': (H, W) uint8}."""
        ip = self.image_path(index)
        if self.ids[index] not in self.images:
            raise DataMissingError(f"no image for id {self.ids[index]!r} in {self.image_dir} (any suffix PIL "
                                   f"reads)" + (f", listed in {self.split_file}" if self.split_file else ""))
        rgb = read_rgb(ip)
        labels = {}
        if self.with_labels:
            lp = self.label_path(index)
            labels["label"] = check_label_size(read_label_png(lp), rgb.shape, lp, ip)
        return Sample(self.ids[index], {"data": preprocess(rgb, self.mean)}, labels,
                      rgb if self.keep_image else None)


def open_own(root: str | os.PathLike, split: str, classes: Optional[Sequence[str]] = None, **kwargs) -> SegDataset:
    """The reader of a user's data by its layout: a plain folder or a VOC-layout directory."""
    root = Path(root)
    if is_folder(root):
        return FolderSegmentation(root, split, classes=classes, **kwargs)
    if is_voc_layout(root):
        lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split.endswith(".txt") and not lst.is_file():
            raise DataMissingError(f"split list not found: {lst}\n{FOLDER_LAYOUT}")
        return VOCSegmentation(root, split, classes=classes, **kwargs)
    raise DataMissingError(f"{root} is neither a folder of images/ and labels/ nor a VOC-layout directory\n"
                           + FOLDER_LAYOUT)


def label_values(label: np.ndarray) -> np.ndarray:
    """Per-value pixel counts of a label (256 bins)."""
    return np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
