"""fcn_repro.ops on CUDA: the GPU kernels give the CPU kernels' numbers.

Both backends run the same header functions (gather form, no atomics, the
same summation order) and neither contracts a*b+c into an FMA (the CPU build
uses -ffp-contract=off, nvcc --fmad=false), so the results are expected to be
identical, not merely close. Skipped without a GPU or without CUDA kernels.
"""
from __future__ import annotations

import pytest
import torch

import fcn_repro.ops as ops
from fcn_repro.ops import _ext
from test_ops import CONFIGS, bilinear_diag, make, windows, full_size

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not _ext.BACKENDS.get("cuda", False),
                       reason="fcn_repro._C was built without CUDA kernels"),
]


def cpu_and_cuda(fn, tensors, gy=None):
    """fn's output (and gradients for gy) on CPU and on CUDA, both returned on the CPU."""
    results = []
    for dev in ("cpu", "cuda"):
        leaves = [None if v is None else v.detach().to(dev).requires_grad_(gy is not None) for v in tensors]
        out = fn(*leaves)
        grads = []
        if gy is not None:
            out.backward(gy.to(dev))
            grads = [None if v is None else v.grad.cpu() for v in leaves]
        results.append((out.detach().cpu(), grads))
    return results


def assert_same(a, b, what):
    assert a.shape == b.shape, what
    assert torch.equal(a, b), f"{what}: CUDA differs from CPU by {float((a - b).abs().max()):.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_deconv_cuda_equals_cpu(name, dtype):
    x, w, b, s, p, d, g = make(CONFIGS[name], 2, 5, 4, dtype=dtype)
    oh, ow = full_size(x, w, s, p, d)
    for off, size in windows(oh, ow):
        fn = lambda x_, w_, b_: ops.deconv2d_crop(x_, w_, b_, s, p, d, g, off, size)  # noqa: E731
        gy = torch.randn(2, w.shape[1] * g, *size, dtype=dtype)
        (yc, gc), (yg, gg) = cpu_and_cuda(fn, (x, w, b), gy)
        assert_same(yc, yg, f"{name} {off} {size} forward")
        for what, a, c in zip(("bottom", "weight", "bias"), gc, gg):
            if a is not None:
                assert_same(a, c, f"{name} {off} {size} grad {what}")
    (yc, _), (yg, _) = cpu_and_cuda(lambda x_, w_, b_: ops.deconv2d(x_, w_, b_, s, p, d, g), (x, w, b))
    assert_same(yc, yg, f"{name} deconv2d")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_path_cuda(dtype):
    c, k, s = 21, 16, 8
    w = bilinear_diag(c, k, dtype)
    x = torch.randn(1, c, 9, 8, dtype=dtype)
    noisy = w + 1e-3 * torch.randn_like(w)
    for weight, diag in ((w, True), (noisy, False)):
        assert ops.weight_is_diagonal(weight.cuda()) == diag
        fn = lambda x_, w_: ops.deconv2d_crop(x_, w_, None, s, 0, 1, 1, (31, 31), (40, 30))  # noqa: E731
        gy = torch.randn(1, c, 40, 30, dtype=dtype)
        (yc, gc), (yg, gg) = cpu_and_cuda(fn, (x, weight), gy)
        assert_same(yc, yg, f"diag={diag} forward")
        assert_same(gc[0], gg[0], f"diag={diag} grad bottom")
        general = torch.ops.fcn_repro._deconv2d_crop_path(x.cuda(), weight.cuda(), None, [s, s], [0, 0], [1, 1], 1,
                                                          [31, 31], [40, 30], 1)
        assert_same(yg, general.cpu(), f"diag={diag} auto vs general path on CUDA")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_sum_cuda_equals_cpu(dtype):
    a = torch.randn(2, 21, 34, 34, dtype=dtype)
    b = torch.randn(2, 21, 44, 44, dtype=dtype)
    for coeffs in (None, (0.5, -2.0)):
        fn = lambda a_, b_: ops.crop_sum(a_, b_, (5, 5), coeffs)  # noqa: E731
        (yc, gc), (yg, gg) = cpu_and_cuda(fn, (a, b), torch.randn_like(a))
        assert_same(yc, yg, f"crop_sum {coeffs}")
        assert_same(gc[0], gg[0], "grad a")
        assert_same(gc[1], gg[1], "grad b")


def test_opcheck_cuda():
    x = torch.randn(2, 4, 3, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, device="cuda", dtype=torch.float64, requires_grad=True)
    fr = torch.ops.fcn_repro
    for op, args in [(fr.deconv2d_crop.default, (x, w, b, [2, 3], [1, 0], [2, 1], 2, [1, 2], [4, 5])),
                     (fr.crop_sum.default, (torch.randn(2, 3, 3, 4, device="cuda", requires_grad=True),
                                            torch.randn(2, 3, 6, 5, device="cuda", requires_grad=True),
                                            [2, 1], 0.5, 2.0))]:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), f"{op}: {result}"


def test_diagonal_check_remembered_per_weight_version():
    """The CUDA launchers remember the diagonal check per weight version: an in-place
    change (version counter) is seen; a change behind it (.data) after clear_diagonal_cache()."""
    c, k, s = 4, 4, 2
    x = torch.randn(1, c, 5, 5)
    w = bilinear_diag(c, k, torch.float32)
    wg = w.cuda()
    ops.deconv2d(x.cuda(), wg, None, s)  # checked: diagonal
    wg[0, 1, 0, 0] = 0.5
    w[0, 1, 0, 0] = 0.5
    assert_same(ops.deconv2d(x, w, None, s), ops.deconv2d(x.cuda(), wg, None, s).cpu(), "after an in-place change")
    w2 = bilinear_diag(c, k, torch.float32)
    w2g = w2.cuda()
    ops.deconv2d(x.cuda(), w2g, None, s)
    w2g.data[0, 1, 0, 0] = 0.5
    w2[0, 1, 0, 0] = 0.5
    ops.clear_diagonal_cache()
    assert_same(ops.deconv2d(x, w2, None, s), ops.deconv2d(x.cuda(), w2g, None, s).cpu(), "after clearing")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_gradient_reduction_cuda_equals_cpu(dtype):
    """FCN-size bias gradient (21 channels x 500x500, batch 2): the block reduction's fixed
    lane + tree order equals the CPU's, bit for bit."""
    gy = torch.randn(2, 21, 500, 500, dtype=dtype)
    assert_same(torch.ops.fcn_repro._deconv2d_grad_bias(gy),
                torch.ops.fcn_repro._deconv2d_grad_bias(gy.cuda()).cpu(), "bias gradient")
