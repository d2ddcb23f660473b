"""Caffe's parameter fillers (FillerParameter), and FCN's bilinear upsampling init.

Fillers give a parameter blob its starting values when no weights are loaded:
Caffe fills every learnable blob of every layer from the layer's
``weight_filler`` / ``bias_filler`` (or the layer type's own filler field) when
it builds a net, and a ``FillerParameter`` that is absent is the protobuf
default: ``type: "constant"``, ``value: 0``. That default is why the FCN score
layers, which name no filler, start at exactly zero.

This module is the project's one place for fillers. It works on numpy arrays
(formats and math know nothing of torch); :func:`fill_params` fills a built
net's ``torch.nn.Parameter`` lists from the net's prototxt.

Random fillers draw from a ``numpy.random.Generator``: Caffe's own RNG stream
(boost mt19937 + its distributions) is not reproduced, so random fills are
Caffe-like in distribution, not bit-identical. Constant and bilinear fills are
exact.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from fcn_repro.caffe.prototxt import Message
from fcn_repro.errors import FcnReproError

__all__ = [
    "FillerError", "fill", "bilinear_kernel", "bilinear_weight", "layer_fillers",
    "fill_layer", "fill_params", "FILLER_TYPES",
]


class FillerError(FcnReproError):
    """A filler that cannot be applied (unknown type, wrong blob shape)."""


def _f(msg: Message, name: str, default: float) -> float:
    # Text format allows ints for float fields (``std: 1``): always float().
    return float(msg.get(name, default))


def _fans(shape: Sequence[int]) -> tuple[float, float]:
    """Caffe's fan-in/fan-out: ``count / shape[0]`` and ``count / shape[1]``.

    For a Convolution weight (Cout, Cin/g, kh, kw) that is Cin/g*kh*kw and
    Cout*kh*kw; Caffe uses the same expressions whatever the layer (a
    Deconvolution weight (Cin, Cout/g, kh, kw) gets them "swapped", as in Caffe).
    A 1-D blob has fan_out = count.
    """
    count = int(np.prod(shape)) if len(shape) else 1
    fan_in = count / shape[0] if len(shape) >= 1 and shape[0] else float(count)
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else float(count)
    return fan_in, fan_out


def _variance_n(filler: Message, shape: Sequence[int]) -> float:
    fan_in, fan_out = _fans(shape)
    norm = str(filler.get("variance_norm", "FAN_IN")).upper()
    # variance_norm may come as the enum name or its number (FAN_IN 0, FAN_OUT 1, AVERAGE 2).
    if norm in ("FAN_IN", "0"):
        return fan_in
    if norm in ("FAN_OUT", "1"):
        return fan_out
    if norm in ("AVERAGE", "2"):
        return (fan_in + fan_out) / 2.0
    raise FillerError(f"unknown variance_norm {norm!r} (expected FAN_IN, FAN_OUT or AVERAGE)")


def bilinear_kernel(k: int, dtype: Any = np.float32) -> np.ndarray:
    """The (k, k) bilinear interpolation kernel of FCN and Caffe's BilinearFiller.

    f = ceil(k/2); c = f-1 if k is odd else f-0.5; w[i, j] = (1-|i-c|/f)(1-|j-c|/f).
    (Caffe writes the same centre as (k-1)/2 in pixels.) Computed in float64,
    returned as ``dtype``.
    """
    k = int(k)
    if k < 1:
        raise FillerError(f"bilinear kernel size must be >= 1, got {k}")
    f = math.ceil(k / 2.0)
    c = f - 1 if k % 2 == 1 else f - 0.5
    og = np.arange(k, dtype=np.float64)
    w1 = 1.0 - np.abs(og - c) / f
    return np.outer(w1, w1).astype(dtype)


def bilinear_weight(shape: Sequence[int], dtype: Any = np.float32, where: str = "") -> np.ndarray:
    """FCN's upsampling initialisation ("surgery.interp") for a Deconvolution weight.

    ``shape`` is the Caffe Deconvolution weight shape (Cin, Cout/group, kh, kw):

    * (C, C, k, k), FCN's no-group layers: the bilinear kernel on the channel
      diagonal (class c upsamples into class c), zero off the diagonal;
    * (C, 1, k, k), a depthwise (group = C) layer: the kernel in every channel.

    Anything else (non-square kernel, mixed channel counts) is an error: there
    is no single right bilinear map for it. ``where`` names the layer in errors.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise FillerError(f"{where or 'blob'}: bilinear upsampling needs a square 4-D weight "
                          f"(Cin, Cout/group, k, k), got shape {shape}")
    cin, cout, k, _ = shape
    kern = bilinear_kernel(k, np.float64)
    w = np.zeros(shape, np.float64)
    if cout == 1:
        w[:, 0] = kern
    elif cin == cout:
        idx = np.arange(cin)
        w[idx, idx] = kern
    else:
        raise FillerError(f"{where or 'blob'}: bilinear upsampling needs as many input as output "
                          f"channels (weight (C, C, k, k)) or a depthwise weight (C, 1, k, k); "
                          f"got shape {shape}")
    return w.astype(dtype)


def fill(shape: Sequence[int], filler: Message | dict | None = None,
         rng: np.random.Generator | None = None, dtype: Any = np.float32,
         where: str = "") -> np.ndarray:
    """A blob of ``shape`` filled as Caffe's filler ``filler`` would fill it.

    ``filler`` is a FillerParameter (a :class:`Message` or a plain dict; None
    means the protobuf default, constant 0). Types: constant (value),
    uniform (min, max), gaussian (mean, std, sparse), positive_unitball,
    xavier (variance_norm; uniform in +-sqrt(3/n)), msra (variance_norm;
    gaussian with std sqrt(2/n)), bilinear (Caffe's BilinearFiller: the
    bilinear kernel in EVERY (i, j) channel pair of a 4-D square blob; FCN's
    diagonal variant is :func:`bilinear_weight`).
    """
    if filler is None:
        filler = Message()
    elif isinstance(filler, dict):
        filler = Message(list(filler.items()))
    shape = tuple(int(s) for s in shape)
    rng = rng if rng is not None else np.random.default_rng()
    kind = str(filler.get("type", "constant")).lower()
    count = int(np.prod(shape)) if shape else 1
    sparse = int(filler.get("sparse", -1))
    if sparse != -1 and kind != "gaussian":
        # Caffe CHECKs sparse == -1 in every filler but gaussian.
        raise FillerError(f"{where or 'blob'}: filler {kind!r} does not support sparse "
                          f"(only gaussian does); got sparse {sparse}")
    if kind == "constant":
        out = np.full(shape, _f(filler, "value", 0.0), np.float64)
    elif kind == "uniform":
        out = rng.uniform(_f(filler, "min", 0.0), _f(filler, "max", 1.0), shape)
    elif kind == "gaussian":
        out = rng.normal(_f(filler, "mean", 0.0), _f(filler, "std", 1.0), shape)
        if sparse >= 0:
            # Caffe keeps each weight with probability sparse / num_outputs
            # (num_outputs = shape[0]) and zeroes the rest.
            if len(shape) < 1 or shape[0] == 0:
                raise FillerError(f"{where or 'blob'}: sparse gaussian needs a blob with axis 0")
            p = sparse / shape[0]
            out = out * (rng.random(shape) < p)
    elif kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, shape)
        # Each of the shape[0] rows is scaled to sum to one.
        n = shape[0] if shape else 1
        flat = out.reshape(n, -1)
        flat /= flat.sum(axis=1, keepdims=True)
        out = flat.reshape(shape)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(filler, shape))
        out = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        std = math.sqrt(2.0 / _variance_n(filler, shape))
        out = rng.normal(0.0, std, shape)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise FillerError(f"{where or 'blob'}: Caffe's bilinear filler needs a 4-D blob with a "
                              f"square filter (height == width), got shape {shape}")
        out = np.broadcast_to(bilinear_kernel(shape[3], np.float64), shape).copy()
    else:
        raise FillerError(f"{where or 'blob'}: unknown filler type {kind!r} (expected constant, "
                          "uniform, gaussian, positive_unitball, xavier, msra or bilinear)")
    if out.size != count:  # pragma: no cover - shapes come from numpy
        raise AssertionError("filler produced the wrong count")
    return np.asarray(out, dtype=dtype)


# Which FillerParameter fills blob i of a layer, per Caffe layer type:
# (parameter message, [(filler field, default filler when the field is absent)]).
# Defaults follow the Caffe layers: most are constant 0 (the protobuf default);
# Scale's gamma starts at 1 and PReLU's slope at 0.25 when no filler is named.
_CONST = lambda v: Message([("type", "constant"), ("value", float(v))])  # noqa: E731
_LAYER_FILLERS: dict[str, tuple[str, list[tuple[str, Message]]]] = {
    "Convolution": ("convolution_param", [("weight_filler", _CONST(0)), ("bias_filler", _CONST(0))]),
    "Deconvolution": ("convolution_param", [("weight_filler", _CONST(0)), ("bias_filler", _CONST(0))]),
    "InnerProduct": ("inner_product_param", [("weight_filler", _CONST(0)), ("bias_filler", _CONST(0))]),
    "Embed": ("embed_param", [("weight_filler", _CONST(0)), ("bias_filler", _CONST(0))]),
    "Scale": ("scale_param", [("filler", _CONST(1)), ("bias_filler", _CONST(0))]),
    "Bias": ("bias_param", [("filler", _CONST(0))]),
    "PReLU": ("prelu_param", [("filler", _CONST(0.25))]),
}


def layer_fillers(layer: Message, nblobs: int) -> list[Message]:
    """The FillerParameter of each of a layer's ``nblobs`` parameter blobs.

    For a type without fillers in Caffe (BatchNorm's statistics, ...) the blobs
    start at zero, which is the constant-0 filler.
    """
    ltype = str(layer.get("type", ""))
    spec = _LAYER_FILLERS.get(ltype)
    if spec is not None and ltype == "Scale" and len(layer.getall("bottom")) > 1:
        # Caffe's Scale with gamma from a second bottom owns only beta, which
        # bias_filler fills: drop gamma's filler so blob 0 gets beta's.
        spec = (spec[0], spec[1][1:])
    out: list[Message] = []
    for i in range(nblobs):
        if spec is not None and i < len(spec[1]):
            pmsg = layer.sub(spec[0])
            field, default = spec[1][i]
            out.append(pmsg.sub(field) if pmsg.has(field) else default)
        else:
            out.append(_CONST(0))
    return out


def fill_layer(layer: Message, shapes: Sequence[Sequence[int]],
               rng: np.random.Generator | None = None, dtype: Any = np.float32) -> list[np.ndarray]:
    """Fresh parameter blobs for ``layer`` (a V2 LayerParameter) of the given shapes."""
    name = str(layer.get("name", "?"))
    fillers = layer_fillers(layer, len(shapes))
    return [fill(s, f, rng, dtype, where=f"layer {name!r} blob {i}")
            for i, (s, f) in enumerate(zip(shapes, fillers))]


def fill_params(params: dict[str, list[Any]], netparam: Message,
                rng: np.random.Generator | int | None = None,
                layers: Iterable[str] | None = None) -> list[str]:
    """Fill a built net's parameters from its prototxt, as Caffe does at Net init.

    ``params``: layer name -> list of tensors/Parameters in Caffe order and
    shapes (``net.params``). ``netparam``: the (upgraded, V2) NetParameter the
    net was built from. ``rng``: a Generator or a seed. ``layers`` restricts the
    fill to those layers. Layers are filled in prototxt order so a seed gives
    the same values every time. Shared parameters (the same tensor object seen
    twice) are filled once, by their first owner, as in Caffe. Returns the
    names of the layers filled.
    """
    import torch  # local: the numpy part of this module must not need torch

    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    wanted = set(layers) if layers is not None else None
    seen: set[int] = set()
    filled: list[str] = []
    for layer in netparam.getall("layer"):
        name = str(layer.get("name", ""))
        if name not in params or (wanted is not None and name not in wanted):
            continue
        blobs = params[name]
        fillers = layer_fillers(layer, len(blobs))
        for i, (p, f) in enumerate(zip(blobs, fillers)):
            if id(p) in seen:
                continue
            seen.add(id(p))
            arr = fill(tuple(p.shape), f, rng, np.float64, where=f"layer {name!r} blob {i}")
            with torch.no_grad():
                p.copy_(torch.from_numpy(arr).to(dtype=p.dtype, device=p.device))
        filled.append(name)
    return filled
