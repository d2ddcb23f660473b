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
PASCAL-Context layers hold float32 means and subtract in float32. The means
live in the registry (``registry.dataset(name).means``, ``registry.MEAN_*``)
with the dtype of the layer they mirror, and :func:`preprocess` subtracts in
the promoted dtype, as NumPy did.

Labels are class indices: a palette PNG read by PIL in mode 'P' gives the
palette index of each pixel through ``np.array``; 255 marks pixels to ignore.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageOps

from fcn_repro import limits
from fcn_repro.errors import FcnReproError, LimitError
from fcn_repro.registry import IGNORE_LABEL
from fcn_repro.labels import LabelSet, voc_palette
from fcn_repro.outputs import output_file

__all__ = [
    "ImageReadError", "open_checked", "read_rgb", "read_image", "as_rgb_array", "WIDE_MODES",
    "read_label_png", "check_label_size", "preprocess", "log_depth", "voc_palette", "colorize",
    "overlay", "save_label_png", "palette_of",
]


class ImageReadError(FcnReproError):
    """An image or label file that cannot be used: corrupt, truncated, not the format its name says,
    the wrong kind of label, or the wrong size. The message names the file."""


# PIL's own decompression-bomb warning is replaced by the pixel cap of open_checked (which
# refuses, naming the file): ignored process-wide, installed once at import. Not with
# warnings.catch_warnings() around each open: that is not thread-safe (the loaders open
# images in worker threads) and every entry resets Python's "already shown" records, so a
# warning meant to be shown once (fcn_repro.ops.FallbackWarning) was shown once per image.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_checked(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open an image with PIL, reading only its header, and check its declared
    size against the pixel cap (``fcn_repro.limits``: image_pixels) BEFORE any
    pixel is decoded. The caller closes it (``with``). A path that is not a
    regular file (a FIFO, whose open would wait for a writer; a device) is
    refused before it is opened."""
    if isinstance(path, (str, os.PathLike)):
        try:
            limits.require_regular(path, f"{what} file", error=ImageReadError)
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} not found: {path}") from None
        except OSError:   # not stat-able (permissions): PIL's open says what is wrong
            pass
    try:
        im = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except Image.DecompressionBombError as e:
        raise LimitError(f"{what} declares more pixels than PIL will decode ({e})", path) from None
    except (OSError, SyntaxError, ValueError) as e:   # PIL: unidentified/corrupt headers
        raise ImageReadError(f"cannot read {what}: {_pil_reason(e)}", path) from None
    except MemoryError:
        raise ImageReadError(_NO_MEMORY.format(what=what), path) from None
    try:
        w, h = im.size
        limits.check("image_pixels", w * h, f"{what} of {w}x{h} pixels", path)
    except BaseException:
        im.close()
        raise
    return im


# a decoder asked for more memory than there is: a chunk or field declaring gigabytes (a PNG chunk of
# 2-4 GiB in a file of 80 bytes); the file's error, not the process's
_NO_MEMORY = "cannot decode {what}: the decoder ran out of memory (a corrupt file declaring a huge part)"


def _pil_reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg.replace(str(getattr(e, "filename", "") or "\0"), "").strip(" :") or msg


def _decode(im: Image.Image, path, what: str, mode: Optional[str]) -> np.ndarray:
    try:
        if mode is not None and im.mode != mode:
            im = im.convert(mode)
        return np.asarray(im).copy()
    except Image.DecompressionBombError as e:
        raise LimitError(f"{what} declares more pixels than PIL will decode ({e})", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:   # truncated or corrupt pixel data
        raise ImageReadError(f"cannot decode {what}: {_pil_reason(e)}", path) from None
    except MemoryError:
        raise ImageReadError(_NO_MEMORY.format(what=what), path) from None


#: PIL modes of greyscale images wider than 8 bits (16-bit PNG and TIFF, 32-bit integer)
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(im: Image.Image, path, what: str) -> np.ndarray:
    """A PIL image as (H, W, 3) uint8 RGB; 16-bit greyscale by its high byte (see :func:`as_rgb_array`)."""
    if im.mode in WIDE_MODES:
        a = _decode(im, path, what, None)
        if im.mode == "I":   # 32-bit integers: taken as 16-bit values when they are
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ImageReadError(f"{what}: 32-bit pixel values from {a.min()} to {a.max()}, beyond 16 bits",
                                     path)
            a = a.astype(np.uint16)
        return as_rgb_array(a, what, path)
    if im.mode == "F":
        raise ImageReadError(f"{what}: a floating-point image (mode 'F'); expected 8- or 16-bit pixels", path)
    return _decode(im, path, what, "RGB")


def _sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """16-bit values -> 8-bit: the high byte, v // 256 (an 8-bit value v8 stored as v8 * 257 reads back as v8)."""
    return (a.astype(np.uint32) >> 8).astype(np.uint8)


def as_rgb_array(a: Any, what: str = "image", path: Any = None) -> np.ndarray:
    """An image array as the nets take it: (H, W, 3) RGB, uint8 (or float in 0-255).

    The FCNs were trained on 8-bit images (0-255 pixel values, mean
    subtracted): other inputs are converted to that, or refused with a
    :class:`ImageReadError` that says what to do:

    * greyscale (H, W) or (H, W, 1): replicated to three channels; (H, W, 2)
      (grey + alpha) likewise; RGBA (H, W, 4): the alpha is dropped;
    * channels-first (3, H, W) (also 1 or 4 channels first, when the last
      axis is not a channel axis): transposed, with a warning;
    * 16-bit (uint16, as 16-bit PNGs decode): scaled to 8 bits by the high
      byte, v // 256 (the rule PIL applies to 16-bit colour PNGs, so grey and
      colour files read alike; an 8-bit image stored at 16 bits, v8 * 257,
      reads back exactly); other integer types must hold 0-255 already;
    * floats must be finite and within 0-255; floats within [0, 1] are
      refused (the usual 0-1 scaling would give the net a nearly black
      image): multiply by 255 first.
    """
    a = np.asarray(a)
    where = f"{what} array of shape {a.shape} and dtype {a.dtype}"
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageReadError(f"{where}: expected pixel values (uint8 RGB)", path)
    if a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4) and a.shape[0] in (1, 2, 3, 4):
        warnings.warn(f"{what}: a channels-first array of shape {a.shape} taken as ({a.shape[0]}, H, W) and "
                      f"transposed to (H, W, {a.shape[0]}); pass (H, W, C) arrays", stacklevel=2)
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise ImageReadError(f"{where}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)", path)
    a = a[:, :, :1] if a.shape[2] <= 2 else a[:, :, :3]
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:
        a = _sixteen_to_eight(a)
    elif a.dtype != np.uint8:
        lo, hi = (a.min(), a.max()) if a.size else (0, 0)
        if np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise ImageReadError(f"{where}: has NaN or infinite values", path)
            if 0 <= lo and 0 < hi <= 1:
                raise ImageReadError(f"{where}: float values within [0, 1], but the nets take 0-255 pixel values "
                                     "(they were trained on 8-bit images); pass (image * 255) or a uint8 array",
                                     path)
        if lo < 0 or hi > 255:
            raise ImageReadError(f"{where}: values from {lo} to {hi}, outside the 0-255 of 8-bit pixels", path)
        if np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def read_rgb(path: str | os.PathLike, exif: bool = False) -> np.ndarray:
    """Decode an image file with PIL; returns (H, W, 3) uint8 RGB.

    PIL (libjpeg) decoding as the original layers did; a different decoder
    (OpenCV, torchvision) can round some JPEG pixels differently. Greyscale,
    palette or CMYK files are converted to RGB (the original layers assumed
    3-channel files; every VOC JPEG is one). ``exif``: turn the image upright
    by its EXIF orientation (photos from cameras; the datasets' readers do
    not, as the original layers did not). The declared size is checked
    against the pixel cap before decoding; a corrupt or truncated file is an
    :class:`ImageReadError` naming it. 16-bit greyscale files are read with
    their real values, scaled to 8 bits by the high byte (see
    :func:`as_rgb_array`); 16-bit colour PNGs PIL decodes by that same rule.
    """
    with open_checked(path, "image") as im:
        if exif:
            try:
                im = ImageOps.exif_transpose(im)
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ImageReadError(f"cannot decode image: {_pil_reason(e)}", path) from None
            except MemoryError:
                raise ImageReadError(_NO_MEMORY.format(what="image"), path) from None
        return _to_rgb(im, path, "image")


def read_image(src: Any, kind: str = "color") -> np.ndarray:
    """An input image for a net, from a path or a PIL image.

    kind 'color'/'data': (H, W, 3) uint8 RGB, EXIF orientation applied;
    'hha': (H, W, 3) uint8 in file channel order; 'depth': (H, W) as stored
    (16-bit depth PNGs keep their values).
    """
    if isinstance(src, Image.Image):
        im = src
        if kind in ("color", "data"):
            return _to_rgb(ImageOps.exif_transpose(im), None, "image")
        mode = "RGB" if kind in ("color", "data", "hha") else None
        return np.asarray(im.convert(mode) if mode and im.mode != mode else im).copy()
    if kind in ("color", "data"):
        return read_rgb(src, exif=True)
    with open_checked(src, kind) as im:
        return _decode(im, src, kind, "RGB" if kind == "hha" else None)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index label PNG; returns (H, W) uint8 (255 = ignore).

    VOC SegmentationClass PNGs are palette ('P') images: ``np.array`` of the
    PIL image yields the palette index, which is the class. 8-bit greyscale
    ('L') PNGs are read the same way. Refused, as :class:`ImageReadError`
    naming the file: a colour (RGB) PNG (colours, not classes), a 16-bit or
    other wider PNG (class indices are 8-bit), data of another format under
    the name (a JPEG saved as .png: lossy, its indices are not classes), and
    a corrupt or truncated file. The declared size is checked against the
    pixel cap before decoding.
    """
    with open_checked(path, "label") as im:
        if im.format != "PNG":
            raise ImageReadError(f"label: expected PNG data, found {im.format or 'unknown'} data (a label must be "
                                 "a lossless PNG of class indices)", path)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise ImageReadError(f"label: a {'16' if im.mode.startswith('I;16') else '32'}-bit PNG (mode "
                                 f"{im.mode!r}); class labels are 8-bit palette ('P') or greyscale ('L') PNGs", path)
        if im.mode not in ("P", "L"):
            raise ImageReadError(
                f"label: expected a palette ('P') or greyscale ('L') PNG of class indices, got mode {im.mode!r}",
                path)
        return _decode(im, path, "label", None).astype(np.uint8, copy=False)


def check_label_size(label: np.ndarray, image_shape, label_path, image_path=None) -> np.ndarray:
    """Refuse a label whose (H, W) differs from its image's, naming both files."""
    if tuple(label.shape[:2]) != tuple(image_shape[:2]):
        of = f" of {image_path}" if image_path is not None else ""
        raise ImageReadError(f"label size {tuple(label.shape[:2])} differs from the image size "
                             f"{tuple(image_shape[:2])}{of}", label_path)
    return label


def preprocess(image: np.ndarray, mean: np.ndarray, bgr: bool = True) -> np.ndarray:
    """(H, W, C) image -> (C, H, W) float32 net input, as the FCN layers did.

    image: (H, W, C) array (uint8 RGB for colour images; HHA is also fed
        through here with ``mean=registry.MEAN_NYUD_HHA, bgr=False``).
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


def log_depth(depth: np.ndarray, mean: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """(H, W) depth -> (1, H, W) float32 log(depth) - mean, as FCN's NYUDv2 layer computed it
    (float32 throughout; a zero depth gives -inf, as in the original). ``path``:
    the file the depth came from, named by the error for a map that is not (H, W)."""
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise ImageReadError(f"depth: expected a single-channel (H, W) map, got shape {d.shape}", path)
    with np.errstate(divide="ignore"):
        d = np.log(d)
    d -= np.asarray(mean, dtype=np.float32)
    return d[np.newaxis]


def palette_of(labels: Union[LabelSet, np.ndarray, None]) -> np.ndarray:
    """The (256, 3) uint8 palette of ``labels``: a :class:`~fcn_repro.labels.LabelSet`, an (N, 3)
    array of colours (N <= 256; the VOC map fills the rest) or None (the VOC map)."""
    if isinstance(labels, LabelSet):
        return labels.palette
    if labels is None:
        return voc_palette()
    cols = np.asarray(labels)
    if cols.ndim != 2 or cols.shape[1] != 3 or not 0 < cols.shape[0] <= 256:
        raise ValueError(f"a palette is (N, 3) colours with 1 <= N <= 256, got shape {cols.shape}")
    pal = voc_palette()
    pal[: len(cols)] = np.clip(cols, 0, 255).astype(np.uint8)
    return pal


def colorize(label: np.ndarray, labels: Union[LabelSet, np.ndarray, None] = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB in ``labels``' colours (default: the VOC map)."""
    return palette_of(labels)[np.asarray(label, dtype=np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5,
            ignore: Optional[int] = IGNORE_LABEL, labels: Union[LabelSet, np.ndarray, None] = None,
            background_alpha: float = 0.0) -> np.ndarray:
    """Alpha-blend the colours of ``label`` (``labels``' palette; default VOC) over ``image``.

    image: (H, W, 3) uint8 RGB; label: (H, W) indices. Classes coloured black
    (VOC's background) are blended at ``background_alpha`` (default 0: the
    photo is left as it is, not dimmed), the others at ``alpha``; pixels
    labelled ``ignore`` keep the image. Returns (H, W, 3) uint8.
    """
    image = np.asarray(image, dtype=np.uint8)
    label = np.asarray(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
    pal = palette_of(labels)
    a_of = np.where(pal.max(axis=1) == 0, np.float32(background_alpha), np.float32(alpha)).astype(np.float32)
    if ignore is not None:
        a_of[ignore] = 0.0
    idx = label.astype(np.uint8)
    a = a_of[idx][..., None]
    out = (1.0 - a) * image.astype(np.float32) + a * pal[idx].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_label_png(path: str | os.PathLike, label: np.ndarray,
                   labels: Union[LabelSet, np.ndarray, None] = None) -> None:
    """Write (H, W) class indices as a palette PNG in ``labels``' colours (default VOC), atomically."""
    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"{path}: label values must fit in a palette PNG (0..255)")
    im = Image.fromarray(np.ascontiguousarray(label.astype(np.uint8)))
    im.putpalette(palette_of(labels).reshape(-1).tolist())  # 'L' -> 'P' with the colours
    with output_file(path, 0, "wb") as f:
        im.save(f, format="PNG")
