"""fcn_repro.ops: the C++ kernels against the pure-PyTorch reference.

* float64, every stride/pad/dilation/group combination of the zoo fixture's
  deconv_g / deconv_full / deconv_dil layers and of the FCN upsampling layers,
  plus kernels smaller than the stride (top rows nobody reaches), dilation
  sharing a factor with the stride, odd and rectangular sizes, batch > 1,
  non-contiguous inputs: forward values and all gradients.
* deconv2d_crop equals deconv2d sliced, bit for bit.
* The diagonal fast path: taken for a bilinear-diagonal weight and gives the
  general path's numbers bit for bit; not taken when any off-diagonal element
  is non-zero (a forced diagonal path would give different numbers there).
* gradcheck, torch.library.opcheck, torch.compile, errors, the fallback.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcn_repro.ops as ops
from fcn_repro.ops import _ext
from fcn_repro.ops.reference import deconv_out_size

needs_ext = pytest.mark.skipif(not _ext.AVAILABLE, reason=f"extension not built: {_ext.LOAD_ERROR}")

# name: (Cin, Cout, kernel, stride, pad, dilation, groups, bias)
CONFIGS = {
    "zoo_deconv_g": (4, 4, (4, 4), (2, 2), (1, 1), (1, 1), 4, True),
    "zoo_deconv_full": (4, 5, (5, 5), (3, 3), (0, 0), (1, 1), 1, False),
    "zoo_deconv_dil": (4, 2, (3, 4), (2, 3), (1, 2), (2, 2), 1, True),
    "fcn_k4s2": (5, 5, (4, 4), (2, 2), (0, 0), (1, 1), 1, False),
    "fcn_k16s8": (3, 3, (16, 16), (8, 8), (0, 0), (1, 1), 1, False),
    "alexnet_k63s32": (2, 2, (63, 63), (32, 32), (0, 0), (1, 1), 1, False),
    "kernel_lt_stride": (3, 2, (2, 3), (4, 5), (0, 1), (1, 1), 1, True),
    "dil_gcd_groups": (4, 6, (3, 3), (4, 2), (2, 1), (2, 4), 2, True),
    "stride1_bigpad": (2, 3, (5, 3), (1, 1), (3, 1), (1, 2), 1, True),
    # dilation coprime to the stride, no pad: top rows before their first tap
    # (deconv_taps' q < 0 exit) and rows whose taps all read past the bottom
    # (the exit after skipping)
    "s3_d2_p0": (2, 3, (3, 3), (3, 3), (0, 0), (2, 2), 1, True),
}
SIZES = [(2, 7, 5), (3, 1, 1), (1, 3, 8)]  # (N, H, W): odd, 1x1, rectangular


def make(cfg, n, h, w, dtype=torch.float64, seed=0):
    cin, cout, k, s, p, d, g, has_bias = cfg
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, dtype=dtype, generator=gen)
    wt = torch.randn(cin, cout // g, *k, dtype=dtype, generator=gen)
    b = torch.randn(cout, dtype=dtype, generator=gen) if has_bias else None
    return x, wt, b, s, p, d, g


def full_size(x, wt, s, p, d):
    return tuple(deconv_out_size(x.shape[2 + i], wt.shape[2 + i], s[i], p[i], d[i]) for i in range(2))


def valid(cfg, h, w):
    cin, cout, k, s, p, d, g, _ = cfg
    return all(deconv_out_size(n, k[i], s[i], p[i], d[i]) >= 1 for i, n in enumerate((h, w)))


def windows(oh, ow):
    """Crop windows: whole top, an inner one, one touching the far corner, 1x1."""
    out = [((0, 0), (oh, ow))]
    if oh > 2 and ow > 2:
        out.append(((1, 2 if ow > 3 else 1), (oh - 2, ow - 3 if ow > 3 else ow - 2)))
    out.append(((oh // 2, ow // 3), (oh - oh // 2, ow - ow // 3)))
    out.append(((oh - 1, 0), (1, 1)))
    return out


def grads(fn, tensors, gy):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    out = fn(*leaves)
    out.backward(gy)
    return out.detach(), [l.grad if l is not None else None for l in leaves]


def assert_close64(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= 1e-12 * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


@needs_ext
@pytest.mark.parametrize("name", list(CONFIGS))
def test_deconv2d_matches_reference_float64(name):
    cfg = CONFIGS[name]
    for n, h, w in SIZES:
        if not valid(cfg, h, w):
            continue
        x, wt, b, s, p, d, g = make(cfg, n, h, w)
        y = ops.deconv2d(x, wt, b, s, p, d, g)
        assert_close64(y, ops.deconv2d_ref(x, wt, b, s, p, d, g), f"{name} {n}x{h}x{w} forward")
        gy = torch.randn_like(y)
        _, got = grads(lambda x_, w_, b_: ops.deconv2d(x_, w_, b_, s, p, d, g), (x, wt, b), gy)
        _, ref = grads(lambda x_, w_, b_: ops.deconv2d_ref(x_, w_, b_, s, p, d, g), (x, wt, b), gy)
        for gname, a, r in zip(("bottom", "weight", "bias"), got, ref):
            if r is not None:
                assert_close64(a, r, f"{name} {n}x{h}x{w} grad {gname}")


@needs_ext
@pytest.mark.parametrize("name", list(CONFIGS))
def test_deconv2d_crop_matches_reference_float64(name):
    cfg = CONFIGS[name]
    n, h, w = 2, 5, 4
    x, wt, b, s, p, d, g = make(cfg, n, h, w, seed=1)
    oh, ow = full_size(x, wt, s, p, d)
    full = ops.deconv2d(x, wt, b, s, p, d, g)
    for off, size in windows(oh, ow):
        y = ops.deconv2d_crop(x, wt, b, s, p, d, g, off, size)
        ref = ops.deconv2d_crop_ref(x, wt, b, s, p, d, g, off, size)
        assert_close64(y, ref, f"{name} window {off} {size}")
        # same kernel math, same summation order: exactly the slice of the full top
        assert torch.equal(y, full[:, :, off[0]:off[0] + size[0], off[1]:off[1] + size[1]]), \
            f"{name} window {off} {size}: deconv2d_crop differs from deconv2d sliced"
        gy = torch.randn_like(y)
        _, got = grads(lambda x_, w_, b_: ops.deconv2d_crop(x_, w_, b_, s, p, d, g, off, size), (x, wt, b), gy)
        _, ref_g = grads(lambda x_, w_, b_: ops.deconv2d_crop_ref(x_, w_, b_, s, p, d, g, off, size),
                         (x, wt, b), gy)
        for gname, a, r in zip(("bottom", "weight", "bias"), got, ref_g):
            if r is not None:
                assert_close64(a, r, f"{name} window {off} {size} grad {gname}")


@needs_ext
def test_deconv2d_non_contiguous_inputs():
    cfg = CONFIGS["zoo_deconv_dil"]
    x, wt, b, s, p, d, g = make(cfg, 2, 9, 6, seed=2)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, strides swapped
    assert not xt.is_contiguous()
    xs = torch.randn(2, 4, 18, 6, dtype=torch.float64)[:, :, ::2]  # strided rows
    wt_nc = wt.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not wt_nc.is_contiguous()
    for xi in (xt, xs):
        y = ops.deconv2d_crop(xi, wt_nc, b, s, p, d, g, (1, 1), (10, 12))
        assert_close64(y, ops.deconv2d_crop_ref(xi.contiguous(), wt, b, s, p, d, g, (1, 1), (10, 12)),
                       "non-contiguous forward")
        gy = torch.randn(40, 12, 2, 10, dtype=torch.float64).permute(2, 3, 0, 1)[:, :2]  # non-contiguous grad
        gy = gy[:, :, :10, :12]
        _, got = grads(lambda x_, w_, b_: ops.deconv2d_crop(x_, w_, b_, s, p, d, g, (1, 1), (10, 12)),
                       (xi, wt_nc, b), gy)
        _, ref = grads(lambda x_, w_, b_: ops.deconv2d_crop_ref(x_, w_, b_, s, p, d, g, (1, 1), (10, 12)),
                       (xi, wt, b), gy)
        for a, r in zip(got, ref):
            assert_close64(a, r, "non-contiguous grads")


@needs_ext
def test_float32_close_to_float64_reference():
    for name in ("zoo_deconv_g", "fcn_k16s8", "dil_gcd_groups"):
        x, wt, b, s, p, d, g = make(CONFIGS[name], 2, 6, 7, seed=3)
        ref = ops.deconv2d_ref(x, wt, b, s, p, d, g)
        y = ops.deconv2d(x.float(), wt.float(), None if b is None else b.float(), s, p, d, g)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


# ---- crop_sum ---------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("coeffs", [None, (1.0, 1.0), (0.5, -2.0), (0.0, 3.0)])
def test_crop_sum_matches_reference(coeffs):
    gen = torch.Generator().manual_seed(4)
    for (n, c, h, w), (hb, wb), off in [((2, 3, 5, 7), (9, 12), (2, 5)), ((1, 4, 1, 1), (1, 3), (0, 2)),
                                        ((3, 2, 6, 4), (6, 4), (0, 0)), ((1, 21, 34, 34), (44, 44), (5, 5))]:
        a = torch.randn(n, c, h, w, dtype=torch.float64, generator=gen)
        b = torch.randn(n, c, hb, wb, dtype=torch.float64, generator=gen)
        y = ops.crop_sum(a, b, off, coeffs)
        ref = ops.crop_sum_ref(a, b, off, coeffs)
        assert torch.equal(y, ref), f"crop_sum {tuple(a.shape)} {tuple(b.shape)} {off} {coeffs}"
        gy = torch.randn_like(y)
        _, got = grads(lambda a_, b_: ops.crop_sum(a_, b_, off, coeffs), (a, b), gy)
        _, refg = grads(lambda a_, b_: ops.crop_sum_ref(a_, b_, off, coeffs), (a, b), gy)
        for gname, x_, r in zip(("a", "b"), got, refg):
            assert torch.equal(x_, r), f"crop_sum grad {gname} {off} {coeffs}"


@needs_ext
def test_crop_sum_int_offset_non_contiguous_and_one_sided_grads():
    a = torch.randn(2, 5, 4, 3, dtype=torch.float64).transpose(2, 3)  # (2, 5, 3, 4), non-contiguous
    b = torch.randn(2, 5, 9, 10, dtype=torch.float64)[:, :, :, 1:]    # (2, 5, 9, 9), non-contiguous
    assert torch.equal(ops.crop_sum(a, b, 3), a + b[:, :, 3:6, 3:7])
    for need_a, need_b in ((True, False), (False, True)):
        a_ = a.detach().clone().requires_grad_(need_a)
        b_ = b.detach().clone().requires_grad_(need_b)
        out = ops.crop_sum(a_, b_, (3, 3), (2.0, 0.25))
        gy = torch.randn_like(out)
        out.backward(gy)
        if need_a:
            assert torch.equal(a_.grad, 2.0 * gy) and b_.grad is None
        else:
            expect = torch.zeros_like(b)
            expect[:, :, 3:6, 3:7] = 0.25 * gy
            assert torch.equal(b_.grad, expect) and a_.grad is None


@needs_ext
def test_crop_sum_float32_exact_sum():
    a = torch.randn(1, 21, 70, 70)
    b = torch.randn(1, 21, 88, 88)
    assert torch.equal(ops.crop_sum(a, b, (9, 9)), a + b[:, :, 9:79, 9:79])


# ---- the diagonal fast path ---------------------------------------------------

def bilinear_diag(c, k, dtype):
    """FCN's upsampling weight: a bilinear kernel on the channel diagonal, zero elsewhere."""
    f = (k + 1) // 2
    center = f - 1 if k % 2 == 1 else f - 0.5
    og = np.ogrid[:k, :k]
    filt = (1 - abs(og[0] - center) / f) * (1 - abs(og[1] - center) / f)
    w = torch.zeros(c, c, k, k, dtype=dtype)
    w[range(c), range(c)] = torch.from_numpy(filt).to(dtype)
    return w


def path(x, w, off, size, s, which):
    return torch.ops.fcn_repro._deconv2d_crop_path(x, w, None, [s, s], [0, 0], [1, 1], 1, list(off),
                                                   list(size), which)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k,s,off,size", [(16, 8, (31, 31), (30, 37)), (4, 2, (0, 0), (12, 14))])
def test_diagonal_fast_path_same_numbers(dtype, k, s, off, size):
    c = 6
    w = bilinear_diag(c, k, dtype)
    x = torch.randn(2, c, 7, 8, dtype=dtype)
    assert ops.weight_is_diagonal(w)
    auto = ops.deconv2d_crop(x, w, None, s, 0, 1, 1, off, size)
    general = path(x, w, off, size, s, 1)
    forced = path(x, w, off, size, s, 2)
    assert torch.equal(auto, general), "diagonal fast path differs from the general path"
    assert torch.equal(forced, general)
    assert_close = torch.testing.assert_close
    assert_close(auto.double(), ops.deconv2d_crop_ref(x.double(), w.double(), None, s, 0, 1, 1, off, size),
                 rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-5 if dtype == torch.float32 else 1e-12)
    # the bottom gradient takes the diagonal path too
    gy = torch.randn_like(auto)
    _, got = grads(lambda x_: ops.deconv2d_crop(x_, w, None, s, 0, 1, 1, off, size), (x,), gy)
    _, ref = grads(lambda x_: ops.deconv2d_crop_ref(x_, w, None, s, 0, 1, 1, off, size), (x,), gy)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-5 if dtype == torch.float32 else 1e-12)


@needs_ext
def test_off_diagonal_noise_does_not_take_fast_path():
    c, k, s, off, size = 5, 16, 8, (31, 31), (30, 40)
    x = torch.randn(1, c, 7, 8)
    base = bilinear_diag(c, k, torch.float32)
    noisy = base + 1e-3 * torch.randn_like(base)  # like the fcn8s fixture's weights
    one = base.clone()
    one[c - 1, 0, k - 1, k - 1] = 1e-7             # a single off-diagonal element, scanned last
    for w in (noisy, one):
        assert not ops.weight_is_diagonal(w)
        auto = ops.deconv2d_crop(x, w, None, s, 0, 1, 1, off, size)
        general = path(x, w, off, size, s, 1)
        forced_diag = path(x, w, off, size, s, 2)
        # the forced diagonal path drops the off-diagonal terms: had the auto path
        # taken it, auto would differ from the general path
        assert not torch.equal(forced_diag, general)
        assert torch.equal(auto, general)
    # signed zero off the diagonal is still zero; NaN is not
    negzero = base.clone()
    negzero[0, 1] = -0.0
    assert ops.weight_is_diagonal(negzero)
    nan = base.clone()
    nan[2, 1, 0, 0] = float("nan")
    assert not ops.weight_is_diagonal(nan)
    assert torch.isnan(ops.deconv2d(x, nan, None, s)[0, 1]).any()
    # not eligible: groups != 1 or Cin != Cout
    assert not ops.weight_is_diagonal(torch.zeros(4, 1, 3, 3), groups=4)
    assert not ops.weight_is_diagonal(torch.zeros(4, 5, 3, 3))
    with pytest.raises(ValueError, match="diagonal path needs groups == 1"):
        torch.ops.fcn_repro._deconv2d_crop_path(torch.zeros(1, 4, 3, 3), torch.zeros(4, 5, 3, 3), None,
                                                [1, 1], [0, 0], [1, 1], 1, [0, 0], [5, 5], 2)


# ---- autograd, opcheck, compile -------------------------------------------------

@needs_ext
def test_gradcheck():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True)
    # fast_mode: checks random projections of the Jacobian (the full one costs
    # one call per input element); the float64 comparisons above cover every element.
    assert torch.autograd.gradcheck(lambda x_, w_, b_: ops.deconv2d(x_, w_, b_, (2, 3), (1, 0), (2, 1), 2),
                                    (x, w, b), fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: ops.deconv2d_crop(x_, w_, b_, (2, 3), (1, 0), (2, 1), 2, (1, 2), (4, 5)), (x, w, b),
        fast_mode=True)
    a = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bb = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a_, b_: ops.crop_sum(a_, b_, (2, 1), (0.5, 2.0)), (a, bb))
    # the diagonal path's bottom gradient
    wd = bilinear_diag(3, 4, torch.float64).requires_grad_(True)
    xd = torch.randn(1, 3, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert ops.weight_is_diagonal(wd)
    assert torch.autograd.gradcheck(lambda x_, w_: ops.deconv2d_crop(x_, w_, None, 2, 0, 1, 1, (1, 1), (5, 6)),
                                    (xd, wd), fast_mode=True)


@needs_ext
def test_gradgradcheck():
    """Second derivatives: the backward ops have autograd formulas of their own (they were
    once treated as constants, with only a UserWarning, and double backward was wrong)."""
    gen = torch.Generator().manual_seed(7)
    r = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)  # noqa: E731
    x, w, b = r(1, 4, 3, 3), r(4, 3, 3, 2), r(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "autograd kernel was not registered" warning either
        assert torch.autograd.gradgradcheck(lambda x_, w_, b_: ops.deconv2d(x_, w_, b_, (2, 3), (1, 0), (2, 1), 2),
                                            (x, w, b))
        assert torch.autograd.gradgradcheck(
            lambda x_, w_, b_: ops.deconv2d_crop(x_, w_, b_, (2, 1), (1, 0), (1, 1), 2, (1, 1), (3, 3)), (x, w, b))
        # a non-linear use: the Hessian of a squared deconvolution couples x and w
        assert torch.autograd.gradgradcheck(lambda x_, w_: ops.deconv2d(x_, w_, None, 2, 0, 1, 2) ** 2, (x, w))
        a, bb = r(1, 2, 3, 4), r(1, 2, 6, 5)
        assert torch.autograd.gradgradcheck(lambda a_, b_: ops.crop_sum(a_, b_, (2, 1), (0.5, 2.0)) ** 2, (a, bb))
        assert torch.autograd.gradgradcheck(lambda a_, b_: ops.crop_sum(a_, b_, (2, 1)) * b_[:, :, :3, :4], (a, bb))


OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@needs_ext
def test_opcheck():
    gen = torch.Generator().manual_seed(6)
    r = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen)  # noqa: E731
    x, w, b = r(2, 4, 3, 5).requires_grad_(), r(4, 3, 3, 2).requires_grad_(), r(6).requires_grad_()
    fr = torch.ops.fcn_repro
    cases = [
        (fr.deconv2d.default, (x, w, b, [2, 3], [1, 0], [2, 1], 2)),
        (fr.deconv2d.default, (x.detach(), w, None, [1, 1], [0, 0], [1, 1], 2)),
        (fr.deconv2d_crop.default, (x, w, b, [2, 3], [1, 0], [2, 1], 2, [1, 2], [4, 5])),
        (fr.crop_sum.default, (r(2, 3, 3, 4).requires_grad_(), r(2, 3, 6, 5).requires_grad_(), [2, 1], 0.5, 2.0)),
        (fr.crop_sum.default, (r(2, 3, 3, 4), r(2, 3, 6, 5).requires_grad_(), [0, 1])),
        (fr._deconv2d_grad_input.default, (r(2, 6, 4, 5), w.detach(), [3, 5], [2, 3], [1, 0], [2, 1], 2, [1, 2])),
        (fr._deconv2d_grad_weight.default, (r(2, 6, 4, 5), x.detach(), [3, 2], [2, 3], [1, 0], [2, 1], 2, [1, 2])),
        (fr._deconv2d_grad_bias.default, (r(2, 6, 4, 5),)),
        (fr._crop_sum_backward.default, (r(2, 3, 3, 4), [6, 5], [2, 1], 0.5, 2.0)),
        # the backward ops are differentiable too (double backward)
        (fr._deconv2d_grad_input.default, (r(2, 6, 4, 5).requires_grad_(), w, [3, 5], [2, 3], [1, 0], [2, 1], 2,
                                           [1, 2])),
        (fr._deconv2d_grad_weight.default, (r(2, 6, 4, 5).requires_grad_(), x, [3, 2], [2, 3], [1, 0], [2, 1], 2,
                                            [1, 2])),
        (fr._deconv2d_grad_bias.default, (r(2, 6, 4, 5).requires_grad_(),)),
        (fr._crop_sum_backward.default, (r(2, 3, 3, 4).requires_grad_(), [6, 5], [2, 1], 0.5, 2.0)),
        (fr._deconv2d_crop_path.default, (x.detach(), w.detach(), None, [2, 3], [1, 0], [2, 1], 2, [1, 2], [4, 5], 1)),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args, test_utils=OPCHECK_TESTS)
        assert all(v == "SUCCESS" for v in result.values()), f"{op}: {result}"


@needs_ext
def test_torch_compile_fullgraph():
    w8 = bilinear_diag(3, 16, torch.float32)
    w2 = bilinear_diag(3, 4, torch.float32)

    def head(score_fr, score_pool4):  # the FCN-16s skip: upscore2, crop+sum, upscore16-like crop
        up = ops.deconv2d(score_fr, w2, None, 2)
        fuse = ops.crop_sum(up, score_pool4, 5)
        return ops.deconv2d_crop(fuse, w8, None, 8, 0, 1, 1, (7, 7), (40, 50))

    s, p4 = torch.randn(1, 3, 4, 5, requires_grad=True), torch.randn(1, 3, 20, 22)
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    y, yc = head(s, p4), compiled(s, p4)
    assert torch.equal(y, yc)
    g, = torch.autograd.grad(y.sum(), s)
    gc, = torch.autograd.grad(compiled(s, p4).sum(), s)
    assert torch.equal(g, gc)


# ---- errors, fallback, extension_info ------------------------------------------------

@needs_ext
def test_errors_name_the_problem():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 4, 4)
    with pytest.raises(ValueError, match="does not fit"):
        ops.deconv2d_crop(x, w, None, 2, 0, 1, 1, (3, 0), (10, 12))  # top is 12x12
    with pytest.raises(ValueError, match="weight.shape\\[0\\] == channels"):
        ops.deconv2d(torch.randn(1, 3, 5, 5), w)
    with pytest.raises(ValueError, match="bias must have shape \\(2,\\)"):
        ops.deconv2d(x, w, torch.zeros(3))
    with pytest.raises(ValueError, match="bottom is Float but weight is Double"):
        ops.deconv2d(x, w.double())
    with pytest.raises(ValueError, match="does not fit in the 6x6 bottom"):
        ops.crop_sum(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 6, 6), (3, 0))
    with pytest.raises(ValueError, match="same N, C"):
        ops.crop_sum(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 6, 6), 0)
    with pytest.raises(ValueError, match="out_size"):
        ops.deconv2d_crop(x, w, None, 2, 0, 1, 1, (0, 0))


def test_reference_errors():
    with pytest.raises(ValueError, match="does not fit"):
        ops.crop_sum_ref(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 6, 6), (3, 0))
    with pytest.raises(ValueError, match="does not fit"):
        ops.deconv2d_crop_ref(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 4, 4), None, 2, 0, 1, 1, (0, 1), (12, 12))


def test_fallback_warns_and_matches_reference(monkeypatch):
    x, w = torch.randn(1, 3, 4, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    a, b = torch.randn(1, 3, 4, 5), torch.randn(1, 3, 7, 7)
    monkeypatch.setattr(_ext, "AVAILABLE", False)
    monkeypatch.setattr(_ext, "LOAD_ERROR", "simulated: not built")
    with pytest.warns(ops.FallbackWarning, match="simulated: not built"):
        y = ops.deconv2d(x, w, None, 2, 1)
    assert torch.equal(y, F.conv_transpose2d(x, w, None, 2, 1))
    with pytest.warns(ops.FallbackWarning):
        assert torch.equal(ops.crop_sum(a, b, (1, 2)), a + b[:, :, 1:5, 2:7])
    with pytest.warns(ops.FallbackWarning):
        y = ops.deconv2d_crop(x, w, None, 2, 1, 1, 1, (1, 1), (3, 4))
    assert torch.equal(y, F.conv_transpose2d(x, w, None, 2, 1)[:, :, 1:4, 1:5])
    info = ops.extension_info()
    assert info["fallback"] and not info["cpu"] and not info["cuda"]


@needs_ext
def test_unsupported_dtype_falls_back_with_warning():
    a, b = torch.randn(1, 2, 3, 3).half(), torch.randn(1, 2, 5, 5).half()
    with pytest.warns(ops.FallbackWarning, match="float16"):
        y = ops.crop_sum(a, b, 1)
    assert y.dtype == torch.float16 and torch.equal(y, a + b[:, :, 1:4, 1:4])


def test_extension_built():
    info = ops.extension_info()
    assert set(info) >= {"cpu", "cuda", "fallback", "path", "error"}
    assert info["cpu"] and not info["fallback"], (
        f"fcn_repro._C is not usable ({info['error']}); build it with "
        "`pip install --no-build-isolation -e .`")
    assert info["path"] and info["path"].endswith(".so")
    assert info["cuda"] == _ext.has_kernel("deconv2d", "CUDA")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ops.FallbackWarning)  # the CPU path must not fall back
        ops.deconv2d(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2))


@pytest.mark.parametrize("available", [True, False])
def test_meta_tensors_give_shapes_without_warning(monkeypatch, available):
    """Building a full-width net on the meta device (shapes only) goes through
    the registered fake kernels, or the reference without the extension, and
    warns of no fallback: there are no numbers to differ."""
    if available and not _ext.AVAILABLE:
        pytest.skip(f"extension not built: {_ext.LOAD_ERROR}")
    monkeypatch.setattr(_ext, "AVAILABLE", available)
    meta = dict(device="meta")
    x, w, bias = torch.empty(2, 21, 16, 16, **meta), torch.empty(21, 1, 4, 4, **meta), torch.empty(21, **meta)
    a, b = torch.empty(1, 21, 34, 34, **meta), torch.empty(1, 21, 44, 44, **meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ops.FallbackWarning)
        y = ops.deconv2d(x, w, bias, 2, 0, 1, 21)
        z = ops.deconv2d_crop(x, w, None, 2, 0, 1, 21, (5, 3), (20, 25))
        s = ops.crop_sum(a, b, (5, 5))
    assert y.device.type == z.device.type == s.device.type == "meta"
    assert y.shape == (2, 21, 34, 34) and z.shape == (2, 21, 20, 25) and s.shape == (1, 21, 34, 34)
