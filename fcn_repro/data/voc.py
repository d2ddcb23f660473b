"""PASCAL VOC segmentation (VOCdevkit year directory), as FCN's VOC layer read it.

Layout of ``root`` (a VOC year directory, e.g. ``VOCdevkit/VOC2011``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNG: 0..20 classes, 255 ignore
    ImageSets/Segmentation/<split>.txt  ids, one a line

``split='seg11valid'`` (the 736 images of every reference PASCAL number:
VOC2011 seg val minus SBD train) uses ``ImageSets/Segmentation/seg11valid.txt``
when present, else the list packaged with fcn_repro. ``split`` may also be a
path to any .txt list.

Input (FACTS.md): RGB -> float32 -> BGR -> minus ``registry.MEAN_VOC`` (float64)
-> (3, H, W); label: (H, W) uint8 palette indices.
"""
from __future__ import annotations

import os
from pathlib import Path
from fcn_repro.data.base import DataMissingError, Sample, SegDataset, resource_path
from fcn_repro.registry import MEAN_VOC
from fcn_repro.data.transforms import check_label_size, preprocess, read_label_png, read_rgb

__all__ = ["VOCSegmentation", "VOC_LAYOUT", "VOC_URL"]

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/"

VOC_LAYOUT = """\
expected a VOC year directory (e.g. VOCdevkit/VOC2011) holding:
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png          (palette PNG: class indices, 255 = ignore)
  ImageSets/Segmentation/<split>.txt  (seg11valid: the packaged list is used if absent)
PASCAL VOC 2011/2012 downloads: """ + VOC_URL


class VOCSegmentation(SegDataset):
    """PASCAL VOC segmentation images and labels.

    root: VOC year directory. split: list name ('seg11valid', 'val',
    'train', ...) or a .txt path. keep_image: also return the decoded RGB
    image (for overlays). mean: (B, G, R) mean (default: the VOC mean, in
    float64 like the original layer's param_str tuple).
    labels: read SegmentationClass (False for images without ground truth).
    classes: class names (default: the 21 PASCAL classes).
    """

    name = "voc"
    title = "VOC"
    layout = VOC_LAYOUT

    def __init__(self, root: str | os.PathLike, split: str = "seg11valid", keep_image: bool = False,
                 mean=MEAN_VOC, labels: bool = True, image_dir: str = "JPEGImages",
                 label_dir: str = "SegmentationClass", classes=None):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataMissingError(f"VOC directory not found: {self.root}\n{VOC_LAYOUT}")
        self.image_dir = self.root / image_dir
        self.label_dir = self.root / label_dir
        missing = [d for d in ([self.image_dir] + ([self.label_dir] if labels else [])) if not d.is_dir()]
        if missing:
            hint = ""
            years = sorted(p.name for p in self.root.glob("VOC20*") if p.is_dir())
            if years:
                hint = f"\n(it holds {', '.join(years)}: pass one of those year directories)"
            raise DataMissingError(
                f"{self.root} is not a VOC year directory: missing "
                + ", ".join(str(m) for m in missing) + hint + "\n" + VOC_LAYOUT)
        packaged = resource_path("data", "pascal-seg11valid.txt") if split == "seg11valid" else None
        self._open_split(split, self.root / "ImageSets" / "Segmentation" / f"{split}.txt", packaged, keep_image, mean)
        self.with_labels = labels
        self.heads = ({"label": list(classes)} if classes is not None else self.card_heads()) if labels else {}

    def missing_hint(self) -> str:
        """The split lists this directory has, when the one read is not among them (the packaged seg11valid
        list on a directory of other images: a user's own data)."""
        lists = self.root / "ImageSets" / "Segmentation"
        own = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
        if not own or (self.split_file is not None and Path(self.split_file).parent == lists):
            return ""
        pick = "val" if "val" in own else own[0]
        return (f"\n  {lists} lists the split(s) {', '.join(own)}: give --split {pick} to read one; for your own "
                f"classes, train a run (python -m fcn_repro.train --data {self.root} --classes a,b,c --out RUN) "
                "and evaluate it (--net RUN)")

    def image_path(self, i: int) -> Path:
        return self.image_dir / f"{self.ids[i]}.jpg"

    def label_path(self, i: int) -> Path:
        return self.label_dir / f"{self.ids[i]}.png"

    def files(self, index: int):
        return [self.image_path(index)] + ([self.label_path(index)] if self.with_labels else [])

    def load(self, index: int) -> Sample:
        """Sample with inputs {'data': (3, H, W) float32} and labels {'label': (H, W) uint8}."""
        rgb = read_rgb(self.image_path(index))
        labels = {}
        if self.with_labels:
            labels["label"] = check_label_size(read_label_png(self.label_path(index)), rgb.shape,
                                               self.label_path(index), self.image_path(index))
        return Sample(self.ids[index], {"data": preprocess(rgb, self.mean)}, labels,
                      rgb if self.keep_image else None)
