"""Image in, labels out: pretrained nets in one call, and the predictor behind ``infer``.

::

    import fcn_repro

    model = fcn_repro.load("fcn8s", download=True)   # net + original weights (verified)
    pred = model.predict("street.jpg")                # a Prediction
    pred.label                                        # (H, W) uint8 class indices
    model.meta["categories"][pred.label[100, 200]]    # 'person'

    preds = model.predict("photos/", scores=True)     # a directory, a glob or a list: a list
    preds[0].scores["score"]                          # (21, H, W) float32 class scores

    x = model.transforms()(rgb)                       # {'data': (3, H, W) float32}: BGR minus the mean
    model.net(**{k: torch.from_numpy(v)[None] for k, v in x.items()})

:func:`load` returns a :class:`Pretrained`: the net (``.net``, a
:class:`fcn_repro.caffe.Net` in eval mode), its preprocessing
(``.transforms()``: the BGR mean of its dataset; colour, HHA and log-depth
inputs for NYUDv2) and its metadata (``.meta``: ``categories``, the class
names of its first score head; ``heads``, every head's names; ``inputs``,
``mean``, ``dataset``, ``weights``), in the manner of torchvision's weights
API. Weights are found where :mod:`fcn_repro.hub` keeps them and downloaded
when asked (``download=True``); their size/checksum is verified, and recorded
the first time only after they loaded as this net's.

:class:`Predictor` runs any net on images of any size: each image at its
own size (FCN needs no resizing), consecutive images of equal size batched
together (``batch_size``), and returns label maps, and if asked the scores
or the softmax probabilities. Paths are read with PIL, turned upright by
their EXIF orientation (16-bit files scaled to 8 bits); arrays are taken as
(H, W, 3) RGB, uint8 or 0-255 floats, and greyscale, RGBA, 16-bit and
channels-first arrays are converted, 0-1 floats refused
(:func:`fcn_repro.data.transforms.as_rgb_array` says how). A big image runs
in exact tiles when one forward would exceed the memory budget (``tile``,
:mod:`fcn_repro.tiles`).
"""
from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from fcn_repro import registry
from fcn_repro.data.transforms import as_rgb_array, log_depth, preprocess, read_image
from fcn_repro.devices import check_device
from fcn_repro.errors import FcnReproError
from fcn_repro.evaluation import build
from fcn_repro.resolve import Model, resolve
from fcn_repro.streaming import plan_image, run_image
from fcn_repro.tiles import Geometry, TilePlan

__all__ = ["load", "Pretrained", "Predictor", "Prediction", "Transforms", "expand_images", "resolve_device",
           "IMAGE_SUFFIXES"]

#: file name endings taken as images when a directory is given
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]


def resolve_device(device: Optional[str]) -> str:
    """'cpu', 'cuda', 'cuda:N' (None: cuda when available); a project error when CUDA is asked for but absent."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


# ------------------------------------------------------------------ preprocessing

class Transforms:
    """A net's preprocessing: image(s) -> {net input blob: (C, H, W) float32}.

    Exactly what the original FCN data layers fed Caffe: colour images
    RGB -> BGR minus the dataset's (B, G, R) mean; HHA images minus the HHA
    mean in file channel order; depth as log(depth) minus the log-depth mean.
    A net with one colour input takes the image itself; NYUDv2 nets take
    their inputs by name (``color=``, ``hha=``, ``depth=``).
    """

    def __init__(self, inputs: Sequence[Tuple[str, Sequence[Tuple[str, np.ndarray]]]]):
        self.inputs = [(blob, [(r, np.asarray(m)) for r, m in reads]) for blob, reads in inputs]

    @classmethod
    def for_net(cls, card: Optional[registry.NetCard], blob: str = "data") -> "Transforms":
        """The preprocessing of a net, from its registry card (None: a VOC-style colour net, its one
        input ``blob``)."""
        if card is None:
            return cls([(blob, [("data", registry.dataset("voc").means["data"])])])
        return cls([(i.blob, [(r, card.data.means[r]) for r in i.reads]) for i in card.inputs])

    @classmethod
    def for_model(cls, model: Model, inputs: Optional[Sequence[str]] = None) -> "Transforms":
        """The preprocessing of a resolved net: its card's, else its means per input blob (a run
        directory's colour inputs, BGR), else (a prototxt: ``inputs``, its input blobs) the first
        registry net's with the same input blobs (NYUDv2's color/HHA/depth), else a VOC-style colour net's
        (on its one input blob, whatever its name)."""
        if model.card is None and not model.means and inputs and list(inputs) != ["data"]:
            card = registry.net_with_inputs(inputs)
            return cls.for_net(card, inputs[0] if card is None and len(inputs) == 1 else "data")
        if model.card is not None or not model.means:
            return cls.for_net(model.card)
        return cls([(blob, [("data", np.asarray(m))]) for blob, m in model.means.items()])

    @property
    def reads(self) -> List[str]:
        out: List[str] = []
        for _, reads in self.inputs:
            out += [r for r, _ in reads if r not in out]
        return out

    @property
    def single_image(self) -> bool:
        """Whether the net takes one colour image (so a bare image can be passed)."""
        return self.reads in (["data"], ["color"])

    @property
    def mean(self) -> np.ndarray:
        """The mean of the first input (BGR for colour)."""
        return self.inputs[0][1][0][1]

    def describe(self) -> Dict[str, List[Dict[str, Any]]]:
        """{input blob: [one dict per image it reads]} in plain JSON values: what
        :meth:`__call__` does, for a consumer without this package (the ONNX file's
        ``fcn_repro.inputs`` metadata). Each part: ``read`` (the image kind), ``channels``
        (the channel order the net sees), ``mean`` (subtracted, in that order), ``scale``
        (the factor after the subtraction: 1, no division) and ``value`` (the formula)."""
        out: Dict[str, List[Dict[str, Any]]] = {}
        for blob, reads in self.inputs:
            parts = []
            for r, m in reads:
                if r == "depth":
                    part = {"channels": "log-depth", "value": "log(depth) - mean"}
                elif r == "hha":
                    part = {"channels": "HHA (the file's order)", "value": "(pixel - mean) * scale, pixels 0-255"}
                else:
                    part = {"channels": "BGR", "value": "(pixel - mean) * scale, pixels 0-255, RGB images reversed"}
                parts.append({"read": r, **part, "mean": np.atleast_1d(np.asarray(m, dtype=np.float64)).tolist(),
                              "scale": 1.0})
            out[blob] = parts
        return out

    def _one(self, read: str, value: Any, mean: np.ndarray) -> np.ndarray:
        if read == "depth":
            if _is_path(value):
                return log_depth(read_image(value, "depth"), mean, value)
            return log_depth(np.asarray(value), mean)
        if _is_path(value) or isinstance(value, Image.Image):
            img = read_image(value, read)
        else:
            img = as_rgb_array(value, read) if read in ("color", "data") else np.asarray(value)
        return preprocess(img, mean, bgr=(read != "hha"))

    def __call__(self, image: Optional[ImageLike] = None, **named: Any) -> Dict[str, np.ndarray]:
        if image is not None:
            if isinstance(image, dict):
                named = {**image, **named}
            elif self.single_image:
                named[self.reads[0]] = image
            else:
                raise FcnReproError(f"this net takes {', '.join(self.reads)}: pass them by name "
                                    f"(e.g. transforms({'=..., '.join(self.reads)}=...))")
        missing = [r for r in self.reads if r not in named]
        if missing:
            raise FcnReproError(f"this net needs the input(s) {', '.join(missing)}")
        out = {}
        for blob, reads in self.inputs:
            parts = [self._one(r, named[r], m) for r, m in reads]
            if len({p.shape[1:] for p in parts}) > 1:
                raise FcnReproError(f"input {blob}: {', '.join(r for r, _ in reads)} differ in size "
                                    f"({', '.join(str(p.shape[1:]) for p in parts)})")
            out[blob] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        sizes = {a.shape[1:] for a in out.values()}
        if len(sizes) > 1:
            raise FcnReproError(f"the inputs differ in size: {sorted(sizes)}")
        return out

    def __repr__(self) -> str:
        parts = [f"{blob}<-{'+'.join(r for r, _ in reads)}" for blob, reads in self.inputs]
        return f"Transforms({', '.join(parts)})"


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


# ------------------------------------------------------------------ images

def expand_images(items: Union[ImageLike, Iterable[ImageLike]]) -> List[Any]:
    """Paths, directories (their image files, sorted), globs, arrays -> a flat list.

    A path that does not exist and is not a glob is kept (reading it fails
    later, per image).
    """
    if isinstance(items, (str, os.PathLike, np.ndarray, Image.Image, dict)):
        items = [items]
    out: List[Any] = []
    for it in items:
        if not _is_path(it):
            out.append(it)
            continue
        p = Path(it)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif not p.exists() and glob.has_magic(str(it)):
            out += sorted(Path(q) for q in glob.glob(str(it), recursive=True) if Path(q).is_file())
        else:
            out.append(p)
    return out


@dataclass
class Prediction:
    """One image's result. ``labels``: {score blob: (H, W) uint8 class indices};
    ``scores`` / ``probabilities``: {score blob: (C, H, W) float32} when asked
    (with a ``score_sink``, whatever it returned, filled). ``tiling``: the
    :class:`fcn_repro.tiles.TilePlan` when the image ran in tiles."""

    source: Any
    labels: Dict[str, np.ndarray]
    scores: Optional[Dict[str, Any]] = None
    probabilities: Optional[Dict[str, np.ndarray]] = None
    image: Optional[np.ndarray] = field(default=None, repr=False)
    tiling: Optional[TilePlan] = field(default=None, repr=False)

    @property
    def label(self) -> np.ndarray:
        """The labels of the first score blob."""
        return next(iter(self.labels.values()))

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.label.shape)


class Predictor:
    """Label maps from a net, for an image, a list of them or a directory.

    net: a :class:`fcn_repro.caffe.Net` (or its fast wrapper) in eval mode.
    transforms: its :class:`Transforms`. heads: score blobs to return
    (default: every output). batch_size: at most this many consecutive
    images of equal size go through the net together. keep_images: keep
    the decoded colour image on each Prediction (``infer`` draws overlays).
    tile: run each image in exact tiles of at most tile x tile input pixels
    (:mod:`fcn_repro.tiles`: the scores equal the whole-image forward's);
    0: always whole; None (default): whole unless one forward would need
    more than ``tile_budget`` bytes (default ``fcn_repro.limits``'
    ``forward_bytes``). progress: a bar per tile (default: on a terminal).
    """

    def __init__(self, net, transforms: Transforms, heads: Optional[Sequence[str]] = None,
                 device: Optional[str] = None, batch_size: int = 2, keep_images: bool = False,
                 tile: Optional[int] = None, tile_budget: Optional[int] = None, progress: Optional[bool] = None):
        if batch_size < 1:
            raise FcnReproError(f"batch_size must be at least 1, got {batch_size}")
        if tile is not None and (isinstance(tile, bool) or int(tile) < 0):
            raise FcnReproError(f"tile must be 0 (whole image) or a size in pixels, got {tile!r}")
        self.tile, self.tile_budget, self.progress = tile, tile_budget, progress
        self._geometry: Any = None
        self._plans: Dict[Tuple[int, int], Optional[TilePlan]] = {}
        self.net, self.transforms = net, transforms
        self.heads = list(heads) if heads else None
        self.device = torch.device(resolve_device(device) if device is not None else _net_device(net))
        self.batch_size = batch_size
        self.keep_images = keep_images

    def __call__(self, images, **kw):
        return self.predict(images, **kw)

    def predict(self, images, *, scores: bool = False, probabilities: bool = False
                ) -> Union[Prediction, List[Prediction]]:
        """One image -> a Prediction; a list, directory or glob -> a list (in order).

        An image that cannot be read raises (see :meth:`iter` to skip them).
        """
        single = isinstance(images, (np.ndarray, Image.Image, dict)) or (
            _is_path(images) and not Path(images).is_dir() and not
            (not Path(images).exists() and glob.has_magic(str(images))))
        out = list(self.iter(images, scores=scores, probabilities=probabilities))
        return out[0] if single else out

    def iter(self, images, *, scores: bool = False, probabilities: bool = False,
             on_error: Optional[Callable[[Any, Exception], None]] = None,
             score_sink: Optional[Callable[[Any, str, Tuple[int, int, int]], Any]] = None) -> Iterator[Prediction]:
        """Predictions one by one, in input order, batching consecutive equal sizes.

        on_error(source, error): called for an image that cannot be read (a
        missing, corrupt or over-large file), which is then skipped; without
        it the error is raised. score_sink(source, head, (C, H, W)): where a
        tiled image's scores go (e.g. a :class:`fcn_repro.scorefile.ScoreFile`),
        filled tile by tile instead of held in memory; images run whole
        return their scores as arrays.
        """
        batch: List[Tuple[Any, Dict[str, np.ndarray], Optional[np.ndarray]]] = []
        for src in expand_images(images):
            try:
                img = self._decode(src)
                x = self.transforms(img)
            except (ValueError, OSError) as e:
                if on_error is None:
                    raise
                on_error(src, e)
                continue
            shape = next(iter(x.values())).shape[1:]
            plan = self.tile_plan(shape)
            if batch and (plan is not None or len(batch) >= self.batch_size
                          or next(iter(batch[0][1].values())).shape[1:] != shape):
                yield from self._run(batch, scores, probabilities)
                batch = []
            colour = img if self.keep_images and isinstance(img, np.ndarray) else (
                img.get("color") if self.keep_images and isinstance(img, dict) else None)
            if plan is not None:
                yield self._run_tiles(src, x, colour, plan, scores, probabilities, score_sink)
                continue
            batch.append((src, x, colour))
        if batch:
            yield from self._run(batch, scores, probabilities)

    def _decode(self, src):
        if _is_path(src) or isinstance(src, Image.Image):
            if not self.transforms.single_image:
                raise FcnReproError(f"{src}: this net takes {', '.join(self.transforms.reads)}; pass a dict "
                                    "of them per image")
            return read_image(src, "color")
        if isinstance(src, dict):
            return {k: (read_image(v, k) if _is_path(v) or isinstance(v, Image.Image) else
                        as_rgb_array(v, k) if k in ("color", "data") else v) for k, v in src.items()}
        return as_rgb_array(src)

    # -------------------------------------------------------------- tiles
    def tile_plan(self, size: Tuple[int, int]) -> Optional[TilePlan]:
        """The tiles an image of ``size`` (H, W) runs in, or None when it runs whole."""
        size = (int(size[0]), int(size[1]))
        if self.tile == 0:
            return None
        if size not in self._plans:
            if self._geometry is None:
                try:
                    self._geometry = Geometry(self.net)
                except FcnReproError as e:
                    if self.tile is not None:
                        raise
                    self._geometry = e    # automatic: this net runs whole
            if isinstance(self._geometry, FcnReproError):
                return None
            plan = plan_image(self.net, size, self.tile, self.tile_budget, geometry=self._geometry)
            for note in plan.notes:
                warnings.warn(note, stacklevel=3)
            self._plans = {**dict(list(self._plans.items())[-7:]), size: plan if plan.tiled else None}
        return self._plans[size]

    def _run_tiles(self, src, x, img, plan: TilePlan, scores: bool, probabilities: bool, score_sink):
        outs = self._geometry.outputs
        heads = [h for h in (self.heads or outs) if h in outs] or list(outs)
        sc: Dict[str, Any] = {}
        pr: Dict[str, np.ndarray] = {}

        def to_scores(h, shape):
            sc[h] = score_sink(src, h, shape) if score_sink is not None else np.empty(shape, np.float32)
            return sc[h]

        def to_probs(h, shape):
            pr[h] = np.empty(shape, np.float32)
            return pr[h]

        name = Path(src).name if _is_path(src) else "image"
        labels = run_image(self.net, x, plan, heads, self.device, to_scores if scores else None,
                           to_probs if probabilities else None, progress=self.progress, desc=name,
                           geometry=self._geometry)
        return Prediction(src, labels, sc if scores else None, pr if probabilities else None, img, plan)

    def _run(self, batch, scores: bool, probabilities: bool) -> Iterator[Prediction]:
        blobs = list(batch[0][1])
        feed = {b: torch.from_numpy(np.stack([x[b] for _, x, _ in batch])).to(self.device) for b in blobs}
        with torch.inference_mode():
            out = self.net(**feed)
        heads = [h for h in (self.heads or out) if h in out] or list(out)
        labels = {h: out[h].argmax(1).to(torch.uint8).cpu().numpy() for h in heads}
        sc = {h: out[h].float().cpu().numpy() for h in heads} if scores else None
        pr = {h: torch.softmax(out[h].float(), 1).cpu().numpy() for h in heads} if probabilities else None
        for i, (src, _, img) in enumerate(batch):
            yield Prediction(src, {h: labels[h][i] for h in heads},
                             {h: sc[h][i] for h in heads} if sc is not None else None,
                             {h: pr[h][i] for h in heads} if pr is not None else None, img)


def _net_device(net) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


# ------------------------------------------------------------------ pretrained nets

@dataclass
class Pretrained:
    """A net with its weights, preprocessing and metadata (see :func:`load`)."""

    name: str
    net: Any
    weights: Path
    meta: Dict[str, Any]
    _transforms: Transforms = field(repr=False)

    @property
    def classes(self) -> Optional[List[str]]:
        """The class names of the first score head (a run's: the user's own), in label-value order."""
        return self.meta.get("categories")

    def __repr__(self) -> str:
        heads = self.meta.get("heads") or {}
        named = (f"classes={self.classes}" if len(heads) <= 1
                 else "heads={" + ", ".join(f"{b!r}: {n}" for b, n in heads.items()) + "}")
        return f"Pretrained({self.name!r}, {named}, weights={os.fspath(self.weights)!r})"

    def transforms(self) -> Transforms:
        """The preprocessing its weights were trained with (the dataset's mean, BGR)."""
        return self._transforms

    def predictor(self, batch_size: int = 2, device: Optional[str] = None, **kw) -> Predictor:
        return Predictor(self.net, self._transforms, self.meta["head_blobs"], device=device,
                         batch_size=batch_size, **kw)

    def predict(self, images, *, scores: bool = False, probabilities: bool = False, batch_size: int = 2,
                tile: Optional[int] = None):
        """Labels for an image (a Prediction) or for a list, directory or glob (a list).

        tile: see :class:`Predictor` (None: tiled only when the image is too big for one forward)."""
        return self.predictor(batch_size, tile=tile).predict(images, scores=scores, probabilities=probabilities)


def load(net: str | os.PathLike, weights: Optional[os.PathLike] = None, *, download: bool = False,
         device: Optional[str] = "cpu", fast: bool = False, verify: bool = True, progress: bool = True) -> Pretrained:
    """A net with its weights, preprocessing and class names in one call (``fcn_repro.load``).

    net: a registry net (``python -m fcn_repro.zoo`` lists them; 'sample' is
    the bundled model), a deploy prototxt (give ``weights``) or a training
    run directory (``train --out``). weights: a file instead of the net's
    own. download: fetch a registry net's original weights when they are not
    here (see :mod:`fcn_repro.hub`). verify: check the file against its
    published facts / the manifest's record (recorded the first time, once
    it loaded as this net's). fast: the fast forward (:mod:`fcn_repro.fast`;
    equal to the plain one to float rounding). Missing weights raise
    :class:`fcn_repro.resolve.WeightsNotFoundError` (where they were looked
    for, how to get them).
    """
    device = resolve_device(device)
    model = resolve(net, weights, download=download, progress=progress)
    # one read of the file: checked against its facts, parsed into the net, then recorded
    netm, check = build(model, device, fast=fast, verify=verify, progress=progress)
    transforms = Transforms.for_model(model)
    heads = {h: list(ls.names) for h, ls in model.heads.items()}
    head_blobs = list(heads) or list(netm.outputs)
    card = model.card
    meta = {
        "name": model.name, "title": card.title if card is not None else model.name,
        "dataset": card.dataset if card is not None else None,
        "categories": heads.get(head_blobs[0]), "heads": heads, "labels": dict(model.heads),
        "head_blobs": head_blobs, "inputs": {b: [r for r, _ in reads] for b, reads in transforms.inputs},
        "mean": {r: np.asarray(m).tolist() for _, reads in transforms.inputs for r, m in reads},
        "weights": str(model.weights), "weights_how": model.weights_how,
        "weights_check": None if check is None else check["status"],
    }
    return Pretrained(model.name, netm, model.weights, meta, transforms)
