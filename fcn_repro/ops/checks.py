"""The argument rules of the fcn_repro ops, on the Python side.

The C++ kernels check their arguments once per op, in csrc/ops_common.h
(shared by the CPU and CUDA launchers). The fake (meta) kernels registered
for torch.compile and the pure-PyTorch references must accept and refuse
exactly the same calls, with the same messages, so they call these
functions. Refusals are ValueError (the C++ side raises c10::ValueError,
which Python sees as ValueError).

Range rule (Caffe's): blob dimensions and layer parameters are C ints, so
every integer (tensor dimensions, stride, pad, dilation, groups, offsets,
sizes) and every term of the Deconvolution size formula must lie in
[lo, 2^31 - 1]. The conditions go through ``torch._check_value``, which also
takes the symbolic sizes of fake tensors.
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple, Union

import torch

IntPair = Union[int, Sequence[int]]

MAX_CAFFE_INT = 2 ** 31 - 1
_KERNEL_DTYPES = (torch.float32, torch.float64)


def check(cond, op: str, msg) -> None:
    """ValueError 'fcn_repro::OP: MSG' unless cond (a bool or a symbolic bool)."""
    torch._check_value(cond, lambda: f"fcn_repro::{op}: {msg() if callable(msg) else msg}")


def _scalar(v) -> bool:
    """Whether ``v`` is one value: not a sequence, or a 0-d tensor / NumPy array."""
    if isinstance(v, (str, bytes)):
        return True
    return not hasattr(v, "__len__") or getattr(v, "ndim", None) == 0


def as_int(v, name: str, op: str = "ops") -> int:
    """An integer argument (int, NumPy integer, 0-d integer tensor or array; not bool, float
    or str) within int64."""
    if isinstance(v, bool) or str(getattr(v, "dtype", "")) in ("bool", "torch.bool"):
        raise ValueError(f"fcn_repro::{op}: {name} must be an int, got {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise ValueError(f"fcn_repro::{op}: {name} must be an int, got {v!r}") from None
    if not -2 ** 63 <= i < 2 ** 63:
        raise ValueError(f"fcn_repro::{op}: {name} {i} is out of range (Caffe stores it in an int, "
                         f"at most {MAX_CAFFE_INT})")
    return i


def pair(v: IntPair, name: str, op: str = "ops") -> Tuple[int, int]:
    """(v, v) for an int, (v[0], v[0]) or (v[0], v[1]) for a sequence of one or two ints.

    The one normaliser of the ops' integer arguments: every int the public ops
    take (stride, pad, dilation, groups, offsets, out_size) goes through it or
    :func:`as_int`, so each accepts the same things (ints, NumPy integers,
    0-d integer tensors, and sequences or 1-d tensors of them)."""
    if _scalar(v):
        i = as_int(v, name, op)
        return i, i
    vals = [as_int(x, name, op) for x in v]
    if len(vals) not in (1, 2):
        raise ValueError(f"fcn_repro::{op}: {name} must be an int or a pair of ints (h, w), got {v!r}")
    return vals[0], vals[-1]


def coeff_pair(coeffs, op: str = "crop_sum") -> Tuple[float, float]:
    """The two Eltwise SUM coefficients (a's, the crop's): (1, 1) for None, else exactly two numbers."""
    if coeffs is None:
        return 1.0, 1.0
    if _scalar(coeffs):
        raise ValueError(f"fcn_repro::{op}: coeffs must be a pair of numbers (one per bottom), got {coeffs!r}")
    vals = list(coeffs)
    if len(vals) != 2:
        raise ValueError(f"fcn_repro::{op}: coeffs must have exactly 2 values (one per bottom, as Caffe's "
                         f"Eltwise), got {len(vals)}: {coeffs!r}")
    out = []
    for c in vals:
        if isinstance(c, (str, bytes, bool)) or str(getattr(c, "dtype", "")) in ("bool", "torch.bool"):
            raise ValueError(f"fcn_repro::{op}: coeffs must be numbers, got {coeffs!r}")
        try:
            out.append(float(c))
        except (TypeError, ValueError, RuntimeError):   # RuntimeError: a tensor of more than one value
            raise ValueError(f"fcn_repro::{op}: coeffs must be numbers, got {coeffs!r}") from None
    return out[0], out[1]


def check_int(v, lo: int, what: str, op: str) -> None:
    check(lo <= v, op, lambda: f"{what} must be in [{lo}, {MAX_CAFFE_INT}] (Caffe stores it in an int), got {v}")
    check(v <= MAX_CAFFE_INT, op,
          lambda: f"{what} must be in [{lo}, {MAX_CAFFE_INT}] (Caffe stores it in an int), got {v}")


def check_int_pair(v, lo: int, what: str, op: str) -> None:
    check(len(v) == 2, op, lambda: f"{what} must have 2 values (h, w), got {len(v)}")
    for x in v:
        check(lo <= x, op, lambda: f"{what} must be in [{lo}, {MAX_CAFFE_INT}] (Caffe stores it in an int), "
              f"got {list(v)}")
        check(x <= MAX_CAFFE_INT, op, lambda: f"{what} must be in [{lo}, {MAX_CAFFE_INT}] (Caffe stores it in an "
              f"int), got {list(v)}")


def check_shape(shape, what: str, op: str) -> None:
    check(len(shape) == 4, op, lambda: f"{what} must be 4-D (N, C, H, W), got {list(shape)}")
    for d in shape:
        check(d <= MAX_CAFFE_INT, op, lambda: f"{what} shape {list(shape)} has a dimension over Caffe's int range")


def check_tensors(op: str, named, kernel_dtypes: bool = True) -> None:
    """Defined tensors: one dtype, one device (a meta tensor among CPU ones is refused), and
    float32/float64 (kernel_dtypes; the references take any floating dtype)."""
    first = None
    want = "float32 or float64" if kernel_dtypes else "floating point"
    for t, name in named:
        if t is None:
            continue
        check(t.dtype in _KERNEL_DTYPES if kernel_dtypes else t.is_floating_point(), op, lambda: f"{name} must be {want}, got {t.dtype}")
        if first is None:
            first = (t, name)
            continue
        check(t.device == first[0].device, op, lambda: f"{first[1]} is on {first[0].device} but {name} is on {t.device}")
        check(t.dtype == first[0].dtype, op, lambda: f"{first[1]} is {first[0].dtype} but {name} is {t.dtype}")


def _mul(a, b, what: str, op: str):
    v = a * b
    check(-MAX_CAFFE_INT <= v, op, lambda: f"{what} ({a} * {b}) is out of Caffe's int range")
    check(v <= MAX_CAFFE_INT, op, lambda: f"{what} ({a} * {b}) is out of Caffe's int range")
    return v


def _add(a, b, what: str, op: str):
    v = a + b
    check(-MAX_CAFFE_INT <= v, op, lambda: f"{what} ({a} + {b}) is out of Caffe's int range")
    check(v <= MAX_CAFFE_INT, op, lambda: f"{what} ({a} + {b}) is out of Caffe's int range")
    return v


def deconv_geometry(op: str, x_shape, w_shape, stride, pad, dilation, groups: int,
                    offsets=(0, 0), out_size: Optional[Sequence[int]] = None):
    """Checks a deconvolution as csrc/ops_common.h deconv_geom does; returns
    (full_h, full_w, out_h, out_w, num_output). out_size None: the whole top."""
    check_shape(x_shape, "bottom", op)
    check(len(w_shape) == 4, op, lambda: "weight must be 4-D (Cin, Cout/groups, kh, kw) as Caffe stores "
          f"Deconvolution weights, got {list(w_shape)}")
    check_shape(w_shape, "weight", op)
    check_int_pair(stride, 1, "stride", op)
    check_int_pair(pad, 0, "pad", op)
    check_int_pair(dilation, 1, "dilation", op)
    check_int_pair(offsets, 0, "offsets", op)
    if out_size is not None:
        check_int_pair(out_size, 1, "out_size", op)
    check_int(groups, 1, "groups", op)
    cin = x_shape[1]
    check(cin % groups == 0, op, lambda: f"bottom has {cin} channels, weight shape {list(w_shape)}, groups "
          f"{groups}: expected weight.shape[0] == channels, divisible by groups")
    check(w_shape[0] == cin, op, lambda: f"bottom has {cin} channels, weight shape {list(w_shape)}, groups "
          f"{groups}: expected weight.shape[0] == channels, divisible by groups")
    check(x_shape[2] >= 1, op, lambda: f"empty bottom {list(x_shape)} or kernel {list(w_shape)}")
    check(x_shape[3] >= 1, op, lambda: f"empty bottom {list(x_shape)} or kernel {list(w_shape)}")
    check(w_shape[2] >= 1, op, lambda: f"empty bottom {list(x_shape)} or kernel {list(w_shape)}")
    check(w_shape[3] >= 1, op, lambda: f"empty bottom {list(x_shape)} or kernel {list(w_shape)}")
    cout = _mul(w_shape[1], groups, "num_output (weight.shape[1] * groups)", op)
    full = []
    for a in range(2):  # each term of Caffe's size formula, as csrc/ops_common.h checks them
        span = _mul(stride[a], x_shape[2 + a] - 1, "stride * (bottom size - 1)", op)
        extent = _add(_mul(dilation[a], w_shape[2 + a] - 1, "dilation * (kernel - 1)", op), 1, "kernel extent", op)
        twice_pad = _mul(2, pad[a], "2 * pad", op)
        full.append(_add(_add(span, extent, "Deconvolution top size", op), -twice_pad, "Deconvolution top size", op))
    check(full[0] >= 1, op, lambda: f"Caffe top size {full[0]}x{full[1]} is empty for bottom {list(x_shape)}, "
          f"weight {list(w_shape)}, stride {list(stride)}, pad {list(pad)}, dilation {list(dilation)}")
    check(full[1] >= 1, op, lambda: f"Caffe top size {full[0]}x{full[1]} is empty for bottom {list(x_shape)}, "
          f"weight {list(w_shape)}, stride {list(stride)}, pad {list(pad)}, dilation {list(dilation)}")
    oh, ow = (full[0], full[1]) if out_size is None else (out_size[0], out_size[1])
    for a, o in enumerate((oh, ow)):
        check(offsets[a] + o <= full[a], op, lambda: f"crop window offsets ({offsets[0]}, {offsets[1]}) size "
              f"{oh}x{ow} does not fit in the {full[0]}x{full[1]} Caffe top (Caffe Crop requires offset + size "
              "<= bottom size)")
    return full[0], full[1], oh, ow, cout


def check_bias(bias, cout, op: str) -> None:
    if bias is not None:
        check(bias.dim() == 1 and bias.shape[0] == cout, op,
              lambda: f"bias must have shape ({cout},) (num_output), got {list(bias.shape)}")


def crop_geometry(op: str, a_shape, b_shape, offsets) -> None:
    """Checks a crop_sum as csrc/ops_common.h crop_geom does."""
    check_int_pair(offsets, 0, "offsets", op)
    check(len(a_shape) == 4 and len(b_shape) == 4 and a_shape[0] == b_shape[0] and a_shape[1] == b_shape[1],
          op, lambda: f"bottoms must be 4-D with the same N, C; got {list(a_shape)} and {list(b_shape)}")
    check_shape(a_shape, "first bottom (a)", op)
    check_shape(b_shape, "second bottom (b)", op)
    for a in range(2):
        check(offsets[a] + a_shape[2 + a] <= b_shape[2 + a], op,
              lambda: f"crop window offsets ({offsets[0]}, {offsets[1]}) size {a_shape[2]}x{a_shape[3]} does not "
              f"fit in the {b_shape[2]}x{b_shape[3]} bottom (Caffe Crop requires offset + size <= bottom size)")
