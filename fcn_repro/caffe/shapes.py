"""Caffe's shape rules, written once (torch-free).

Every output-size formula of the layers we build lives here; the layers, the
fast path, the ops' shape checks (fake kernels included) and the exporters read
these functions instead of writing the arithmetic again. They take plain ints
(or symbolic ints: only ``+ - * //`` and comparisons are used).
"""
from __future__ import annotations

from typing import Callable, Optional


def conv_out(size: Optional[int], k: int, s: int, p: int, d: int) -> Optional[int]:
    """Caffe Convolution output size: floor((H + 2p - (d(k-1)+1)) / s) + 1 (None in, None out)."""
    if size is None:
        return None
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def deconv_out(size: Optional[int], k: int, s: int, p: int, d: int) -> Optional[int]:
    """Caffe Deconvolution output size: s(H-1) + d(k-1) + 1 - 2p (None in, None out)."""
    if size is None:
        return None
    return s * (size - 1) + d * (k - 1) + 1 - 2 * p


def caffe_pool_out(size: int, k: int, s: int, p: int, ceil: bool, any_pad: bool,
                   min_: Callable = min) -> int:
    """Caffe's pooled size along one axis (``any_pad``: the layer pads some axis).

    ``min_``: the minimum of two sizes; a tracer passes its symbolic minimum
    (``torch.sym_min``) so that no branch on the input size is taken.
    """
    num = size + 2 * p - k
    # ceil(num / s) written as a floor of non-negative operands: a traced
    # graph evaluates // in the runtime, and ONNX's integer Div truncates
    # toward zero where Python floors (they agree only for non-negative values).
    out = ((num + s - 1) // s if ceil else num // s) + 1
    if any_pad:
        # Caffe: with padding, the last pooling window must start strictly
        # inside the image (or the left padding), (out-1)*s < size + p; otherwise
        # it is dropped. As a bound: out <= ceil((size + p) / s), and since
        # p < k the unclipped out exceeds that bound by at most one window.
        out = min_(out, (size + p + s - 1) // s)
    return out


def torch_pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """The output size PyTorch's pooling kernels choose (pooling_output_shape)."""
    out = (size + 2 * p - (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out
