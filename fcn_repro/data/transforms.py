"""Decoding and preprocessing exactly as the original FCN Python data layers.

The original layers (voc_layers, siftflow_layers, nyud_layers,
pascalcontext_layers of the FCN code) fed Caffe with:

    in_ = np.array(PIL.Image.open(path), dtype=np.float32)   # H x W x 3, RGB
    in_ = in_[:, :, ::-1]                                    # RGB -> BGR
    in_ -= mean                                              # per channel (B, G, R)
    in_ = in_.transpose((2, 0, 1))                           # C x H x W

with no scaling and no resizing (batch of 1 at the image's own size).

One detail matters for bit-exactness: the dtype of ``mean``. The VOC and SBD
layers take the mean from the prototxt's param_str, a Python tuple, so it is
a float64 array; NumPy's in-place ``float32 -= float64`` then subtracts in
float64 and rounds the result once to float32. The SIFT Flow, NYUDv2 and
PASCAL-Context layers hold float32 means and subtract in float32. The
``MEAN_*`` constants below carry the dtype of the layer they mirror, and
:func:`preprocess` subtracts in the promoted dtype, as NumPy did.

Labels are class indices: a palette PNG read by PIL in mode 'P' gives the
palette index of each pixel through ``np.array``; 255 marks pixels to ignore.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

__all__ = [
    "MEAN_VOC", "MEAN_CONTEXT", "MEAN_SIFTFLOW", "MEAN_NYUD_COLOR", "MEAN_NYUD_HHA",
    "MEAN_NYUD_LOGD", "IGNORE_LABEL", "read_rgb", "read_label_png", "preprocess", "to_batch",
    "voc_palette", "colorize", "overlay", "save_label_png",
]

# The means (with their dtypes) live in the registry, one card per dataset.
from fcn_repro.registry import (IGNORE_LABEL, MEAN_CONTEXT, MEAN_NYUD_COLOR, MEAN_NYUD_HHA,  # noqa: E402,F401
                                MEAN_NYUD_LOGD, MEAN_SIFTFLOW, MEAN_VOC)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file with PIL; returns (H, W, 3) uint8 RGB.

    PIL (libjpeg) decoding as the original layers did; a different decoder
    (OpenCV, torchvision) can round some JPEG pixels differently. Greyscale,
    palette or CMYK files are converted to RGB (the original layers assumed
    3-channel files; every VOC JPEG is one).
    """
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except OSError as e:
        raise OSError(f"cannot decode image {path}: {e}") from None


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index label PNG; returns (H, W) uint8 (255 = ignore).

    VOC SegmentationClass PNGs are palette ('P') images: ``np.array`` of the
    PIL image yields the palette index, which is the class. 'L' images are
    read the same way. A colour (RGB) PNG holds colours, not classes, and is
    refused.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(
                    f"label {path}: expected a palette ('P') or greyscale ('L') PNG of class "
                    f"indices, got mode {im.mode!r}")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"label not found: {path}") from None


def preprocess(image: np.ndarray, mean: np.ndarray = MEAN_VOC, bgr: bool = True) -> np.ndarray:
    """(H, W, C) image -> (C, H, W) float32 net input, as the FCN layers did.

    image: (H, W, C) array (uint8 RGB for colour images; HHA is also fed
        through here with ``mean=MEAN_NYUD_HHA, bgr=False``).
    mean: per-channel mean in the channel order of the *output*; its dtype
        sets the precision of the subtraction (see the module docstring).
    bgr: reverse the channel order (RGB -> BGR) before subtracting.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if bgr:
        a = a[:, :, ::-1]
    mean = np.asarray(mean)
    if mean.shape[-1] != a.shape[2]:
        raise ValueError(f"mean has {mean.shape[-1]} channels, image has {a.shape[2]}")
    if a.dtype == np.uint8:
        # 8-bit pixels: look the result up in a per-channel table of the 256
        # possible values, computed with exactly the arithmetic below. Same
        # numbers; about 2 ms of CPU for a 500 x 375 image instead of 4-9 ms.
        lut = _mean_lut(mean)
        h, w, c = a.shape
        out = np.empty((c, h, w), dtype=np.float32)
        for ch in range(c):
            np.take(lut[ch], a[:, :, ch], out=out[ch])
        return out
    work = np.result_type(np.float32, mean.dtype)
    # float32(pixel) first, as np.array(im, dtype=np.float32) did; then the
    # subtraction in the promoted dtype, rounded once to float32.
    out = a.astype(np.float32).astype(work, copy=False) - mean
    return np.ascontiguousarray(out.astype(np.float32, copy=False).transpose(2, 0, 1))


_LUTS: dict = {}


def _mean_lut(mean: np.ndarray) -> np.ndarray:
    """(C, 256) float32: float32(float32(v) - mean[c]) in the mean's precision."""
    key = (mean.dtype.str, mean.tobytes())
    lut = _LUTS.get(key)
    if lut is None:
        work = np.result_type(np.float32, mean.dtype)
        v = np.arange(256, dtype=np.float32).astype(work)
        lut = (v[None, :] - mean.reshape(-1, 1)).astype(np.float32)
        _LUTS[key] = lut
    return lut


def to_batch(chw: np.ndarray):
    """(C, H, W) numpy -> (1, C, H, W) torch tensor (shares memory)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(chw)).unsqueeze(0)


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


_PALETTE = voc_palette()


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB in the VOC palette."""
    return _PALETTE[np.asarray(label, dtype=np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5,
            ignore: Optional[int] = IGNORE_LABEL) -> np.ndarray:
    """Alpha-blend the palette colours of ``label`` over ``image``.

    image: (H, W, 3) uint8 RGB; label: (H, W) indices. Pixels labelled
    ``ignore`` keep the image. Returns (H, W, 3) uint8.
    """
    image = np.asarray(image, dtype=np.uint8)
    label = np.asarray(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
    col = colorize(label).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * col
    if ignore is not None:
        keep = label == ignore
        out[keep] = image[keep]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write (H, W) class indices as a palette PNG (VOC palette), atomically."""
    from fcn_repro.utils import atomic_write

    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"{path}: label values must fit in a palette PNG (0..255)")
    im = Image.fromarray(np.ascontiguousarray(label.astype(np.uint8)))
    im.putpalette(_PALETTE.reshape(-1).tolist())  # 'L' -> 'P' with the VOC colours
    with atomic_write(path, "wb") as f:
        im.save(f, format="PNG")
