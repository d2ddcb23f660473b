"""Kernel / pad / stride / dilation of Convolution, Deconvolution and Pooling.

Caffe accepts two spellings: the repeated ``kernel_size``/``pad``/``stride``/
``dilation`` fields (one value for every spatial axis, or one per axis) and
the 2-D-only ``kernel_h``/``kernel_w`` (``pad_h``/``pad_w``, ``stride_h``/
``stride_w``), never both for the same quantity.
"""
from __future__ import annotations

from typing import Optional

from fcn_repro.caffe.prototxt import Message

from ..shapes import conv_out, deconv_out  # noqa: F401  (re-exported)
from .base import Layer


def _pair_field(p: Message, name: str, hname: str, wname: str, default: Optional[int],
                layer: Layer, repeated: bool = True) -> tuple[int, int]:
    vals = [int(v) for v in p.getall(name)] if repeated else (
        [int(p.get(name))] if p.has(name) else [])
    has_hw = p.has(hname) or p.has(wname)
    if has_hw:
        if not (p.has(hname) and p.has(wname)):
            raise layer.error(f"give both {hname} and {wname}, not just one")
        if vals:
            raise layer.error(f"give either {name} or {hname}/{wname}, not both")
        return int(p.get(hname)), int(p.get(wname))
    if not vals:
        if default is None:
            raise layer.error(f"{name} (or {hname} and {wname}) is required")
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise layer.error(f"{name} has {len(vals)} values; a 2-D layer takes 1 or 2")


def conv_geometry(p: Message, layer: Layer):
    """(kernel, stride, pad, dilation), each an (h, w) pair, of a ConvolutionParameter."""
    kernel = _pair_field(p, "kernel_size", "kernel_h", "kernel_w", None, layer)
    stride = _pair_field(p, "stride", "stride_h", "stride_w", 1, layer)
    pad = _pair_field(p, "pad", "pad_h", "pad_w", 0, layer)
    dil = [int(v) for v in p.getall("dilation")]
    if not dil:
        dilation = (1, 1)
    elif len(dil) == 1:
        dilation = (dil[0], dil[0])
    elif len(dil) == 2:
        dilation = (dil[0], dil[1])
    else:
        raise layer.error(f"dilation has {len(dil)} values; a 2-D layer takes 1 or 2")
    if min(kernel) < 1:
        raise layer.error(f"kernel size must be positive, got {kernel}")
    if min(stride) < 1:
        raise layer.error(f"stride must be positive, got {stride}")
    if min(pad) < 0 or min(dilation) < 1:
        raise layer.error(f"pad must be >= 0 and dilation >= 1, got pad {pad}, dilation {dilation}")
    return kernel, stride, pad, dilation


def pool_geometry(p: Message, layer: Layer):
    """(kernel, stride, pad) pairs of a PoolingParameter (kernel None when global)."""
    global_pool = bool(p.get("global_pooling", False))
    if global_pool:
        if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
            raise layer.error("with global_pooling: true the kernel size cannot be specified")
        kernel = None
    else:
        kernel = _pair_field(p, "kernel_size", "kernel_h", "kernel_w", None, layer, repeated=False)
        if min(kernel) < 1:
            raise layer.error(f"kernel size must be positive, got {kernel}")
    stride = _pair_field(p, "stride", "stride_h", "stride_w", 1, layer, repeated=False)
    pad = _pair_field(p, "pad", "pad_h", "pad_w", 0, layer, repeated=False)
    if min(stride) < 1 or min(pad) < 0:
        raise layer.error(f"need stride >= 1 and pad >= 0, got stride {stride}, pad {pad}")
    if global_pool and (pad != (0, 0) or stride != (1, 1)):
        raise layer.error("with global_pooling: true only pad 0 and stride 1 are supported (as in Caffe)")
    if kernel is not None and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
        # Caffe CHECK_LT(pad, kernel): a window must always touch the image.
        raise layer.error(f"pad {pad} must be smaller than the kernel {kernel}")
    return kernel, stride, pad
