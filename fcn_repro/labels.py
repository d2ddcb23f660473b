"""Class names and colours of a net's output: one :class:`LabelSet` per score head.

The single home of "what does output channel c mean and how is it drawn":
evaluation tables, reports, overlays, legends, label PNGs, run directories and
ONNX metadata all read a LabelSet. Where one comes from:

* a registry net: :func:`for_net` (the dataset's class list, the VOC colour map,
  whose class 0 is black: the background, which overlays leave untinted; for a
  list whose class 0 is a real class, SIFT Flow's and NYUDv2's, the map shifted
  by one, so no class is black);
* a user's own data: :meth:`LabelSet.own` (names given once; the colours of the
  label PNGs' own palette where they have one, else the VOC colour map, whose
  first colours are distinct);
* a training run directory: :mod:`fcn_repro.rundir` stores and reads them with
  :meth:`LabelSet.to_json` / :meth:`LabelSet.from_json`.

The palette always has 256 entries (a label PNG's palette): entry c colours
class c, entry 255 (the ignore label) keeps the VOC map's (224, 224, 192).

This module imports only numpy and the leaf modules errors and registry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np

from fcn_repro.errors import FcnReproError
from fcn_repro.registry import IGNORE_LABEL, class_names, has_background

__all__ = ["LabelSet", "voc_palette", "for_net", "for_kind", "LabelsError", "MAX_CLASSES"]

#: class indices must fit a palette PNG with 255 kept for "ignore"
MAX_CLASSES = IGNORE_LABEL


class LabelsError(FcnReproError):
    """Class names or a palette that can not be used (the message names the file)."""


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, (n, 3) uint8.

    Class c's colour spreads c's bits over the three channels, most
    significant bit first: bit 3k of c goes to red bit 7-k, bit 3k+1 to green,
    bit 3k+2 to blue. Index 255 (ignore) comes out as (224, 224, 192).
    """
    pal = np.zeros((n, 3), dtype=np.uint8)
    for c in range(n):
        rgb = [0, 0, 0]
        v = c
        for k in range(8):
            for ch in range(3):
                rgb[ch] |= ((v >> ch) & 1) << (7 - k)
            v >>= 3
        pal[c] = rgb
    return pal


_VOC = voc_palette()
_VOC.setflags(write=False)


def _check_names(names: Sequence[str], where: Optional[str]) -> tuple:
    out = tuple(str(n) for n in names)
    if not out:
        raise LabelsError("no class names", where)
    if len(out) > MAX_CLASSES:
        raise LabelsError(f"{len(out)} classes: at most {MAX_CLASSES} fit a label PNG "
                          f"(index {IGNORE_LABEL} means 'ignore')", where)
    for i, n in enumerate(out):
        if not n.strip() or n != n.strip() or any(ch in n for ch in "\n\r\t,"):
            raise LabelsError(f"class {i}: name {n!r} is empty, has surrounding spaces, "
                              "a tab, a comma or a line break", where)
    if len(set(out)) != len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise LabelsError(f"class names repeat: {', '.join(dup)}", where)
    return out


def _full_palette(colours: Optional[np.ndarray], where: Optional[str]) -> np.ndarray:
    pal = _VOC.copy()
    if colours is not None:
        colours = np.asarray(colours)
        if colours.ndim != 2 or colours.shape[1] != 3 or colours.shape[0] > 256:
            raise LabelsError(f"palette: expected (N, 3) colours with N <= 256, got shape {colours.shape}", where)
        if colours.size and (not np.issubdtype(colours.dtype, np.integer)
                             or colours.min() < 0 or colours.max() > 255):
            raise LabelsError("palette: colours must be integers 0..255", where)
        n = min(len(colours), IGNORE_LABEL)
        pal[:n] = colours[:n].astype(np.uint8)
    pal.setflags(write=False)
    return pal


@dataclass(frozen=True, eq=False)
class LabelSet:
    """The classes of one score head: ``names[c]`` and ``palette[c]`` (RGB) for class c."""

    names: tuple
    palette: np.ndarray   # (256, 3) uint8, read-only

    def __post_init__(self):
        object.__setattr__(self, "names", _check_names(self.names, None))
        object.__setattr__(self, "palette", _full_palette(self.palette, None))

    # ------------------------------------------------------------ makers
    @classmethod
    def voc(cls, names: Sequence[str], background: bool = True) -> "LabelSet":
        """``names`` coloured by the VOC colour map. ``background=False`` (class 0 is a real class:
        SIFT Flow's, NYUDv2's) shifts the map by one, so that no class is black, the colour
        overlays leave untinted as background."""
        if background:
            return cls(tuple(names), _VOC)
        n = min(len(names), IGNORE_LABEL)
        return cls(tuple(names), _VOC[1:n + 1])

    @classmethod
    def own(cls, names: Sequence[str], png_palette: Optional[Sequence[int]] = None,
            where: Optional[str | os.PathLike] = None) -> "LabelSet":
        """A user's classes; ``png_palette`` is a PIL palette (flat RGB list) from a label PNG, if it has one.

        The PNG's colours are used for the classes they cover; a palette whose
        colours for the classes are all one colour (an 'L'-like grey ramp of
        zeros) is ignored in favour of the VOC map.
        """
        names = _check_names(names, None if where is None else os.fspath(where))
        colours = None
        if png_palette is not None:
            flat = np.asarray(list(png_palette), dtype=np.int64)
            usable = flat[: (len(flat) // 3) * 3].reshape(-1, 3)
            if len(usable) >= len(names) and len({tuple(c) for c in usable[: len(names)]}) == len(names):
                colours = usable[: len(names)]
        return cls(names, colours if colours is not None else _VOC)

    # ------------------------------------------------------------ use
    def __len__(self) -> int:
        return len(self.names)

    def colours(self) -> np.ndarray:
        """(N, 3) uint8: the colour of each class."""
        return self.palette[: len(self.names)]

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """(H, W) class indices -> (H, W, 3) uint8 RGB."""
        return self.palette[np.asarray(label, dtype=np.uint8)]

    def name(self, c: int) -> str:
        """Class c's name, or 'class c' outside the list (255: 'ignore')."""
        if 0 <= c < len(self.names):
            return self.names[c]
        return "ignore" if c == IGNORE_LABEL else f"class {c}"

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, LabelSet) and self.names == other.names
                and bool(np.array_equal(self.palette, other.palette)))

    def __hash__(self) -> int:
        return hash((self.names, self.palette.tobytes()))

    # ------------------------------------------------------------ storage
    def to_json(self) -> Dict[str, Any]:
        """{"names": [...], "palette": [[r, g, b], ...]} (one colour per class)."""
        return {"names": list(self.names), "palette": self.colours().astype(int).tolist()}

    @classmethod
    def from_json(cls, obj: Any, where: Optional[str | os.PathLike] = None) -> "LabelSet":
        """The inverse of :meth:`to_json`; a malformed object is a :class:`LabelsError` naming ``where``."""
        w = None if where is None else os.fspath(where)
        if not isinstance(obj, dict) or not isinstance(obj.get("names"), list):
            raise LabelsError("expected an object with a 'names' list", w)
        names = _check_names(obj["names"], w)
        pal = obj.get("palette")
        if pal is None:
            return cls(names, _VOC)
        if (not isinstance(pal, list) or len(pal) != len(names)
                or not all(isinstance(c, list) and len(c) == 3 and all(type(v) is int for v in c) for c in pal)):
            raise LabelsError(f"'palette' must list {len(names)} [r, g, b] integer triples, one per class", w)
        return cls(names, _full_palette(np.array(pal, dtype=np.int64).reshape(-1, 3), w))


def for_net(card, head: Optional[str] = None) -> LabelSet:
    """The LabelSet of a registry net's score head (its dataset's classes, the VOC colour map;
    shifted by one where class 0 is not a background, :func:`fcn_repro.registry.has_background`)."""
    return for_kind(card.head(head).classes)


def for_kind(kind: str) -> LabelSet:
    """The LabelSet of a registry class list (``'pascal'``, ``'siftflow-geo'``, ...)."""
    return LabelSet.voc(class_names(kind), background=has_background(kind))
