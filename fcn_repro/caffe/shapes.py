"""Caffe's shape rules, written once (torch-free).

* Output sizes: every output-size formula of the layers we build; the layers,
  the fast path, the ops' shape checks (fake kernels included) and the
  exporters read these functions instead of writing the arithmetic again.
  They take plain ints (or symbolic ints: only ``+ - * //`` and comparisons
  are used).
* Window parameters: how a Convolution/Deconvolution/Pooling layer's kernel,
  stride, pad and dilation are spelled in a prototxt (:func:`conv_window`,
  :func:`pool_window`), as :class:`Window` records.
* Net state rules: Caffe's include/exclude filtering by phase, level and
  stage (:func:`layer_included`).

Errors are raised through an ``error`` callable (message -> exception) so
that the net builder can name its file and layer; the default raises
:class:`ShapeRuleError` (a ``ValueError``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from fcn_repro.errors import FcnReproError

__all__ = ["ShapeRuleError", "Window", "conv_out", "deconv_out", "caffe_pool_out", "torch_pool_out",
           "conv_window", "pool_window", "PHASES", "phase_name", "rule_met", "layer_included"]


class ShapeRuleError(FcnReproError):
    """A layer or rule that breaks one of Caffe's shape or state rules."""


ErrorFn = Callable[[str], Exception]


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


# ------------------------------------------------------------ window parameters

@dataclass(frozen=True)
class Window:
    """The sliding window of a Convolution, Deconvolution or Pooling layer: (h, w) pairs.

    ``kernel`` is None for global pooling (the window is the whole map).
    ``extent`` is the dilated kernel, d(k-1)+1, per axis.
    """
    kernel: Optional[tuple]
    stride: tuple
    pad: tuple
    dilation: tuple = (1, 1)

    @property
    def extent(self) -> tuple:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))


def _pair(p: Any, name: str, hname: str, wname: str, default: Optional[int], error: ErrorFn,
          repeated: bool = True) -> tuple:
    vals = [int(v) for v in p.getall(name)] if repeated else ([int(p.get(name))] if p.has(name) else [])
    if p.has(hname) or p.has(wname):
        if not (p.has(hname) and p.has(wname)):
            raise error(f"give both {hname} and {wname}, not just one")
        if vals:
            raise error(f"give either {name} or {hname}/{wname}, not both")
        return int(p.get(hname)), int(p.get(wname))
    if not vals:
        if default is None:
            raise error(f"{name} (or {hname} and {wname}) is required")
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise error(f"{name} has {len(vals)} values; a 2-D layer takes 1 or 2")


def conv_window(p: Any, error: ErrorFn = ShapeRuleError) -> Window:
    """The window of a ConvolutionParameter message (Convolution and Deconvolution).

    Caffe accepts two spellings: the repeated ``kernel_size``/``pad``/
    ``stride``/``dilation`` (one value for every spatial axis, or one per
    axis) and the 2-D-only ``kernel_h``/``kernel_w`` (``pad_h``/``pad_w``,
    ``stride_h``/``stride_w``), never both for the same quantity.
    """
    kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", None, error)
    stride = _pair(p, "stride", "stride_h", "stride_w", 1, error)
    pad = _pair(p, "pad", "pad_h", "pad_w", 0, error)
    dil = [int(v) for v in p.getall("dilation")]
    if len(dil) > 2:
        raise error(f"dilation has {len(dil)} values; a 2-D layer takes 1 or 2")
    dilation = (1, 1) if not dil else (dil[0], dil[-1])
    if min(kernel) < 1:
        raise error(f"kernel size must be positive, got {kernel}")
    if min(stride) < 1:
        raise error(f"stride must be positive, got {stride}")
    if min(pad) < 0 or min(dilation) < 1:
        raise error(f"pad must be >= 0 and dilation >= 1, got pad {pad}, dilation {dilation}")
    return Window(kernel, stride, pad, dilation)


def pool_window(p: Any, error: ErrorFn = ShapeRuleError) -> Window:
    """The window of a PoolingParameter message (``kernel`` None with global_pooling)."""
    global_pool = bool(p.get("global_pooling", False))
    if global_pool:
        if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
            raise error("with global_pooling: true the kernel size cannot be specified")
        kernel = None
    else:
        kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", None, error, repeated=False)
        if min(kernel) < 1:
            raise error(f"kernel size must be positive, got {kernel}")
    stride = _pair(p, "stride", "stride_h", "stride_w", 1, error, repeated=False)
    pad = _pair(p, "pad", "pad_h", "pad_w", 0, error, repeated=False)
    if min(stride) < 1 or min(pad) < 0:
        raise error(f"need stride >= 1 and pad >= 0, got stride {stride}, pad {pad}")
    if global_pool and (pad != (0, 0) or stride != (1, 1)):
        raise error("with global_pooling: true only pad 0 and stride 1 are supported (as in Caffe)")
    if kernel is not None and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
        # Caffe CHECK_LT(pad, kernel): a window must always touch the image.
        raise error(f"pad {pad} must be smaller than the kernel {kernel}")
    return Window(kernel, stride, pad)


# ------------------------------------------------------------ net state rules

PHASES = ("TRAIN", "TEST")  # caffe.proto Phase: TRAIN = 0, TEST = 1


def phase_name(p: Any, where: str = "phase", error: ErrorFn = ShapeRuleError) -> str:
    """A Phase given by name (``TEST``, any case) or number (0, 1) -> "TRAIN" / "TEST"."""
    if isinstance(p, bool):
        raise error(f"{where}: expected TRAIN or TEST, got {p!r}")
    if isinstance(p, int):
        if p in (0, 1):
            return PHASES[p]
        raise error(f"{where}: expected TRAIN (0) or TEST (1), got {p!r}")
    s = str(p).upper()
    if s not in PHASES:
        raise error(f"{where}: expected TRAIN or TEST, got {p!r}")
    return s


def rule_met(rule: Any, phase: str, level: int = 0, stages: Iterable[str] = (),
             error: ErrorFn = ShapeRuleError) -> bool:
    """Caffe's Net::StateMeetsRule for one NetStateRule message."""
    stages = set(stages)
    if rule.has("phase") and phase_name(rule.get("phase"), "NetStateRule.phase", error) != phase:
        return False
    if rule.has("min_level") and level < int(rule.get("min_level")):
        return False
    if rule.has("max_level") and level > int(rule.get("max_level")):
        return False
    if any(str(s) not in stages for s in rule.getall("stage")):
        return False
    if any(str(s) in stages for s in rule.getall("not_stage")):
        return False
    return True


def layer_included(layer: Any, phase: str, level: int = 0, stages: Iterable[str] = (),
                   error: ErrorFn = ShapeRuleError) -> bool:
    """Caffe's Net::FilterNet rule for one LayerParameter: any include rule met, or no exclude rule met.

    ``phase``: "TRAIN"/"TEST" (or 0/1); ``level`` and ``stages``: the rest of
    the NetState. A layer with both include and exclude rules is an error.
    """
    phase = phase_name(phase, "phase", error)
    inc, exc = layer.getall("include"), layer.getall("exclude")
    if inc and exc:
        raise error(f"layer {layer.get('name', '?')!r}: specify either include or exclude rules, not both")
    st = set(str(s) for s in stages)
    if inc:
        return any(rule_met(r, phase, level, st, error) for r in inc)
    return not any(rule_met(r, phase, level, st, error) for r in exc)
