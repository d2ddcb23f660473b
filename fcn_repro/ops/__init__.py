"""fcn_repro.ops: Caffe-semantics deconvolution and fused crop-and-sum skip layers.

Public functions (all differentiable, float32/float64, any device):

- ``deconv2d(x, weight, bias=None, stride=(1,1), pad=(0,0), dilation=(1,1), groups=1)``
- ``crop_sum(a, b, offsets, coeffs=None)``
- ``deconv2d_crop(x, weight, bias, stride, pad, dilation, groups, offsets, out_size)``
- ``extension_info()``
"""
from .reference import crop_sum_ref, deconv2d_crop_ref, deconv2d_ref


def deconv2d(x, weight, bias=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1):
    return deconv2d_ref(x, weight, bias, stride, pad, dilation, groups)


def crop_sum(a, b, offsets, coeffs=None):
    return crop_sum_ref(a, b, offsets, coeffs)


def deconv2d_crop(x, weight, bias=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1,
                  offsets=(0, 0), out_size=None):
    return deconv2d_crop_ref(x, weight, bias, stride, pad, dilation, groups, offsets, out_size)


def extension_info():
    return {"cpu": False, "cuda": False, "fallback": True, "path": None,
            "error": "extension ops not written yet (pure-PyTorch reference in use)"}


__all__ = ["deconv2d", "crop_sum", "deconv2d_crop", "extension_info"]
