"""What every dataset reader returns, and the packaged lists it may need."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from fcn_repro import limits, registry
from fcn_repro.errors import FcnReproError
from fcn_repro.outputs import is_plain_name
from fcn_repro.registry import DatasetCard, class_names, resource_path

__all__ = ["Sample", "SegDataset", "DataMissingError", "resource_path", "read_id_list", "read_text_lines",
           "read_mat", "class_names", "resolve_split"]


class DataMissingError(FcnReproError, FileNotFoundError):
    """A dataset directory, split list or file is missing.

    The message says what is missing, where it was looked for and what the
    expected layout is; the CLIs print it and exit with status 2. A project
    error (``except FcnReproError``/``ValueError``) and a missing file
    (``except FileNotFoundError``) both catch it.
    """

    # OSError's own str() and pickling would read its errno/strerror slots
    # (unset here): the message and the pickle are the project error's.
    __str__ = BaseException.__str__

    def __reduce__(self):
        return (_rebuild_missing, (type(self), self.reason, self.filename, self.__dict__.copy()))


def _rebuild_missing(cls, reason, filename, state):
    err = cls(reason, filename)
    err.__dict__.update(state)
    return err


@dataclass
class Sample:
    """One evaluation item, as the original data layer would have fed it.

    id: the image id (file stem) from the split list.
    inputs: net inputs by kind ('data' for colour nets; NYUDv2 gives
        'color', 'depth', 'hha'): (C, H, W) float32, preprocessed.
    labels: ground truth by head ('label'; SIFT Flow 'sem' and 'geo'):
        (H, W) uint8 class indices, 255 = ignore.
    image: (H, W, 3) uint8 RGB as decoded, when the reader was asked to
        keep it (overlays); else None.
    """

    id: str
    inputs: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray] = field(default_factory=dict)
    image: Optional[np.ndarray] = None


class SegDataset:
    """Base of the readers: an ordered list of ids and a ``load(i)``.

    Subclasses set ``ids`` (list of str), ``heads`` (label name -> class
    names, or None when unknown) and implement ``load(index) -> Sample``.
    ``name`` is the dataset's key in the registry, whose card gives the
    heads' class lists and the protocol (``exclude_absent``: leave classes
    without ground truth in the whole set out of the mean IU, SIFT Flow's).
    """

    name = "dataset"
    #: the dataset's name in messages
    title = "dataset"

    @property
    def card(self) -> DatasetCard:
        """This reader's dataset card (fcn_repro.registry): splits, means, heads, protocol."""
        return registry.dataset(self.name)

    @property
    def exclude_absent(self) -> bool:
        return self.name in registry.DATASETS and self.card.exclude_absent

    def _open_split(self, split: str, candidate: Path, packaged: Optional[Path] = None,
                    keep_image: bool = False, mean=None) -> None:
        """The state every reader keeps: the split, its list file (``split`` itself when it
        names a .txt file, else ``candidate``, else the ``packaged`` copy) and ids, options, heads."""
        self.split_file, self.ids = resolve_split(split, [candidate], packaged, what=f"{self.title} split list",
                                                  layout=self.layout)
        self.split = split
        self.keep_image = keep_image
        self.mean = mean
        self.heads = self.card_heads()

    def card_heads(self) -> Dict[str, Optional[List[str]]]:
        """Label head -> class names, from the dataset card."""
        return {lab: class_names(kind) for lab, kind in self.card.labels.items()}

    def __init__(self):
        self.ids: List[str] = []
        self.heads: Dict[str, Optional[List[str]]] = {}
        self.keep_image = False

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    #: the expected directory layout and where to get the data (error messages)
    layout = ""

    def load(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def files(self, index: int) -> List[Path]:
        """The files ``load(index)`` reads."""
        return []

    def check_files(self, limit: Optional[int] = None) -> None:
        """Raise DataMissingError listing missing files of the first ``limit`` items."""
        n = len(self.ids) if limit is None else min(limit, len(self.ids))
        missing = [str(p) for i in range(n) for p in self.files(i) if not Path(p).is_file()]
        if missing:
            more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
            where = getattr(self, "split_file", None)
            raise DataMissingError(
                f"{len(missing)} file(s) of {self.name} split {getattr(self, 'split', '?')!r}"
                + (f" ({where})" if where else "") + " are missing:\n  "
                + "\n  ".join(missing[:5]) + more + self.missing_hint()
                + ("\n" + self.layout if self.layout else ""))

    def missing_hint(self) -> str:
        """A line for :meth:`check_files`' error: what the directory holds instead (readers say)."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images)"


def read_mat(path: str | os.PathLike, key: str, what: str = "label") -> np.ndarray:
    """Variable ``key`` of a MATLAB file (the FCN layouts' label maps), as an array."""
    import scipy.io  # optional: only the .mat-based readers need it

    try:
        limits.require_regular(path, f"{what} file", error=FcnReproError)   # a FIFO's open would wait
        return np.asarray(scipy.io.loadmat(os.fspath(path))[key])
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except KeyError:
        raise FcnReproError(f"no variable {key!r} ({what})", path) from None
    except FcnReproError:
        raise
    except MemoryError:   # a corrupt header declaring a huge variable
        raise FcnReproError(f"cannot read {what}: the reader ran out of memory (a corrupt file declaring a huge "
                            "variable)", path) from None
    except Exception as e:  # noqa: BLE001 - scipy's readers raise many kinds for a corrupt or foreign file
        raise FcnReproError(f"cannot read {what} (MATLAB file): {type(e).__name__}: {e}", path) from None


def read_text_lines(path: str | os.PathLike, what: str = "text") -> List[str]:
    """The lines of a small text file (a list, a label table), read within the text cap
    (:func:`fcn_repro.limits.read_capped`: a pipe or device is not read without end)."""
    data = limits.read_capped(path, what)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise FcnReproError(f"{what} is not UTF-8 text (byte {e.start})", path) from None


def read_id_list(path: str | os.PathLike) -> List[str]:
    """Ids of a split list: one a line, blank lines and surrounding space dropped.

    An id names files inside the dataset's directories (``<dir>/<id>.jpg``):
    one that is not a plain file name (``..``, a ``/`` or ``\\``, a NUL) is
    refused, naming the list and its line, so no list can point a reader (or
    an output such as ``--save-predictions``) outside its directory.
    """
    ids = []
    for n, ln in enumerate(read_text_lines(path, "split list"), 1):
        i = ln.strip()
        if not i:
            continue
        if not is_plain_name(i):
            raise FcnReproError(f"id {i!r} is not a plain file name (an id names <dir>/<id>.<ext> inside the "
                                "dataset's directories)", path, line=n)
        ids.append(i)
    return ids


def resolve_split(split: str, candidates: Sequence[Path], packaged: Optional[Path] = None,
                  what: str = "split list", layout: str = "") -> tuple[Path, List[str]]:
    """Find a split list: a path given directly, else the first existing
    candidate, else the packaged copy. Returns (path, ids).

    Raises DataMissingError naming every place looked at.
    """
    p = Path(split)
    if split.endswith(".txt") and p.is_file():
        return p, read_id_list(p)
    for c in candidates:
        if c.is_file():
            return c, read_id_list(c)
    if packaged is not None and packaged.is_file():
        return packaged, read_id_list(packaged)
    looked = [str(c) for c in candidates] + ([str(packaged)] if packaged is not None else [])
    raise DataMissingError(
        f"{what} {split!r} not found; looked for:\n  " + "\n  ".join(looked)
        + (f"\n{layout}" if layout else ""))
