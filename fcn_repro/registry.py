"""The registry: one card per net and per dataset, the single home of their facts.

A :class:`DatasetCard` says how a dataset is read (reader class, splits, the
original Python data layer's name, per-input BGR means, label heads and their
class lists, the evaluation protocol). A :class:`NetCard` says what a net is
(title, dataset, prototxt, original weights and where they are published,
input blobs and channels, score heads and the labels they are scored
against, the published references). Everything else reads these cards: the
zoo listing, the net definitions of netspec, the dataset readers,
``evaluate``, training validation and ``infer``::

    from fcn_repro import registry
    card = registry.net("fcn8s")
    card.weights.file, card.weights.urls          # original file and its sources
    registry.mean("fcn8s")                         # (B, G, R) of the net's data input
    registry.classes("siftflow-fcn8s", "score_geo")
    registry.inputs("nyud-fcn32s-color-hha")       # (InputSpec(blob, channels, reads), ...)

This module is a leaf: it imports nothing of the package, so anything may
import it. Readers are named by "module:Class" and resolved on demand.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fcn_repro.errors import FcnReproError

__all__ = ["net", "dataset", "names", "class_names", "NetCard", "DatasetCard", "NETS", "DATASETS", "SAMPLE",
           "UnknownNameError"]


class UnknownNameError(FcnReproError, KeyError):
    """A net or dataset name the registry does not know (the message lists the known ones); one of our
    errors (a user error), and a KeyError for callers that look names up."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


#: where the original FCN caffemodels were published
BASE_URL = "http://dl.caffe.berkeleyvision.org/"

#: label value the losses and the metrics ignore
IGNORE_LABEL = 255

# ------------------------------------------------------------------ means
# The dtype is part of the fact: the VOC and SBD layers took their mean from
# param_str (a Python tuple, so float64: NumPy subtracts in float64 and rounds
# once); the SIFT Flow, NYUDv2 and PASCAL-Context layers held float32 means.

#: VOC and SBD: (B, G, R), float64.
MEAN_VOC = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float64)
#: PASCAL-Context: (B, G, R) rounded, float32.
MEAN_CONTEXT = np.array((104.007, 116.669, 122.679), dtype=np.float32)
#: SIFT Flow: (B, G, R) of SIFT Flow, float32.
MEAN_SIFTFLOW = np.array((114.578, 115.294, 108.353), dtype=np.float32)
#: NYUDv2: colour (B, G, R), the HHA channels in file order, log-depth; float32.
MEAN_NYUD_COLOR = np.array((116.190, 97.203, 92.318), dtype=np.float32)
MEAN_NYUD_HHA = np.array((132.431, 94.076, 118.477), dtype=np.float32)
MEAN_NYUD_LOGD = np.array((7.844,), dtype=np.float32)

for _m in (MEAN_VOC, MEAN_CONTEXT, MEAN_SIFTFLOW, MEAN_NYUD_COLOR, MEAN_NYUD_HHA, MEAN_NYUD_LOGD):
    _m.setflags(write=False)

#: channels of the tops of FCN's Python data layers, by top name (the net
#: builder sizes parameters behind a data layer with them).
DATA_TOP_CHANNELS = {"data": 3, "color": 3, "hha": 3, "depth": 1, "label": 1, "sem": 1, "geo": 1}


# ------------------------------------------------------------------ cards

@dataclass(frozen=True)
class Reference:
    """Published scores in percent (None where not published).

    ``asserted``: the regression tests hold our scores to these (on
    ``split``, tolerance 0.005 points); otherwise they are context (the
    paper's models are not the released ones). ``decimals``: the precision
    they were published with. ``extra``: other published figures
    (SIFT Flow's geometric accuracy).
    """

    source: str
    split: str
    mean_iu: float
    pixel_acc: Optional[float] = None
    mean_acc: Optional[float] = None
    fwavacc: Optional[float] = None
    decimals: int = 4
    asserted: bool = False
    head: str = "score"
    extra: Tuple[Tuple[str, float], ...] = ()

    def scores(self) -> Dict[str, Optional[float]]:
        """{'overall_acc', 'mean_acc', 'mean_iu', 'fwavacc'} as fractions (metrics' keys)."""
        f = lambda v: None if v is None else v / 100.0  # noqa: E731
        return {"overall_acc": f(self.pixel_acc), "mean_acc": f(self.mean_acc),
                "mean_iu": f(self.mean_iu), "fwavacc": f(self.fwavacc)}

    def text(self) -> str:
        vals = [self.pixel_acc, self.mean_acc, self.mean_iu, self.fwavacc]
        if all(v is None for v in vals[:2] + vals[3:]):
            s = f"mean IU {self.mean_iu:.{self.decimals}f}"
        else:
            s = " / ".join("-" if v is None else f"{v:.{self.decimals}f}" for v in vals)
            s += " (pixel acc / mean acc / mean IU / f.w. IU)"
        for k, v in self.extra:
            s += f", {k} {v:.{self.decimals}f}"
        return s


@dataclass(frozen=True)
class Weights:
    """A weights file: its name, its sources in order (the original host
    first, then known mirrors) and what is published about it."""

    file: str
    urls: Tuple[str, ...]
    bytes: Optional[int] = None
    sha1: Optional[str] = None
    note: str = ""

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def pinned(self) -> bool:
        """Whether a size or checksum is published for the file."""
        return self.bytes is not None or self.sha1 is not None


@dataclass(frozen=True)
class InputSpec:
    """A net input blob: its channels and the dataset inputs concatenated into it."""

    blob: str
    channels: int
    reads: Tuple[str, ...]


@dataclass(frozen=True)
class Head:
    """A score blob, the label head it is scored against, and its class list."""

    blob: str
    label: str
    classes: str


@dataclass(frozen=True)
class DatasetCard:
    """How a dataset is read and evaluated.

    reader: "module:Class" of its reader in fcn_repro.data.
    split: default evaluation split; train_split / val_split: the originals'.
    layer: the original Python data layer's name (train/val prototxts).
    means: dataset input -> (C,) mean subtracted from it (BGR for colour).
    labels: label heads in data-layer top order -> class list kind.
    exclude_absent: the protocol scores only classes present in the set
    (SIFT Flow). extra_scores: per-head extra metrics the protocol reports.
    """

    key: str
    title: str
    reader: str
    split: str
    means: Dict[str, np.ndarray]
    labels: Dict[str, str]
    layer: str = ""
    train_split: str = "train"
    val_split: str = "val"
    image_shape: Tuple[int, int] = (500, 500)
    val_images: Optional[int] = None
    exclude_absent: bool = False
    context: Tuple[Tuple[str, Reference], ...] = ()
    #: "resource:<dir>": the data ships with the package (the default when no data is given)
    bundled: Optional[str] = None
    #: "resource:<file.npz>": Caffe's own predictions and scores on the bundled data
    caffe_reference: Optional[str] = None

    @property
    def inputs(self) -> Tuple[str, ...]:
        return tuple(self.means)


@dataclass(frozen=True)
class NetCard:
    """One net: what it is, where its weights are, how it is fed and scored."""

    name: str
    title: str
    dataset: str
    train_dataset: str
    weights: Optional[Weights]
    inputs: Tuple[InputSpec, ...]
    heads: Tuple[Head, ...]
    references: Tuple[Reference, ...] = ()
    trained_from: str = ""
    #: (phase, "resource:<path>") for net files shipped as package data; the phases not listed
    #: are prototxt/<name>/<phase>.prototxt or generated from the net definition
    files: Tuple[Tuple[str, str], ...] = ()
    #: the net definition (fcn_repro.caffe.fcn_nets) this net is an instance of (None: its own name)
    definition: Optional[str] = None

    # -- derived views
    @property
    def data(self) -> DatasetCard:
        return DATASETS[self.dataset]

    @property
    def split(self) -> str:
        return self.data.split

    @property
    def caffemodel(self) -> Optional[str]:
        return self.weights.file if self.weights else None

    @property
    def url(self) -> Optional[str]:
        return self.weights.url if self.weights else None

    @property
    def input_map(self) -> Dict[str, Tuple[str, ...]]:
        """Net input blob -> dataset inputs concatenated into it."""
        return {i.blob: i.reads for i in self.inputs}

    @property
    def tops(self) -> Tuple[str, ...]:
        """Dataset inputs this net reads, in order (NYUDv2: 'color', 'hha', 'depth')."""
        out: List[str] = []
        for i in self.inputs:
            out += [t for t in i.reads if t not in out]
        return tuple(out)

    @property
    def classes(self) -> Dict[str, Tuple[str, str]]:
        """Score blob -> (label head, class list kind)."""
        return {h.blob: (h.label, h.classes) for h in self.heads}

    @property
    def pairing(self) -> Dict[str, str]:
        """Score blob -> label head."""
        return {h.blob: h.label for h in self.heads}

    def class_names(self, head: Optional[str] = None) -> List[str]:
        h = self.head(head)
        return class_names(h.classes)

    def head(self, blob: Optional[str] = None) -> Head:
        if blob is None:
            return self.heads[0]
        for h in self.heads:
            if h.blob == blob:
                return h
        raise UnknownNameError(f"{self.name} has no score blob {blob!r} (heads: "
                               f"{', '.join(h.blob for h in self.heads)})")

    def mean(self, blob: Optional[str] = None) -> np.ndarray:
        """The mean of a net input blob (concatenated inputs: the means concatenated)."""
        spec = self.inputs[0] if blob is None else next((i for i in self.inputs if i.blob == blob), None)
        if spec is None:
            raise UnknownNameError(f"{self.name} has no input blob {blob!r}")
        ms = [self.data.means[r] for r in spec.reads]
        return ms[0] if len(ms) == 1 else np.concatenate([m.astype(np.float64) for m in ms])

    def reference(self, head: str = "score", asserted: Optional[bool] = None) -> Optional[Reference]:
        for r in self.references:
            if r.head == head and (asserted is None or r.asserted == asserted):
                return r
        return None

    @property
    def reference_mean_iu(self) -> Optional[float]:
        r = self.reference(asserted=True)
        return r.mean_iu if r else None


# ------------------------------------------------------------------ datasets

_NYUD_PAPER = "the paper (CVPR 2015), its own models: context, not asserted"


def _paper(mean_iu, pixel_acc, mean_acc, fwavacc, split, head="score", extra=()) -> Reference:
    return Reference(_NYUD_PAPER, split, mean_iu, pixel_acc, mean_acc, fwavacc, decimals=1, head=head,
                     extra=extra)


DATASETS: Dict[str, DatasetCard] = {d.key: d for d in [
    DatasetCard("voc", "PASCAL VOC 2011 segmentation", "fcn_repro.data.voc:VOCSegmentation", "seg11valid",
                {"data": MEAN_VOC}, {"label": "pascal"}, layer="VOCSegDataLayer", train_split="train",
                val_split="seg11valid", val_images=736),
    DatasetCard("sbd", "SBD (Semantic Boundaries Dataset), FCN's PASCAL training set",
                "fcn_repro.data.sbd:SBDSegmentation", "val", {"data": MEAN_VOC}, {"label": "pascal"},
                layer="SBDDSegDataLayer", train_split="train", val_split="val"),
    DatasetCard("siftflow", "SIFT Flow (semantic + geometric)", "fcn_repro.data.siftflow:SIFTFlowSegmentation",
                "test", {"data": MEAN_SIFTFLOW}, {"sem": "siftflow", "geo": "siftflow-geo"},
                layer="SIFTFlowSegDataLayer", train_split="trainval", val_split="test", image_shape=(256, 256),
                val_images=200, exclude_absent=True),
    DatasetCard("nyud", "NYUDv2 (40 classes)", "fcn_repro.data.nyud:NYUDSegmentation", "test",
                {"color": MEAN_NYUD_COLOR, "hha": MEAN_NYUD_HHA, "depth": MEAN_NYUD_LOGD}, {"label": "nyud"},
                layer="NYUDSegDataLayer", train_split="trainval", val_split="test", image_shape=(425, 560),
                val_images=654,
                context=(("FCN-16s RGB-HHA", _paper(34.0, 65.4, 46.1, 49.5, "test")),)),
    DatasetCard("context", "PASCAL-Context (59 classes + background)", "fcn_repro.data.context:ContextSegmentation",
                "val", {"data": MEAN_CONTEXT}, {"label": "pascalcontext"}, layer="PASCALContextSegDataLayer",
                train_split="train", val_split="val", val_images=5105),
    DatasetCard("sample", "the bundled sample: synthetic shapes (not PASCAL)", "fcn_repro.data.voc:VOCSegmentation",
                "val", {"data": MEAN_VOC}, {"label": "sample"}, val_split="val", val_images=24,
                bundled="resource:sample/sample", caffe_reference="resource:sample/sample.caffe.npz"),
    DatasetCard("folder", "your own data: images/ + labels/ (index PNGs), your classes",
                "fcn_repro.data.folder:FolderSegmentation", "val", {"data": MEAN_VOC}, {"label": "own"},
                val_split="val"),
]}

#: original Python data layer name -> dataset key
DATA_LAYERS: Dict[str, str] = {d.layer: d.key for d in DATASETS.values() if d.layer}


# ------------------------------------------------------------------ nets

def _orig(file: str, *mirrors: str, size: Optional[int] = None, sha1: Optional[str] = None) -> Weights:
    return Weights(file, (BASE_URL + file,) + mirrors, size, sha1)


_CONVERTED = "seg11valid scores of the converted original weights (an independent port), asserted"


def _voc_ref(pixel_acc, mean_acc, mean_iu, fwavacc) -> Reference:
    return Reference(_CONVERTED, "seg11valid", mean_iu, pixel_acc, mean_acc, fwavacc, decimals=4, asserted=True)


_VOC_IN = (InputSpec("data", 3, ("data",)),)
_VOC_HEADS = (Head("score", "label", "pascal"),)
_SIFT_HEADS = (Head("score_sem", "sem", "siftflow"), Head("score_geo", "geo", "siftflow-geo"))
_NYUD_HEADS = (Head("score", "label", "nyud"),)
_CTX_HEADS = (Head("score", "label", "pascalcontext"),)
_VGG = "VGG-16 (VGG_ILSVRC_16_layers.caffemodel), by surgery"


def _voc(name, file, title, ref, trained_from, mirrors=(), context=(), **kw) -> NetCard:
    return NetCard(name, title, "voc", "sbd", _orig(file, *mirrors, **kw), _VOC_IN, _VOC_HEADS, (ref,) + context,
                   trained_from)


def _sift(stride: int, refs=()) -> NetCard:
    return NetCard(f"siftflow-fcn{stride}s", f"FCN-{stride}s SIFT Flow (semantic + geometric)", "siftflow",
                   "siftflow", _orig(f"siftflow-fcn{stride}s-heavy.caffemodel"), _VOC_IN, _SIFT_HEADS, refs,
                   _VGG if stride == 32 else f"siftflow-fcn{2 * stride}s weights")


def _nyud(name, title, inputs, file, refs) -> NetCard:
    return NetCard(name, title, "nyud", "nyud", _orig(file) if file else None, inputs, _NYUD_HEADS, refs, _VGG)


def _ctx(stride: int) -> NetCard:
    return NetCard(f"pascalcontext-fcn{stride}s", f"FCN-{stride}s PASCAL-Context (59 classes + background)",
                   "context", "context", _orig(f"pascalcontext-fcn{stride}s-heavy.caffemodel"), _VOC_IN,
                   _CTX_HEADS, (), _VGG if stride == 32 else f"pascalcontext-fcn{2 * stride}s weights")


NETS: Dict[str, NetCard] = {n.name: n for n in [
    _voc("fcn32s", "fcn32s-heavy-pascal.caffemodel", "FCN-32s PASCAL",
         _voc_ref(90.4810, 76.4824, 63.6261, 83.4580), _VGG, size=544_614_787),  # Caffe's read log
    _voc("fcn16s", "fcn16s-heavy-pascal.caffemodel", "FCN-16s PASCAL",
         _voc_ref(90.9971, 78.0710, 65.0050, 84.2614), "FCN-32s weights (a trained fcn32s .caffemodel)"),
    _voc("fcn8s", "fcn8s-heavy-pascal.caffemodel", "FCN-8s PASCAL",
         _voc_ref(91.2212, 77.6146, 65.5126, 84.5445), "FCN-16s weights (a trained fcn16s .caffemodel)",
         sha1="c449ea74dd7d83751d1357d6a8c323fcf4038962",  # published by OpenCV's test-data downloader
         mirrors=("https://obs-model-ascend.obs.cn-east-2.myhuaweicloud.com/fcn-8s/fcn8s-heavy-pascal.caffemodel",),
         context=(Reference("the release README (VOC2012 test server)", "VOC2012 test", 67.2, decimals=1),)),
    _voc("fcn8s-atonce", "fcn8s-atonce-pascal.caffemodel", "FCN-8s at-once PASCAL",
         _voc_ref(91.1288, 78.4979, 65.3998, 84.4326), _VGG + ", all heads at once"),
    _voc("fcn-alexnet", "fcn-alexnet-pascal.caffemodel", "FCN-AlexNet PASCAL",
         Reference("the paper (mean IU only)", "seg11valid", 48.0, decimals=1, asserted=True),
         "AlexNet (bvlc_alexnet.caffemodel), by surgery; iter_size accumulation, normalized loss"),
    _sift(32),
    _sift(16, (_paper(39.5, 85.2, 51.7, 76.1, "test", "score_sem", (("geometric acc", 94.3),)),)),
    _sift(8),
    _nyud("nyud-fcn32s-color", "FCN-32s NYUDv2 colour", (InputSpec("data", 3, ("color",)),),
          "nyud-fcn32s-color-heavy.caffemodel", (_paper(29.2, 60.0, 42.2, 43.9, "test"),)),
    _nyud("nyud-fcn32s-hha", "FCN-32s NYUDv2 HHA", (InputSpec("data", 3, ("hha",)),),
          "nyud-fcn32s-hha-heavy.caffemodel", (_paper(24.2, 57.1, 35.2, 40.4, "test"),)),
    # No weights were published for early fusion.
    _nyud("nyud-fcn32s-color-d",
          "FCN-32s NYUDv2 colour + log-depth (early fusion: concatenated inside the net)",
          (InputSpec("color", 3, ("color",)), InputSpec("depth", 1, ("depth",))), None,
          (_paper(30.5, 61.5, 42.4, 45.5, "test"),)),
    _nyud("nyud-fcn32s-color-hha", "FCN-32s NYUDv2 colour + HHA (late fusion)",
          (InputSpec("color", 3, ("color",)), InputSpec("hha", 3, ("hha",))),
          "nyud-fcn32s-color-hha-heavy.caffemodel", (_paper(32.8, 64.3, 44.9, 48.0, "test"),)),
    _ctx(32), _ctx(16), _ctx(8),
]}

#: The bundled sample (fcn_repro/resources/sample): a reduced FCN-8s trained in
#: real Caffe on synthetic shapes. Not a PASCAL model.
SAMPLE = NetCard("sample", "bundled sample: reduced FCN-8s on synthetic shapes (not PASCAL)", "sample", "sample",
                 Weights("fcn8s-shapes.caffemodel", ("resource:sample/fcn8s-shapes.caffemodel",),
                         note="ships with the package"),
                 _VOC_IN, (Head("score", "label", "sample"),), (), "trained in real Caffe (see its README)",
                 files=(("deploy", "resource:sample/fcn8s-shapes.prototxt"),
                        ("train", "resource:sample/fcn8s-shapes.train.prototxt"),
                        ("val", "resource:sample/fcn8s-shapes.prototxt")),
                 definition="fcn8s")

#: every net card by name: the nets of prototxt/ and the bundled sample
_CARDS: Dict[str, NetCard] = {**NETS, SAMPLE.name: SAMPLE}

#: weights that training starts from
INIT_WEIGHTS: Dict[str, Weights] = {
    "vgg16": Weights("VGG_ILSVRC_16_layers.caffemodel",
                     ("http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel",),
                     553_432_081, note="ILSVRC VGG-16 (V1 format), the start of FCN training"),
}


# ------------------------------------------------------------------ lookups

def names() -> List[str]:
    """The nets of prototxt/ (the sample aside)."""
    return list(NETS)


def net(name: str) -> NetCard:
    """The card of net ``name`` (the nets of prototxt/ and the bundled ``sample``)."""
    try:
        return _CARDS[name]
    except KeyError:
        raise UnknownNameError(f"unknown net {name!r}; known nets: {', '.join(_CARDS)}") from None


def net_with_inputs(blobs: Sequence[str]) -> Optional[NetCard]:
    """The first registry net whose input blobs are ``blobs`` (in order): how a prototxt of one's own
    that reads e.g. ``color`` and ``hha`` gets NYUDv2's reads and means. None when none has them."""
    for name in names():
        card = net(name)
        if [i.blob for i in card.inputs] == list(blobs):
            return card
    return None


def dataset(key: str) -> DatasetCard:
    try:
        return DATASETS[key]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {key!r}; known: {', '.join(DATASETS)}") from None


def dataset_for_layer(layer: str) -> DatasetCard:
    """The dataset an original Python data layer (``python_param.layer``) reads."""
    try:
        return DATASETS[DATA_LAYERS[layer]]
    except KeyError:
        raise UnknownNameError(f"unknown data layer {layer!r}; known: {', '.join(DATA_LAYERS)}") from None


def reader_class(key: str):
    """The reader class of dataset ``key`` (imported on demand)."""
    mod, _, cls = dataset(key).reader.partition(":")
    return getattr(importlib.import_module(mod), cls)


def mean(net_name: str, blob: Optional[str] = None) -> np.ndarray:
    """The mean subtracted from net input ``blob`` (default: the first) of ``net_name``."""
    return net(net_name).mean(blob)


def classes(net_name: str, head: Optional[str] = None) -> List[str]:
    """Class names of a score head of ``net_name`` (default: its first)."""
    return net(net_name).class_names(head)


def inputs(net_name: str) -> Tuple[InputSpec, ...]:
    return net(net_name).inputs


# ------------------------------------------------------------------ packaged files

RESOURCE = "resource:"


def resource_path(*parts: str) -> Path:
    """Path of a file shipped in fcn_repro/resources (package data).

    A card's locator ``"resource:sample/x.prototxt"`` is one argument: its prefix is dropped.
    """
    parts = tuple(p[len(RESOURCE):] if p.startswith(RESOURCE) else p for p in parts)
    try:
        from importlib.resources import files

        base = Path(str(files("fcn_repro") / "resources"))
    except Exception:  # pragma: no cover - very old importlib
        base = Path(__file__).resolve().parent / "resources"
    return base.joinpath(*parts)


#: class lists written here (the others are read from the packaged files below)
_CLASS_LISTS: Dict[str, Tuple[str, ...]] = {"sample": ("background", "disc", "square", "triangle", "ring")}

#: class lists whose class 0 is a real class (SIFT Flow's awning and sky, NYUDv2's wall), not
#: a background: their label 0 in the files means 'unlabelled' and is read as 255
NO_BACKGROUND = frozenset({"siftflow", "siftflow-geo", "nyud"})


def has_background(kind: Optional[str]) -> bool:
    """Whether class 0 of the class list ``kind`` is a background (PASCAL's, PASCAL-Context's, the
    sample's; a list not known here is taken to have one, VOC's convention)."""
    return kind not in NO_BACKGROUND


def class_names(kind: str) -> List[str]:
    """Class names, in model output order, from the packaged lists.

    kind: 'pascal' (21), 'pascalcontext' (60: background + the 59),
    'siftflow' (33 semantic), 'siftflow-geo' (3), 'nyud' (40), 'sample' (5).
    """
    data = resource_path("data")
    if kind == "pascal":
        return _names_until_blank(data / "pascal-classes.txt")[:21]
    if kind == "nyud":
        return _names_until_blank(data / "nyud-classes.txt")[:40]
    if kind == "pascalcontext":
        return [ln.partition(":")[2].strip() for ln in _names_until_blank(data / "pascalcontext-classes-59.txt")]
    if kind in ("siftflow", "siftflow-geo"):
        sem: List[str] = []
        geo: List[str] = []
        cur: Optional[List[str]] = None
        for ln in (data / "siftflow-classes.txt").read_text(encoding="utf-8").splitlines():
            s = ln.strip()
            if s.startswith("Semantic"):
                cur = sem
            elif s.startswith("Geometric"):
                cur = geo
            elif s.startswith("N.B."):
                cur = None
            elif cur is not None and s[:2].isdigit():
                cur.append(s.split(None, 1)[1])
        return sem if kind == "siftflow" else geo
    if kind in _CLASS_LISTS:
        return list(_CLASS_LISTS[kind])
    raise UnknownNameError(f"no class list named {kind!r}")


def _names_until_blank(path: Path) -> List[str]:
    out: List[str] = []
    for ln in path.read_text(encoding="utf-8").splitlines():
        if not ln.strip():
            if out:
                break
            continue
        out.append(ln.strip())
    return out
