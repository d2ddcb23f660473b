"""fcn_repro.ops: Caffe-semantics deconvolution and fused crop-and-sum skip layers.

Public functions (all twice differentiable, float32/float64, any device; integer
arguments take ints, NumPy integers or 0-d integer tensors):

- ``deconv2d(x, weight, bias=None, stride=(1,1), pad=(0,0), dilation=(1,1), groups=1)``:
  Caffe Deconvolution, weight (Cin, Cout/groups, kh, kw).
- ``crop_sum(a, b, offsets, coeffs=None)``: Crop b (axis 2) at offsets to a's
  H x W, then Eltwise SUM a*coeffs[0] + crop*coeffs[1].
- ``deconv2d_crop(x, weight, bias, stride, pad, dilation, groups, offsets, out_size)``:
  deconv2d(...)[..., oy:oy+H, ox:ox+W], computed only on that window.
- ``weight_is_diagonal(weight, groups=1)``: whether the diagonal fast path is
  taken; ``clear_diagonal_cache()`` forgets the per-weight-version results.
- ``extension_info()``: which backends of the C++/CUDA extension were built
  and whether the pure-PyTorch fallback is in use.

They run the kernels of the C++/CUDA extension fcn_repro._C (registered as
torch.ops.fcn_repro.*) and fall back to the pure-PyTorch references of
fcn_repro.ops.reference, with a FallbackWarning, when it is missing. Invalid
arguments raise ValueError (the same ones on every path: fcn_repro.ops.checks).
"""
from __future__ import annotations

from . import _ext
from ._ext import FallbackWarning
from .crop_sum import crop_sum
from .deconv import clear_diagonal_cache, deconv2d, deconv2d_crop, weight_is_diagonal
from .reference import crop_sum_ref, deconv2d_crop_ref, deconv2d_ref


def extension_info() -> dict:
    """State of the compiled extension fcn_repro._C.

    Keys: "cpu", "cuda" (bool: kernels of that backend were built and
    registered), "fallback" (bool: the pure-PyTorch reference is in use for
    every device), "path" (the extension file, or None), "error" (why it could
    not be loaded, or None), "torch" (the running torch version).
    """
    path = getattr(_ext._C, "__file__", None) if _ext._C is not None else None
    return {
        "cpu": _ext.has_kernel("deconv2d_crop", "CPU"),
        "cuda": _ext.has_kernel("deconv2d_crop", "CUDA"),
        "fallback": not _ext.AVAILABLE,
        "path": path,
        "error": _ext.LOAD_ERROR,
        "torch": __import__("torch").__version__,
    }


__all__ = ["deconv2d", "crop_sum", "deconv2d_crop", "extension_info", "weight_is_diagonal", "clear_diagonal_cache",
           "FallbackWarning", "deconv2d_ref", "crop_sum_ref", "deconv2d_crop_ref"]
