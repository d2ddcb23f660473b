"""The C++ Winograd kernel (csrc/cpu/winograd_kernel.cpp) behind fcn_repro.fast.winograd.WinogradCpu.

* Every variant F(m x m, 3x3), m in 2, 3, 4, 6, against a float64 direct
  convolution: odd map sizes, channel counts that fill no vector or panel,
  padding, bias, ReLU, batches, every tile phase; the error of each variant
  is bounded by what benchmarks/RESULTS.md states for it.
* AVX2 and AVX-512 compute every value alike: bit for bit the same output.
* A window of whole tiles computed with its origin equals the same pixels of
  the whole map bit for bit, whatever the window's size, the batch, or the
  thread count.
* Every refused argument is a ValueError naming the op, before any work.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcn_repro.fast.winograd import KINDS, POINTS, WinogradCpu, cpu_isa, cpu_kernel_available

pytestmark = pytest.mark.skipif(not cpu_kernel_available(),
                                reason="the C++ Winograd kernel needs the extension and AVX2 or AVX-512")

# Largest error per variant (max |y - float64| / max |float64|) on these cases; a direct float32
# convolution gives ~1e-6 here. F(6x6) is the loosest (opt-in only).
TOL = {2: 1e-6, 3: 8e-6, 4: 8e-6, 6: 4e-5}


def _rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _case(n, c, k, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, c, h, w, generator=g))
    wt = torch.randn(k, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
    b = torch.randn(k, generator=g) * 0.1
    return x, wt, b


@pytest.fixture
def isa():
    """Restores the instruction set a test switches."""
    before = cpu_isa()
    yield before
    torch.ops.fcn_repro._set_cpu_isa(before)


@pytest.mark.parametrize("m", sorted(POINTS))
@pytest.mark.parametrize("n, c, k, h, w, pad", [(1, 3, 5, 7, 9, 1), (2, 17, 33, 10, 11, 0), (1, 64, 64, 23, 20, 1),
                                                (1, 20, 70, 5, 5, 2), (3, 1, 1, 3, 3, 0), (1, 40, 8, 1, 1, 1)])
def test_against_float64(m, n, c, k, h, w, pad):
    x, wt, b = _case(n, c, k, h, w, seed=c * 7 + k)
    ref = F.conv2d(x.double(), wt.double(), b.double(), padding=pad)
    kern = WinogradCpu(wt, m)
    for phase in [(0, 0), (1, 0), (m - 1, m - 1)]:
        for bias, relu in [(b, True), (None, False)]:
            y = kern(x, bias, relu, (pad, pad), phase)
            want = ref if bias is not None else ref - b.double()[:, None, None]
            want = want.relu() if relu else want
            assert y.shape == want.shape and y.dtype == torch.float32
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert _rel(y, want) <= TOL[m], (m, phase, bias is None, _rel(y, want))


def test_any_input_layout_and_the_nets_weight_untouched():
    x, wt, b = _case(1, 24, 40, 13, 12, seed=3)
    w0 = wt.clone()
    kern = WinogradCpu(wt, 4)
    a = kern(x.contiguous(), b, False, (1, 1))
    cl = kern(x.contiguous(memory_format=torch.channels_last), b, False, (1, 1))
    sliced = kern(torch.cat([x, x], 1)[:, :24], b, False, (1, 1))
    assert torch.equal(a, cl) and torch.equal(a, sliced)
    assert torch.equal(wt, w0)


def test_relu_keeps_nan_and_inf_spreads_as_in_a_convolution():
    x, wt, b = _case(1, 8, 8, 6, 6, seed=1)
    x[0, 0, 2, 2] = float("nan")
    y = WinogradCpu(wt, 2)(x, b, True, (1, 1))
    assert y.isnan().any()      # max(0, NaN) is NaN, as torch.relu


@pytest.mark.skipif("avx512" not in cpu_isa(), reason="needs an AVX-512 CPU to compare with AVX2")
@pytest.mark.parametrize("m", sorted(POINTS))
def test_avx2_and_avx512_bit_for_bit(m, isa):
    x, wt, b = _case(2, 37, 45, 19, 14, seed=m)
    kern = WinogradCpu(wt, m)
    out = {}
    for name in ("avx512", "avx2"):
        torch.ops.fcn_repro._set_cpu_isa(name)
        assert cpu_isa() == name
        out[name] = kern(x, b, True, (1, 1), (1, 0))
    assert torch.equal(out["avx512"], out["avx2"])


@pytest.mark.parametrize("m", sorted(POINTS))
def test_a_window_computes_its_pixels_as_the_whole_map(m):
    """A window of whole tiles of the map's grid (its origin passed as the phase), computed from the input
    its tiles read, equals the same pixels of the whole map bit for bit: the same tiles, the same sums in the
    same order, whatever the window's size, the batch or the thread count. (A tile that the window cuts sees
    zeros where the map has data: in exact arithmetic the same pixels, rounded otherwise, but for F(2x2),
    whose transforms keep each output's inputs apart.)"""
    x, wt, b = _case(1, 19, 35, 29, 26, seed=11)
    kern = WinogradCpu(wt, m)
    whole = kern(x, b, True, (1, 1))
    xp = F.pad(x, (1, 1, 1, 1))
    cuts = [(0, 29, 0, 26), (m, 3 * m, 0, 26), (2 * m, 29, m, 2 * m), (0, m, 4 * m, 26)]
    if m == 2:
        cuts += [(5, 12, 0, 26), (7, 8, 3, 4), (1, 27, 13, 26), (28, 29, 25, 26)]
    for r0, r1, c0, c1 in cuts:
        part = kern(xp[:, :, r0:r1 + 2, c0:c1 + 2], b, True, (0, 0), (r0, c0))
        assert torch.equal(part, whole[:, :, r0:r1, c0:c1]), (m, r0, r1, c0, c1)
    batch = kern(torch.cat([x, x.flip(2)]), b, True, (1, 1))
    assert torch.equal(batch[:1], whole)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(kern(x, b, True, (1, 1)), whole)
    finally:
        torch.set_num_threads(threads)


def test_the_kinds_are_the_points():
    assert {KINDS[k] for k in KINDS} == set(POINTS)
    with pytest.raises(ValueError, match="m must be"):
        WinogradCpu(torch.zeros(2, 2, 3, 3), 5)
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        WinogradCpu(torch.zeros(2, 2, 5, 5), 2)


def _op_args(**over):
    x, wt, b = _case(1, 4, 6, 5, 5, seed=0)
    kern = WinogradCpu(wt, 2)
    args = dict(x=x, U=kern.U, BT=kern.BT, AT=kern.AT, bias=b, K=6, pad=[1, 1], phase=[0, 0], relu=False)
    args.update(over)
    return args


BIG = 2 ** 63 - 1


@pytest.mark.parametrize("over, match", [
    (dict(x=torch.zeros(1, 4, 5, 5, dtype=torch.float64)), "x must be float32"),
    (dict(x=torch.zeros(4, 5, 5)), "x must be 4-D"),
    (dict(x=torch.zeros(1, 3, 5, 5)), "U must be"),
    (dict(x=torch.zeros(1, 4, 1, 5), pad=[0, 0]), "smaller than the 3x3 kernel"),
    (dict(K=7), "U must be|bias must have"),
    (dict(K=0), "K \\(output channels\\) must be in"),
    (dict(K=BIG), "K \\(output channels\\) must be in"),
    (dict(bias=torch.zeros(5)), "bias must have shape"),
    (dict(bias=torch.zeros(6, dtype=torch.float64)), "bias must be float32"),
    (dict(pad=[-1, 0]), "pad must be in"),
    (dict(pad=[2 ** 31, 0]), "pad must be in"),
    (dict(pad=[2 ** 30, 2 ** 30]), "out of Caffe's int range"),
    (dict(pad=[1]), "pad must have 2 values"),
    (dict(phase=[2, 0]), "phase must be in"),
    (dict(phase=[0, -1]), "phase must be in"),
    (dict(phase=[BIG, 0]), "phase must be in"),
    (dict(AT=torch.zeros(5, 7)), "AT must be \\(m, m \\+ 2\\)"),
    (dict(AT=torch.zeros(2, 4, 1)), "AT and BT must be 2-D"),
    (dict(BT=torch.zeros(3, 3)), "BT must be"),
    (dict(U=torch.zeros(16, 1, 4, 31)), "U must be"),
])
def test_refusals_name_the_op(over, match):
    with pytest.raises(ValueError, match="winograd_conv3x3") as e:
        torch.ops.fcn_repro.winograd_conv3x3(**_op_args(**over))
    assert e.match(match)


def test_isa_setting(isa):
    with pytest.raises(ValueError, match="'avx512', 'avx2' or 'none'"):
        torch.ops.fcn_repro._set_cpu_isa("sse9")
    assert torch.ops.fcn_repro._set_cpu_isa("none") == isa
    assert cpu_isa() == "none" and not cpu_kernel_available()
    with pytest.raises(ValueError, match="neither AVX-512 nor AVX2"):
        torch.ops.fcn_repro.winograd_conv3x3(**_op_args())
    torch.ops.fcn_repro._set_cpu_isa("avx2")
    assert cpu_isa() == "avx2"
    if isa != "avx512":
        with pytest.raises(ValueError, match="does not support avx512"):
            torch.ops.fcn_repro._set_cpu_isa("avx512")
