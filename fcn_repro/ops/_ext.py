"""Loads the compiled extension fcn_repro._C and registers the Python side of
its ops: autograd formulas (torch.library.register_autograd; the backward ops
have their own, so second derivatives are right) and fake (meta)
implementations (torch.library.register_fake), so that autograd,
torch.library.opcheck and torch.compile work with torch.ops.fcn_repro.*.

If the extension cannot be imported (not built, built against another torch),
``AVAILABLE`` is False, ``LOAD_ERROR`` says why, and the public functions of
fcn_repro.ops fall back to the pure-PyTorch reference with a FallbackWarning.
"""
from __future__ import annotations

import warnings

import torch

from .checks import (_KERNEL_DTYPES, check, check_bias, check_int, check_int_pair, check_shape, check_tensors,
                     crop_geometry, deconv_geometry)

__all__ = ["AVAILABLE", "LOAD_ERROR", "BACKENDS", "FallbackWarning", "has_kernel", "use_extension"]


class FallbackWarning(RuntimeWarning):
    """fcn_repro.ops is running the pure-PyTorch reference instead of the extension."""


_C = None
LOAD_ERROR: str | None = None
try:  # torch is imported first: the extension links against its libraries
    from fcn_repro import _C  # noqa: F401  (importing runs the op registrations)
except Exception as e:  # ImportError, OSError (undefined symbol: built for another torch)
    LOAD_ERROR = f"cannot import fcn_repro._C: {type(e).__name__}: {e}"

_OPS = ("deconv2d", "deconv2d_crop", "crop_sum", "_deconv2d_grad_input", "_deconv2d_grad_weight",
        "_deconv2d_grad_bias", "_crop_sum_backward")
AVAILABLE = _C is not None and all(hasattr(torch.ops.fcn_repro, op) for op in _OPS)
if _C is not None and not AVAILABLE:
    LOAD_ERROR = (f"{getattr(_C, '__file__', 'fcn_repro._C')} does not define the fcn_repro ops "
                  f"{', '.join(_OPS)}: it was built from older sources; rebuild with "
                  "`pip install --no-build-isolation -e .`")


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered a kernel of fcn_repro::<op> for a backend ("CPU", "CUDA")."""
    if not AVAILABLE:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fcn_repro::{op}", dispatch_key)


# Backends with a kernel for every op, computed once at import: plain Python
# values, so that torch.compile (dynamo) can trace the dispatch decision.
BACKENDS = {dev: AVAILABLE and all(has_kernel(op, dev.upper()) for op in _OPS) for dev in ("cpu", "cuda")}


def use_extension(op: str, t: torch.Tensor) -> bool:
    """True when the extension has kernels for t's device and dtype; else warns
    (FallbackWarning, naming the reason) and returns False so the caller runs the reference."""
    if AVAILABLE and BACKENDS.get(t.device.type, False) and t.dtype in _KERNEL_DTYPES:
        return True
    if t.device.type == "meta":
        # Shapes only (building a full-width net without memory): the fake
        # kernels registered in Python serve the Meta key; without the
        # extension the reference computes the same shapes. Nothing to warn of.
        return AVAILABLE
    if not AVAILABLE:
        reason = LOAD_ERROR
    elif not BACKENDS.get(t.device.type, False):
        reason = f"the extension has no {t.device.type} kernels (built: " \
                 f"{', '.join(k for k, v in BACKENDS.items() if v) or 'none'})"
    else:
        reason = f"the kernels take float32/float64, got {t.dtype}"
    warnings.warn(f"fcn_repro.ops.{op}: using the pure-PyTorch reference ({reason})", FallbackWarning,
                  stacklevel=3)
    return False


def _register() -> None:
    lib = "fcn_repro::"
    ops = torch.ops.fcn_repro

    # ---- fake (shape-only) implementations: the kernels' checks, then the shape -------
    def _deconv_fake(op, x, weight, bias, stride, pad, dilation, groups, offsets, out_size):
        check_tensors(op, ((x, "bottom"), (weight, "weight"), (bias, "bias")))
        *_, oh, ow, cout = deconv_geometry(op, x.shape, weight.shape, stride, pad, dilation, groups, offsets,
                                           out_size)
        check_bias(bias, cout, op)
        return x.new_empty((x.shape[0], cout, oh, ow))

    @torch.library.register_fake(lib + "deconv2d")
    def _deconv2d_fake(x, weight, bias, stride, pad, dilation, groups):
        return _deconv_fake("deconv2d", x, weight, bias, stride, pad, dilation, groups, (0, 0), None)

    @torch.library.register_fake(lib + "deconv2d_crop")
    def _deconv2d_crop_fake(x, weight, bias, stride, pad, dilation, groups, offsets, out_size):
        return _deconv_fake("deconv2d_crop", x, weight, bias, stride, pad, dilation, groups, offsets, out_size)

    @torch.library.register_fake(lib + "_deconv2d_crop_path")
    def _deconv2d_crop_path_fake(x, weight, bias, stride, pad, dilation, groups, offsets, out_size, path):
        op = "_deconv2d_crop_path"
        y = _deconv_fake(op, x, weight, bias, stride, pad, dilation, groups, offsets, out_size)
        check(path in (0, 1, 2), op, lambda: f"path must be 0 (auto), 1 (general) or 2 (diagonal), got {path}")
        check(path != 2 or (groups == 1 and x.shape[1] == y.shape[1]), op,
              lambda: f"the diagonal path needs groups == 1 and Cin == Cout, got groups {groups}, "
              f"Cin {x.shape[1]}, Cout {y.shape[1]}")
        return y

    @torch.library.register_fake(lib + "crop_sum")
    def _crop_sum_fake(a, b, offsets, c0=1.0, c1=1.0):
        check_tensors("crop_sum", ((a, "first bottom (a)"), (b, "second bottom (b)")))
        crop_geometry("crop_sum", a.shape, b.shape, offsets)
        return a.new_empty(a.shape)

    @torch.library.register_fake(lib + "_deconv2d_grad_input")
    def _grad_input_fake(grad, weight, in_size, stride, pad, dilation, groups, offsets):
        op = "_deconv2d_grad_input"
        check_tensors(op, ((grad, "top grad"), (weight, "weight")))
        check_shape(grad.shape, "top grad", op)
        check(weight.dim() == 4, op, lambda: f"weight must be 4-D, got {list(weight.shape)}")
        check_int_pair(in_size, 1, "in_size", op)
        *_, cout = deconv_geometry(op, (grad.shape[0], weight.shape[0], in_size[0], in_size[1]), weight.shape,
                                   stride, pad, dilation, groups, offsets, (grad.shape[2], grad.shape[3]))
        check(grad.shape[1] == cout, op, lambda: f"top grad has {grad.shape[1]} channels, expected {cout}")
        return grad.new_empty((grad.shape[0], weight.shape[0], in_size[0], in_size[1]))

    @torch.library.register_fake(lib + "_deconv2d_grad_weight")
    def _grad_weight_fake(grad, x, kernel, stride, pad, dilation, groups, offsets):
        op = "_deconv2d_grad_weight"
        check_tensors(op, ((grad, "top grad"), (x, "bottom")))
        check_shape(grad.shape, "top grad", op)
        check_shape(x.shape, "bottom", op)
        check_int_pair(kernel, 1, "kernel", op)
        check_int(groups, 1, "groups", op)
        check(grad.shape[1] % groups == 0, op,
              lambda: f"top grad has {grad.shape[1]} channels, not divisible by groups {groups}")
        wshape = (x.shape[1], grad.shape[1] // groups, kernel[0], kernel[1])
        deconv_geometry(op, x.shape, wshape, stride, pad, dilation, groups, offsets, (grad.shape[2], grad.shape[3]))
        check(grad.shape[0] == x.shape[0], op, lambda: f"top grad batch {grad.shape[0]} != bottom batch {x.shape[0]}")
        return grad.new_empty(wshape)

    @torch.library.register_fake(lib + "_deconv2d_grad_bias")
    def _grad_bias_fake(grad):
        check_tensors("_deconv2d_grad_bias", ((grad, "top grad"),))
        check_shape(grad.shape, "top grad", "_deconv2d_grad_bias")
        return grad.new_empty((grad.shape[1],))

    @torch.library.register_fake(lib + "_crop_sum_backward")
    def _crop_sum_backward_fake(grad, b_size, offsets, c0, c1):
        op = "_crop_sum_backward"
        check_tensors(op, ((grad, "top grad"),))
        check_shape(grad.shape, "top grad", op)
        check_int_pair(b_size, 1, "b_size", op)
        b_shape = (grad.shape[0], grad.shape[1], b_size[0], b_size[1])
        crop_geometry(op, grad.shape, b_shape, offsets)
        return grad.new_empty(grad.shape), grad.new_empty(b_shape)

    # ---- autograd ------------------------------------------------------------------
    def _deconv_setup(ctx, inputs, output):
        x, weight, bias, stride, pad, dilation, groups = inputs[:7]
        offsets = inputs[7] if len(inputs) > 7 else (0, 0)
        ctx.args = (list(stride), list(pad), list(dilation), int(groups), list(offsets))
        ctx.in_size = [x.shape[2], x.shape[3]]
        ctx.kernel = [weight.shape[2], weight.shape[3]]
        ctx.has_bias = bias is not None
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(x, weight)

    def _deconv_backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, pad, dilation, groups, offsets = ctx.args
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = ops._deconv2d_grad_input(grad, weight, ctx.in_size, stride, pad, dilation, groups, offsets)
        if ctx.needs_input_grad[1]:
            gw = ops._deconv2d_grad_weight(grad, x, ctx.kernel, stride, pad, dilation, groups, offsets)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = ops._deconv2d_grad_bias(grad)
        return (gx, gw, gb) + (None,) * (ctx.n_inputs - 3)

    torch.library.register_autograd(lib + "deconv2d", _deconv_backward, setup_context=_deconv_setup)
    torch.library.register_autograd(lib + "deconv2d_crop", _deconv_backward, setup_context=_deconv_setup)

    def _crop_sum_setup(ctx, inputs, output):
        a, b, offsets = inputs[:3]
        ctx.c0 = float(inputs[3]) if len(inputs) > 3 else 1.0
        ctx.c1 = float(inputs[4]) if len(inputs) > 4 else 1.0
        ctx.offsets = list(offsets)
        ctx.b_size = [b.shape[2], b.shape[3]]
        ctx.n_inputs = len(inputs)

    def _crop_sum_backward(ctx, grad):
        ga = gb = None
        if ctx.needs_input_grad[1]:
            ga, gb = ops._crop_sum_backward(grad, ctx.b_size, ctx.offsets, ctx.c0, ctx.c1)
            if not ctx.needs_input_grad[0]:
                ga = None
        elif ctx.needs_input_grad[0]:
            ga = grad * ctx.c0  # the same product crop_sum_grad_a computes
        return (ga, gb) + (None,) * (ctx.n_inputs - 2)

    torch.library.register_autograd(lib + "crop_sum", _crop_sum_backward, setup_context=_crop_sum_setup)

    # ---- autograd of the backward ops (double backward) -----------------------------
    # Each backward kernel is linear in its tensors, so its derivatives are the
    # forward op and the other backward op, with the same geometry:
    #   gx = J_x' g:  <u, gx> = <deconv(u, w), g>  ->  d/dg = deconv(u, w), d/dw = grad_weight(g, u)
    #   gw = J_w' g:  <v, gw> = <deconv(x, v), g>  ->  d/dg = deconv(x, v), d/dx = grad_input(g, v)
    # (deconv = deconv2d_crop on the window the forward kept: offsets, grad's H x W).
    def _grad_input_setup(ctx, inputs, output):
        grad, weight, in_size, stride, pad, dilation, groups, offsets = inputs
        ctx.args = (list(stride), list(pad), list(dilation), int(groups), list(offsets))
        ctx.out_size = [grad.shape[2], grad.shape[3]]
        ctx.kernel = [weight.shape[2], weight.shape[3]]
        ctx.save_for_backward(grad, weight)

    def _grad_input_backward(ctx, u):
        grad, weight = ctx.saved_tensors
        stride, pad, dilation, groups, offsets = ctx.args
        d_grad = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad = ops.deconv2d_crop(u, weight, None, stride, pad, dilation, groups, offsets, ctx.out_size)
        if ctx.needs_input_grad[1]:
            d_weight = ops._deconv2d_grad_weight(grad, u, ctx.kernel, stride, pad, dilation, groups, offsets)
        return (d_grad, d_weight) + (None,) * 6

    torch.library.register_autograd(lib + "_deconv2d_grad_input", _grad_input_backward,
                                    setup_context=_grad_input_setup)

    def _grad_weight_setup(ctx, inputs, output):
        grad, x, kernel, stride, pad, dilation, groups, offsets = inputs
        ctx.args = (list(stride), list(pad), list(dilation), int(groups), list(offsets))
        ctx.out_size = [grad.shape[2], grad.shape[3]]
        ctx.in_size = [x.shape[2], x.shape[3]]
        ctx.save_for_backward(grad, x)

    def _grad_weight_backward(ctx, v):
        grad, x = ctx.saved_tensors
        stride, pad, dilation, groups, offsets = ctx.args
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:
            d_grad = ops.deconv2d_crop(x, v, None, stride, pad, dilation, groups, offsets, ctx.out_size)
        if ctx.needs_input_grad[1]:
            d_x = ops._deconv2d_grad_input(grad, v, ctx.in_size, stride, pad, dilation, groups, offsets)
        return (d_grad, d_x) + (None,) * 6

    torch.library.register_autograd(lib + "_deconv2d_grad_weight", _grad_weight_backward,
                                    setup_context=_grad_weight_setup)

    def _grad_bias_setup(ctx, inputs, output):
        ctx.shape = inputs[0].shape

    def _grad_bias_backward(ctx, v):   # gb = grad summed over N, H, W
        return v.reshape(1, -1, 1, 1).expand(ctx.shape)

    torch.library.register_autograd(lib + "_deconv2d_grad_bias", _grad_bias_backward, setup_context=_grad_bias_setup)

    def _crop_sum_backward_setup(ctx, inputs, output):
        grad, b_size, offsets, c0, c1 = inputs
        ctx.offsets, ctx.c0, ctx.c1 = list(offsets), float(c0), float(c1)
        ctx.shape = grad.shape

    def _crop_sum_backward_backward(ctx, ua, ub):
        # (ga, gb) = (c0 grad, c1 grad placed in b's window): d/dgrad = c0 ua + c1 crop(ub), i.e. crop_sum
        oy, ox = ctx.offsets
        h, w = ctx.shape[2], ctx.shape[3]
        if ua is not None and ub is not None:
            d = ops.crop_sum(ua, ub, ctx.offsets, ctx.c0, ctx.c1)
        elif ub is not None:
            d = ub[:, :, oy:oy + h, ox:ox + w] * ctx.c1
        elif ua is not None:
            d = ua * ctx.c0
        else:
            d = None
        return d, None, None, None, None

    torch.library.register_autograd(lib + "_crop_sum_backward", _crop_sum_backward_backward,
                                    setup_context=_crop_sum_backward_setup)


if AVAILABLE:
    _register()
