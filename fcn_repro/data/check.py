"""Check a user's dataset before training: every problem named with its file, per-class pixel counts.

``python -m fcn_repro.data check DIR [--classes a,b,c]`` and the train tool
(before its first iteration) run :func:`check_dataset`. It reads every label
PNG and every image of the folder (a plain ``images/`` + ``labels/`` folder or
a VOC-layout directory, :mod:`fcn_repro.data.folder`) and reports:

* unreadable files (corrupt, truncated, a colour or 16-bit PNG as a label, ...),
* image / label size mismatches,
* label values outside the classes (neither a class index nor 255, ignore),
* missing pairs (an image without a label, a label without an image, a split
  list id without files, several images with one stem),

each with its file, and the pixels of each class over the whole folder.
:meth:`CheckReport.raise_if_problems` turns a report with problems into one
:class:`DataCheckError` listing them (the first few, then a count).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from fcn_repro.data.base import DataMissingError, read_id_list
from fcn_repro.data.folder import FOLDER_LAYOUT, image_files, is_folder, is_voc_layout, label_values
from fcn_repro.data.transforms import open_checked, read_label_png
from fcn_repro.errors import FcnReproError
from fcn_repro.registry import IGNORE_LABEL

__all__ = ["CheckReport", "DataCheckError", "check_dataset"]

#: problems listed in full in an error message before "... and N more"
SHOWN = 20


class DataCheckError(FcnReproError):
    """A dataset with problems; the message lists each with its file."""


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: ``problems`` (file, what), ``pixels[c]`` per class value
    (index 255: ignore), the pairs checked, and the class names it checked against."""

    root: Path
    classes: Optional[List[str]]
    pairs: int = 0
    problems: List[tuple] = field(default_factory=list)
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: Any, what: str) -> None:
        self.problems.append((os.fspath(path), what))

    def lines(self) -> List[str]:
        """The report in words: problems, then the per-class pixel counts."""
        out = [f"{p}: {w}" for p, w in self.problems]
        total = int(self.pixels.sum())
        n = len(self.classes) if self.classes else int(np.max(np.nonzero(self.pixels[:IGNORE_LABEL])[0],
                                                                initial=-1)) + 1
        out.append(f"{self.root}: {self.pairs} image/label pairs, {total} labelled pixels")
        for c in range(n):
            name = self.classes[c] if self.classes and c < len(self.classes) else f"class {c}"
            share = 100.0 * self.pixels[c] / total if total else 0.0
            out.append(f"  {c:3d} {name:<20s} {int(self.pixels[c]):>12d} pixels ({share:.2f}%)")
        out.append(f"  255 {'ignore':<20s} {int(self.pixels[IGNORE_LABEL]):>12d} pixels")
        return out

    def to_json(self) -> Dict[str, Any]:
        n = len(self.classes) if self.classes else None
        return {"root": os.fspath(self.root), "ok": self.ok, "pairs": self.pairs, "classes": self.classes,
                "problems": [{"file": p, "problem": w} for p, w in self.problems],
                "pixels": {("ignore" if v == IGNORE_LABEL else (self.classes[v] if n and v < n else str(v))):
                           int(self.pixels[v]) for v in np.nonzero(self.pixels)[0]}}

    def raise_if_problems(self) -> "CheckReport":
        if self.problems:
            shown = [f"  {p}: {w}" for p, w in self.problems[:SHOWN]]
            more = len(self.problems) - SHOWN
            raise DataCheckError(f"{len(self.problems)} problem(s) in the dataset:\n" + "\n".join(shown)
                                 + (f"\n  ... and {more} more (python -m fcn_repro.data check "
                                    f"{self.root} lists them all)" if more > 0 else ""), os.fspath(self.root))
        return self


def _ids(f: Path, rep: CheckReport) -> List[str]:
    """The ids of a split list; a list that can not be used (an id with a path, not UTF-8) is a problem."""
    try:
        return read_id_list(f)
    except FcnReproError as e:
        if not any(p == os.fspath(f) and w == e.reason for p, w in rep.problems):
            rep.add(f, e.reason + (f" (line {e.line})" if getattr(e, "line", None) else ""))
        return []


def _pairs(root: Path, rep: CheckReport) -> List[tuple]:
    """(stem, image path, label path) of the folder, reporting unpaired files and bad list ids."""
    if is_folder(root):
        images, dups = image_files(root / "images")
        for stem, fs in dups:
            rep.add(fs[0], f"several images with the stem {stem!r}: {', '.join(f.name for f in fs)}")
        labels = {p.stem: p for p in sorted((root / "labels").iterdir()) if not p.name.startswith(".")}
        for stem in sorted(set(images) - set(labels)):
            rep.add(images[stem], f"no label: expected {root / 'labels' / (stem + '.png')}")
        for stem in sorted(set(labels) - set(images)):
            rep.add(labels[stem], f"no image with the stem {stem!r} in {root / 'images'}")
        lists = [root / f"{s}.txt" for s in ("train", "val")]
        pairs = [(s, images[s], labels[s]) for s in sorted(set(images) & set(labels))]
    else:
        lists = sorted((root / "ImageSets" / "Segmentation").glob("*.txt"))
        stems = sorted({s for f in lists for s in _ids(f, rep)})
        pairs = [(s, root / "JPEGImages" / f"{s}.jpg", root / "SegmentationClass" / f"{s}.png") for s in stems]
        images = {s: p for s, p, _ in pairs}
        labels = images
    for f in lists:
        if not f.is_file():
            continue
        for s in _ids(f, rep):
            if s not in images or s not in labels:
                rep.add(f, f"lists {s!r}, which has no image/label pair")
    if is_voc_layout(root) and not is_folder(root):
        ok = []
        for s, ip, lp in pairs:
            missing = [p for p in (ip, lp) if not p.is_file()]
            for p in missing:
                rep.add(p, "missing (listed in ImageSets/Segmentation)")
            if not missing:
                ok.append((s, ip, lp))
        pairs = ok
    return pairs


def check_dataset(root: str | os.PathLike, classes: Optional[Sequence[str]] = None,
                  progress: Optional[Callable[[Any], Any]] = None) -> CheckReport:
    """Read every pair of the dataset at ``root`` and report its problems and class pixels.

    ``classes``: the class names (values 0..len-1 are classes, 255 ignore,
    anything else a problem); None: any value is accepted and counted.
    ``progress``: wraps the list of pairs (a tqdm on a terminal).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataMissingError(f"data directory not found: {root}\n{FOLDER_LAYOUT}")
    if not (is_folder(root) or is_voc_layout(root)):
        raise DataMissingError(f"{root} is neither a folder of images/ and labels/ nor a VOC-layout "
                               f"directory\n{FOLDER_LAYOUT}")
    rep = CheckReport(root, list(classes) if classes is not None else None)
    pairs = _pairs(root, rep)
    n = len(classes) if classes is not None else None
    for stem, ip, lp in (progress(pairs) if progress else pairs):
        try:
            lab = read_label_png(lp)
        except (FcnReproError, OSError) as e:
            rep.add(lp, getattr(e, "reason", None) or str(e))
            continue
        try:
            with open_checked(ip, "image") as im:
                size = im.size
                im.load()
        except (FcnReproError, OSError, SyntaxError, ValueError) as e:
            rep.add(ip, getattr(e, "reason", None) or f"cannot read image: {e}")
            continue
        rep.pairs += 1
        if (lab.shape[1], lab.shape[0]) != tuple(size):
            rep.add(lp, f"label size {lab.shape[1]}x{lab.shape[0]} differs from its image {ip.name} "
                        f"({size[0]}x{size[1]})")
            continue
        counts = label_values(lab)
        rep.pixels += counts
        if n is not None:
            bad = [v for v in np.nonzero(counts)[0] if v >= n and v != IGNORE_LABEL]
            if bad:
                rep.add(lp, f"label value(s) {', '.join(str(int(v)) for v in bad)} outside the {n} classes "
                            f"(0..{n - 1}, 255 = ignore): {sum(int(counts[v]) for v in bad)} pixels")
    if rep.pairs == 0 and not rep.problems:
        rep.add(root, "no image/label pairs")
    return rep
