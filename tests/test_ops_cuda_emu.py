"""The CUDA kernels, verified without a GPU: csrc/cuda/*.cu run by the test emulator.

tests/cuda_emu builds the real .cu files with the host compiler behind
stand-in CUDA headers (FCN_CUDA_EMU) and registers their launchers as
torch.ops.fcn_repro_emu.*: every launch runs every block and thread on the
CPU, one fiber per CUDA thread, so barriers are real, under a chosen thread
order and SM count (the grid size depends on it). Here the emulated CUDA ops
must give our CPU ops' results BIT FOR BIT (raw bits compared: NaN payloads
and signed zeros too), forward and every backward, float32 and float64:

* test_ops.CONFIGS x crop windows, under 4 thread orders x 3 SM counts;
* FCN's own geometries (k4 s2; k16 s8 crop 31; k32 s16 crop 27; k64 s32
  crop 19; crop_sum at 5 and 9), diagonal and general weights;
* non-contiguous, channels-last, empty and non-finite inputs; the diagonal
  check's edge cases and its per-weight-version cache; the forced 64-bit
  index path; the same errors as the CPU ops; random geometries
  (hypothesis), also against conv_transpose2d.

Every output is checked to be written exactly once and never read before
(the emulator's checking mode), and every launch for barrier divergence,
a missing CUDAGuard and invalid launch configurations (the self-tests show
the emulator reports each). The emulator is built once per source hash into
tests/cuda_emu/build/ (~1-2 min the first time). FCN_EMU_SANITIZE=1 runs
this module against an ASan+UBSan build (see tests/cuda_emu/README.md).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fcn_repro.ops as ops
from fcn_repro.caffe.shapes import deconv_out
from fcn_repro.ops import _ext
from test_ops import CONFIGS, bilinear_diag, make, windows

sys.path.insert(0, str(Path(__file__).parent / "cuda_emu"))
import build as emu_build  # noqa: E402  (tests/cuda_emu/build.py)

pytestmark = [
    pytest.mark.skipif(not _ext.AVAILABLE, reason=f"extension not built: {_ext.LOAD_ERROR}"),
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler"),
]

ORDERS = {"sequential": 0, "reversed": 1, "shuffled": 2, "interleaved": 3}
SMS = (1, 7, 132)
FO = torch.ops.fcn_repro


@pytest.fixture(scope="session")
def emu():
    variant = "sanitize" if os.environ.get("FCN_EMU_SANITIZE") == "1" else "plain"
    mod = emu_build.build(variant)
    mod.set_checking(True)
    yield mod
    mod.set_order(0, 0)
    mod.set_sm_count(132)


@pytest.fixture
def fe(emu):
    """torch.ops.fcn_repro_emu; after the test, no violation may have been recorded."""
    emu.take_violations()
    emu.set_order(0, 0)
    emu.set_sm_count(132)
    FO._clear_diagonal_cache()
    torch.ops.fcn_repro_emu._clear_diagonal_cache()
    yield torch.ops.fcn_repro_emu
    emu.set_force_index64(False)
    assert emu.take_violations() == []


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def same(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} vs {want.shape}"
    if not torch.equal(bits(got), bits(want)):
        diff = (bits(got) != bits(want)).nonzero()
        raise AssertionError(f"{what}: {len(diff)} of {want.numel()} elements differ in their bits, "
                             f"first at {diff[0].tolist()}: {got[tuple(diff[0])]} vs {want[tuple(diff[0])]}")


def check_deconv(fe, x, w, b, s, p, d, g, off, size, what, gy=None):
    """Forward (crop and, for the whole top, deconv2d) and the three backward kernels, emulated vs CPU."""
    s, p, d = list(s), list(p), list(d)
    off, size = list(off), list(size)
    same(fe.deconv2d_crop(x, w, b, s, p, d, g, off, size), FO.deconv2d_crop(x, w, b, s, p, d, g, off, size),
         f"{what} forward")
    if gy is None:
        gen = torch.Generator().manual_seed(7)
        gy = torch.randn(x.shape[0], w.shape[1] * g, *size, dtype=x.dtype, generator=gen)
    hw = [x.shape[2], x.shape[3]]
    same(fe._deconv2d_grad_input(gy, w, hw, s, p, d, g, off), FO._deconv2d_grad_input(gy, w, hw, s, p, d, g, off),
         f"{what} grad bottom")
    k = [w.shape[2], w.shape[3]]
    same(fe._deconv2d_grad_weight(gy, x, k, s, p, d, g, off), FO._deconv2d_grad_weight(gy, x, k, s, p, d, g, off),
         f"{what} grad weight")
    same(fe._deconv2d_grad_bias(gy), FO._deconv2d_grad_bias(gy), f"{what} grad bias")


def check_crop_sum(fe, a, b, off, coeffs=(1.0, 1.0), what="crop_sum"):
    same(fe.crop_sum(a, b, list(off), *coeffs), FO.crop_sum(a, b, list(off), *coeffs), f"{what} forward")
    gy = torch.randn_like(a)
    got, want = fe._crop_sum_backward(gy, list(b.shape[2:]), list(off), *coeffs), \
        FO._crop_sum_backward(gy, list(b.shape[2:]), list(off), *coeffs)
    same(got[0], want[0], f"{what} grad a")
    same(got[1], want[1], f"{what} grad b")


# ---- the emulator reports what it must (else the tests below prove nothing) -----------

@pytest.mark.parametrize("kind,message", [
    ("ok", ""), ("barrier_or", ""),
    ("threads_2048", "invalid configuration argument"),
    ("no_guard", "without a CUDAGuard"),
    ("skip_write", "never written"),
    ("write_twice", "written twice"),
    ("early_return", "barrier divergence"),
    ("mixed_barriers", "different barriers"),
])
def test_emulator_reports_faults(emu, kind, message):
    err = emu.selftest(kind)
    if message:
        assert message in err, f"{kind}: {err!r}"
    else:
        assert err == ""


# ---- the test CONFIGS under every thread order and SM count ----------------------------

@pytest.mark.parametrize("sms", SMS)
@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_configs_bit_for_bit(fe, emu, order, sms, dtype):
    emu.set_order(ORDERS[order], 12345)
    emu.set_sm_count(sms)
    for name, cfg in CONFIGS.items():
        x, w, b, s, p, d, g = make(cfg, 2, 5, 4, dtype=dtype)
        oh, ow = (deconv_out(x.shape[2 + i], w.shape[2 + i], s[i], p[i], d[i]) for i in range(2))
        for off, size in windows(oh, ow):
            check_deconv(fe, x, w, b, s, p, d, g, off, size, f"{name} {off} {size}")
        same(fe.deconv2d(x, w, b, list(s), list(p), list(d), g), FO.deconv2d(x, w, b, list(s), list(p), list(d), g),
             f"{name} deconv2d")
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 5, 7, dtype=dtype, generator=gen)
    bb = torch.randn(2, 3, 9, 12, dtype=dtype, generator=gen)
    for off, coeffs in (((2, 5), (1.0, 1.0)), ((0, 0), (0.5, -2.0)), ((4, 0), (0.0, 3.0))):
        check_crop_sum(fe, a, bb, off, coeffs, f"crop_sum {off} {coeffs}")


# ---- FCN's own layers -------------------------------------------------------------------

FCN_LAYERS = {  # name: (kernel, stride, crop offset, bottom HxW, kept HxW)
    "upscore2_k4s2": (4, 2, 0, (6, 7), None),
    "upscore8_k16s8_crop31": (16, 8, 31, (12, 11), (30, 22)),
    "upscore16_k32s16_crop27": (32, 16, 27, (6, 6), (40, 31)),
    "upscore_k64s32_crop19": (64, 32, 19, (4, 4), (60, 47)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer", list(FCN_LAYERS))
def test_fcn_layers_bit_for_bit(fe, emu, layer, dtype):
    k, s, crop, (h, w), kept = FCN_LAYERS[layer]
    c = 5
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, c, h, w, dtype=dtype, generator=gen)
    diag = bilinear_diag(c, k, dtype)
    noisy = diag + 1e-3 * torch.randn(diag.shape, dtype=dtype, generator=gen)
    full = deconv_out(h, k, s, 0, 1), deconv_out(w, k, s, 0, 1)
    size = full if kept is None else kept
    for weight, is_diag in ((diag, True), (noisy, False)):
        assert bool(fe._deconv2d_is_diagonal(weight, 1)) == is_diag
        check_deconv(fe, x, weight, None, (s, s), (0, 0), (1, 1), 1, (crop, crop), size, f"{layer} diag={is_diag}")
    emu.take_launches()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fcn_crop_sums_bit_for_bit(fe, dtype):
    gen = torch.Generator().manual_seed(12)
    for off, (h, hb) in ((5, (34, 44)), (9, (70, 88))):
        a = torch.randn(1, 21, h, h, dtype=dtype, generator=gen)
        b = torch.randn(1, 21, hb, hb, dtype=dtype, generator=gen)
        check_crop_sum(fe, a, b, (off, off), what=f"crop_sum at {off}")


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["upscore8_k16s8_crop31", "upscore16_k32s16_crop27", "upscore_k64s32_crop19"])
def test_fcn_full_size_500x500(fe, emu, layer):
    """One full-size (500x500 kept, 21 classes) case per upsampling layer: forward and bottom gradient."""
    k, s, crop, _, _ = FCN_LAYERS[layer]
    h = (500 + 2 * crop - k) // s + 1  # the bottom that gives a top of at least 500 + 2*crop
    h += 1 if deconv_out(h, k, s, 0, 1) < 500 + crop else 0
    x = torch.randn(1, 21, h, h)
    w = bilinear_diag(21, k, torch.float32)
    args = [s, s], [0, 0], [1, 1], 1, [crop, crop], [500, 500]
    same(fe.deconv2d_crop(x, w, None, *args), FO.deconv2d_crop(x, w, None, *args), f"{layer} forward")
    gy = torch.randn(1, 21, 500, 500)
    same(fe._deconv2d_grad_input(gy, w, [h, h], *args[:5]), FO._deconv2d_grad_input(gy, w, [h, h], *args[:5]),
         f"{layer} grad bottom")


# ---- layouts and values ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layouts_and_non_finite(fe, dtype):
    cfg = CONFIGS["zoo_deconv_dil"]
    x, w, b, s, p, d, g = make(cfg, 2, 9, 6, dtype=dtype, seed=2)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    xs = torch.randn(2, 4, 18, 6, dtype=dtype)[:, :, ::2]
    xcl = x.contiguous(memory_format=torch.channels_last)
    wnc = w.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    for xi, wi, what in ((xt, w, "transposed bottom"), (xs, wnc, "strided bottom, permuted weight"),
                         (xcl, w, "channels-last bottom")):
        assert not xi.is_contiguous()
        check_deconv(fe, xi, wi, b, s, p, d, g, (1, 1), (10, 12), what)
    gy = torch.randn(40, 12, 2, 10, dtype=dtype).permute(2, 3, 0, 1)[:, :2, :10, :12]  # non-contiguous grad
    check_deconv(fe, x, w, b, s, p, d, g, (1, 1), (10, 12), "non-contiguous top grad", gy=gy)
    xn = x.clone()
    xn[0, 1, 2, 3], xn[1, 0, 0, 0], xn[1, 2, 4, 5] = float("nan"), float("inf"), float("-inf")
    wn = w.clone()
    wn[1, 0, 1, 1] = float("nan")
    check_deconv(fe, xn, w, b, s, p, d, g, (0, 0), (10, 12), "non-finite bottom")
    check_deconv(fe, x, wn, b, s, p, d, g, (0, 0), (10, 12), "non-finite weight")
    a = torch.randn(2, 3, 4, 5, dtype=dtype).transpose(2, 3)
    bb = torch.randn(2, 3, 9, 8, dtype=dtype).contiguous(memory_format=torch.channels_last)
    bb[0, 0, 2, 2] = float("nan")
    check_crop_sum(fe, a, bb, (2, 1), what="crop_sum non-contiguous, channels-last, NaN")


def test_empty_inputs(fe):
    w = torch.randn(3, 2, 3, 3)
    for x in (torch.randn(0, 3, 4, 5), torch.randn(2, 0, 4, 5)):
        wi = w[: x.shape[1]]
        y, yc = fe.deconv2d(x, wi, None, [2, 2], [0, 0], [1, 1], 1), FO.deconv2d(x, wi, None, [2, 2], [0, 0], [1, 1], 1)
        same(y, yc, f"empty {tuple(x.shape)} forward")
        gy = torch.randn(y.shape)
        same(fe._deconv2d_grad_input(gy, wi, [4, 5], [2, 2], [0, 0], [1, 1], 1, [0, 0]),
             FO._deconv2d_grad_input(gy, wi, [4, 5], [2, 2], [0, 0], [1, 1], 1, [0, 0]), "empty grad bottom")
        same(fe._deconv2d_grad_weight(gy, x, [3, 3], [2, 2], [0, 0], [1, 1], 1, [0, 0]),
             FO._deconv2d_grad_weight(gy, x, [3, 3], [2, 2], [0, 0], [1, 1], 1, [0, 0]), "empty grad weight")
        same(fe._deconv2d_grad_bias(gy), FO._deconv2d_grad_bias(gy), "empty grad bias")
    check_crop_sum(fe, torch.randn(0, 2, 3, 3), torch.randn(0, 2, 5, 5), (1, 1), what="empty crop_sum")


# ---- the diagonal check ---------------------------------------------------------------------

def test_diagonal_edge_cases_and_cache(fe, emu):
    c, k, s = 6, 4, 2
    base = bilinear_diag(c, k, torch.float32)
    negzero, nan, last, one_big = base.clone(), base.clone(), base.clone(), base.clone()
    negzero[0, 1] = -0.0
    nan[2, 1, 0, 0] = float("nan")
    last[c - 1, 0, k - 1, k - 1] = 1e-30   # the last off-diagonal element scanned
    one_big[0, c - 1, 0, 0] = 1.0
    x = torch.randn(2, c, 5, 4)
    for w, diag in ((base, True), (negzero, True), (nan, False), (last, False), (one_big, False)):
        assert bool(fe._deconv2d_is_diagonal(w, 1)) == diag == bool(FO._deconv2d_is_diagonal(w, 1))
        check_deconv(fe, x, w, None, (s, s), (0, 0), (1, 1), 1, (1, 1), (8, 6), f"diag={diag}")
        for path in (1, 2):
            args = (x, w, None, [s, s], [0, 0], [1, 1], 1, [1, 1], [8, 6], path)
            same(fe._deconv2d_crop_path(*args), FO._deconv2d_crop_path(*args), f"forced path {path}")
    # not eligible: groups != 1 or Cin != Cout (no check is launched)
    emu.take_launches()
    assert not fe._deconv2d_is_diagonal(torch.zeros(4, 1, 3, 3), 4)
    assert not fe._deconv2d_is_diagonal(torch.zeros(4, 5, 3, 3), 1)
    assert emu.take_launches() == []
    # remembered per weight version: one check for repeated calls, a new one after an in-place change
    w = base.clone()
    args = ([s, s], [0, 0], [1, 1], 1, [0, 0], [8, 8])
    for _ in range(3):
        fe.deconv2d_crop(x, w, None, *args)
    fe._deconv2d_grad_input(torch.randn(2, c, 8, 8), w, [5, 4], *args[:5])
    checks = [n for n, _, _ in emu.take_launches() if "diag_check" in n]
    assert len(checks) == 1, checks
    w[0, 1, 0, 0] = 0.5  # in place: the version counter moves
    same(fe.deconv2d_crop(x, w, None, *args), FO.deconv2d_crop(x, w, None, *args), "after an in-place change")
    assert [n for n, _, _ in emu.take_launches() if "diag_check" in n] != []
    assert not fe._deconv2d_is_diagonal(w, 1)
    # a change behind the version counter is seen after clearing the cache
    w2 = base.clone()
    fe.deconv2d_crop(x, w2, None, *args)
    w2.data[0, 1, 0, 0] = 0.5
    fe._clear_diagonal_cache()
    same(fe.deconv2d_crop(x, w2, None, *args), FO.deconv2d_crop(x, w2, None, *args), "after clearing the cache")


# ---- 64-bit index path, errors ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forced_index64_path(fe, emu, dtype):
    a = torch.randn(2, 3, 7, 6, dtype=dtype)
    b = torch.randn(2, 3, 11, 9, dtype=dtype)
    emu.take_launches()
    check_crop_sum(fe, a, b, (3, 2), (0.5, 2.0), "32-bit")
    assert {n for n, _, _ in emu.take_launches()} == {"crop_sum_fwd_i32", "crop_sum_bwd_i32"}
    emu.set_force_index64(True)
    check_crop_sum(fe, a, b, (3, 2), (0.5, 2.0), "64-bit")
    assert {n for n, _, _ in emu.take_launches()} == {"crop_sum_fwd_i64", "crop_sum_bwd_i64"}


ERROR_CALLS = [
    ("deconv2d_crop", lambda o, x, w: o.deconv2d_crop(x, w, None, [1, 1], [0, 0], [1, 1], 1, [0, 0], [-1, 2])),
    ("deconv2d stride", lambda o, x, w: o.deconv2d(x, w, None, [1, 2 ** 63 - 1], [0, 0], [1, 1], 1)),
    ("deconv2d pad", lambda o, x, w: o.deconv2d(x, w, None, [1, 1], [9, 0], [1, 1], 1)),
    ("deconv2d dtype", lambda o, x, w: o.deconv2d(x, w.double(), None, [1, 1], [0, 0], [1, 1], 1)),
    ("deconv2d bias", lambda o, x, w: o.deconv2d(x, w, torch.zeros(5), [1, 1], [0, 0], [1, 1], 1)),
    ("is_diagonal groups 0", lambda o, x, w: o._deconv2d_is_diagonal(w, 0)),
    ("crop path", lambda o, x, w: o._deconv2d_crop_path(x, w, None, [1, 1], [0, 0], [1, 1], 1, [0, 0], [2, 2], 2)),
    ("grad_input in_size", lambda o, x, w: o._deconv2d_grad_input(torch.randn(1, 3, 6, 7), w, [2 ** 62, 5], [1, 1],
                                                                  [0, 0], [1, 1], 1, [0, 0])),
    ("grad_weight groups", lambda o, x, w: o._deconv2d_grad_weight(torch.randn(1, 3, 6, 7), x, [3, 3], [1, 1],
                                                                   [0, 0], [1, 1], 0, [0, 0])),
    ("grad_bias 3-D", lambda o, x, w: o._deconv2d_grad_bias(torch.randn(3, 6, 7))),
    ("crop_sum offset", lambda o, x, w: o.crop_sum(x, torch.randn(1, 2, 6, 7), [2 ** 63 - 2, 0])),
    ("crop_sum backward offset", lambda o, x, w: o._crop_sum_backward(x, [6, 7], [0, 2 ** 63 - 3], 1.0, 1.0)),
]


@pytest.mark.parametrize("name", [n for n, _ in ERROR_CALLS])
def test_error_parity(fe, name):
    call = dict(ERROR_CALLS)[name]
    x, w = torch.randn(1, 2, 4, 5), torch.randn(2, 3, 3, 3)
    msgs = []
    for o in (fe, FO):
        with pytest.raises(ValueError) as e:
            call(o, x, w)
        msgs.append(str(e.value).splitlines()[0])
    assert msgs[0] == msgs[1]


# ---- random geometries ---------------------------------------------------------------------

@st.composite
def geometries(draw):
    groups = draw(st.integers(1, 3))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    hw = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    p = tuple(draw(st.integers(0, (s[i] * (hw[i] - 1) + d[i] * (k[i] - 1)) // 2)) for i in range(2))
    full = [deconv_out(hw[i], k[i], s[i], p[i], d[i]) for i in range(2)]
    size = [draw(st.integers(1, full[i])) for i in range(2)]
    off = [draw(st.integers(0, full[i] - size[i])) for i in range(2)]
    return dict(groups=groups, cin=cin, cout=cout, k=k, s=s, d=d, hw=hw, p=p, size=size, off=off,
                n=draw(st.integers(1, 2)), bias=draw(st.booleans()), order=draw(st.sampled_from(list(ORDERS))),
                sms=draw(st.sampled_from(SMS)), seed=draw(st.integers(0, 2 ** 31)))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(geo=geometries())
def test_random_geometries(fe, emu, geo):
    emu.set_order(ORDERS[geo["order"]], geo["seed"])
    emu.set_sm_count(geo["sms"])
    gen = torch.Generator().manual_seed(geo["seed"])
    x = torch.randn(geo["n"], geo["cin"], *geo["hw"], dtype=torch.float64, generator=gen)
    w = torch.randn(geo["cin"], geo["cout"] // geo["groups"], *geo["k"], dtype=torch.float64, generator=gen)
    b = torch.randn(geo["cout"], dtype=torch.float64, generator=gen) if geo["bias"] else None
    s, p, d, g, off, size = geo["s"], geo["p"], geo["d"], geo["groups"], geo["off"], geo["size"]
    check_deconv(fe, x, w, b, s, p, d, g, off, size, str(geo))
    ref = F.conv_transpose2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    ref = ref[:, :, off[0]:off[0] + size[0], off[1]:off[1] + size[1]]
    got = fe.deconv2d_crop(x, w, b, list(s), list(p), list(d), g, off, size)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert emu.take_violations() == []
