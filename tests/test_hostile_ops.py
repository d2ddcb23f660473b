"""Hostile arguments to the fcn_repro ops: each ends in a ValueError naming the op, never a crash.

Values that once killed the process (an int64 overflow in the geometry of the
C++ kernels corrupting the heap, a crop offset near 2^63 passing the bounds
check by overflow and reading out of bounds, a division by groups == 0) run
in a subprocess: a crash there fails the case that was running, not the
session. Every case runs on the three paths that must agree: the C++ kernels
(torch.ops.fcn_repro), the fake kernels (meta tensors, as torch.compile
traces) and the pure-PyTorch reference (the fallback).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fcn_repro.ops as ops
from fcn_repro.ops import _ext

needs_ext = pytest.mark.skipif(not _ext.AVAILABLE, reason=f"extension not built: {_ext.LOAD_ERROR}")

BIG = 2 ** 63 - 1
HOSTILE_INTS = [-1, 2 ** 31, BIG, -2 ** 63]

# name -> python expression run with x (1, 2, 4, 5), w (2, 3, 3, 3), bias (3,), a (1, 2, 3, 3), b (1, 2, 6, 7),
# g (1, 3, 6, 7) a top gradient of the deconv with stride 1 (float32, on device D).
CASES = {
    # the two crashes of issue 16 and the SIGFPE of issue 15
    "deconv_stride_w_int64_max": "ops.deconv2d(x, w, bias, (1, BIG))",
    "deconv_crop_stride_w_int64_max": "ops.deconv2d_crop(x, w, bias, (1, BIG), 0, 1, 1, (0, 0), (2, 2))",
    "crop_sum_offset_near_2_63": "ops.crop_sum(a, b, (BIG - 1, 0))",
    "crop_sum_offset_near_2_63_x": "ops.crop_sum(a, b, (0, BIG - 2))",
    "crop_sum_backward_offset_near_2_63": "fo._crop_sum_backward(a, [6, 7], [BIG - 1, 0], 1.0, 1.0)",
    "is_diagonal_groups_0": "ops.weight_is_diagonal(w, 0)",
    "is_diagonal_op_groups_0": "fo._deconv2d_is_diagonal(w, 0)",
    "is_diagonal_groups_negative": "fo._deconv2d_is_diagonal(w, -3)",
    "deconv_groups_0": "ops.deconv2d(x, w, None, 1, 0, 1, 0)",
    # negative out_size: refused on every path (was: whole top / Python slicing / fake error)
    "deconv_crop_negative_out_size": "ops.deconv2d_crop(x, w, bias, 1, 0, 1, 1, (0, 0), (-1, -1))",
    "deconv_crop_zero_out_size": "ops.deconv2d_crop(x, w, bias, 1, 0, 1, 1, (0, 0), (0, 3))",
    "deconv_crop_negative_offset": "ops.deconv2d_crop(x, w, bias, 1, 0, 1, 1, (-1, 0), (2, 2))",
    "deconv_crop_offset_overflow": "ops.deconv2d_crop(x, w, bias, 1, 0, 1, 1, (BIG, BIG), (2, 2))",
    "deconv_crop_out_size_overflow": "ops.deconv2d_crop(x, w, bias, 1, 0, 1, 1, (1, 1), (BIG, BIG))",
    # huge pad / dilation: an empty top or sizes Caffe can not hold
    "deconv_huge_pad": "ops.deconv2d(x, w, bias, 1, 2 ** 31 - 1)",
    "deconv_pad_int64_max": "ops.deconv2d(x, w, bias, 1, BIG)",
    "deconv_huge_dilation": "ops.deconv2d(x, w, bias, 1, 0, 2 ** 31 - 1)",
    "deconv_dilation_int64_max_with_pad": "ops.deconv2d(x, w, bias, 1, 2 ** 62, BIG // 2)",
    "deconv_huge_stride_and_pad": "ops.deconv2d(x, w, bias, 2 ** 40, 2 ** 41)",
    "deconv_stride_0": "ops.deconv2d(x, w, bias, 0)",
    "deconv_stride_negative": "ops.deconv2d(x, w, bias, -2 ** 63)",
    "deconv_pad_negative": "ops.deconv2d(x, w, bias, 1, -1)",
    "deconv_stride_bool": "ops.deconv2d(x, w, bias, True)",
    "deconv_stride_float": "ops.deconv2d(x, w, bias, 1.5)",
    "deconv_stride_too_big_for_int64": "ops.deconv2d(x, w, bias, 2 ** 64)",
    "deconv_groups_float": "ops.deconv2d(x, w, None, 1, 0, 1, 1.0)",
    # backward kernels called directly with hostile sizes
    "grad_input_in_size_int64_max": "fo._deconv2d_grad_input(g, w, [BIG, 5], [1, 1], [0, 0], [1, 1], 1, [0, 0])",
    "grad_input_stride_int64_max": "fo._deconv2d_grad_input(g, w, [4, 5], [BIG, 1], [0, 0], [1, 1], 1, [0, 0])",
    "grad_input_offsets_near_2_63": "fo._deconv2d_grad_input(g, w, [4, 5], [1, 1], [0, 0], [1, 1], 1, [BIG, 0])",
    "grad_weight_kernel_int64_max": "fo._deconv2d_grad_weight(g, x, [BIG, 3], [1, 1], [0, 0], [1, 1], 1, [0, 0])",
    "grad_weight_groups_0": "fo._deconv2d_grad_weight(g, x, [3, 3], [1, 1], [0, 0], [1, 1], 0, [0, 0])",
    "grad_weight_pad_int64_max": "fo._deconv2d_grad_weight(g, x, [3, 3], [1, 1], [BIG, 0], [1, 1], 1, [0, 0])",
    "crop_sum_backward_b_size_negative": "fo._crop_sum_backward(a, [-6, 7], [0, 0], 1.0, 1.0)",
    "crop_path_bad_path": "fo._deconv2d_crop_path(x, w, bias, [1, 1], [0, 0], [1, 1], 1, [0, 0], [2, 2], 7)",
    # wrong tensors
    "deconv_int_tensor": "ops.deconv2d(x.long(), w.long())",
    "deconv_bias_wrong_shape": "ops.deconv2d(x, w, bias[:2])",
    "deconv_dtype_mismatch": "ops.deconv2d(x, w.double())",
    "crop_sum_channel_mismatch": "ops.crop_sum(a, b[:, :1], 0)",
    "crop_sum_3d": "ops.crop_sum(a[0], b[0], 0)",
}
# mixed devices: one argument on the meta device, the rest on the CPU (was: an uninitialised CPU tensor)
MIXED = {
    "mixed_weight_meta": "ops.deconv2d(x, w.to('meta'), bias)",
    "mixed_bias_meta": "ops.deconv2d(x, w, bias.to('meta'))",
    "mixed_bottom_meta": "ops.deconv2d_crop(x.to('meta'), w, bias, 1, 0, 1, 1, (0, 0), (2, 2))",
    "mixed_crop_sum_b_meta": "ops.crop_sum(a, b.to('meta'), 0)",
    "mixed_crop_sum_a_meta": "ops.crop_sum(a.to('meta'), b, 0)",
}

RUNNER = textwrap.dedent("""
    import json, sys, warnings
    import torch
    import fcn_repro.ops as ops
    from fcn_repro.ops import _ext
    warnings.simplefilter("ignore")
    BIG = 2 ** 63 - 1
    fo = torch.ops.fcn_repro
    mode, cases = sys.argv[1], json.loads(sys.argv[2])
    if mode == "reference":
        _ext.AVAILABLE = False
        _ext.BACKENDS = {"cpu": False, "cuda": False}
    dev = "meta" if mode == "fake" else "cpu"
    gen = torch.Generator().manual_seed(0)
    def r(*s):
        return torch.randn(*s, generator=gen).to(dev)
    x, w, bias, a, b, g = r(1, 2, 4, 5), r(2, 3, 3, 3), r(3), r(1, 2, 3, 3), r(1, 2, 6, 7), r(1, 3, 6, 7)
    for name, expr in cases.items():
        print(json.dumps({"start": name}), flush=True)
        try:
            eval(expr)
            out = {"name": name, "error": None}
        except Exception as e:
            out = {"name": name, "error": type(e).__name__, "isvalue": isinstance(e, ValueError),
                   "message": str(e).splitlines()[0][:300]}
        print(json.dumps(out), flush=True)
""")


def run_cases(mode: str, cases: dict) -> dict:
    """Runs cases in a fresh interpreter; returns name -> outcome. A crash is reported for
    the case that was running (and the ones after it are not run)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", RUNNER, mode, json.dumps(cases)], capture_output=True,
                          text=True, timeout=300, env=env)
    results, running = {}, None
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        if "start" in rec:
            running = rec["start"]
        else:
            results[rec["name"]] = rec
            running = None
    if running is not None:
        results[running] = {"name": running, "error": f"process died (exit {proc.returncode})",
                            "stderr": proc.stderr[-2000:]}
    return results


MODES = ("kernels", "fake", "reference")


def applies(mode: str, name: str) -> bool:
    """Whether a case exists on a path: mixed devices are the kernels' case (the fake
    kernels are what refuses them there); the private ops called directly (fo.*) have
    no reference, and _deconv2d_is_diagonal has no fake kernel."""
    if name in MIXED:
        return mode == "kernels"
    call = CASES[name]
    if call.startswith("fo."):
        return mode == "kernels" or (mode == "fake" and "is_diagonal" not in call)
    return True


@pytest.fixture(scope="module")
def outcomes():
    got = {}
    for mode in MODES:
        if mode != "reference" and not _ext.AVAILABLE:
            continue
        got[mode] = run_cases(mode, {k: v for k, v in {**CASES, **MIXED}.items() if applies(mode, k)})
    return got


@pytest.mark.parametrize("mode,name", [(m, n) for m in MODES for n in list(CASES) + list(MIXED) if applies(m, n)])
def test_hostile_value_is_a_clean_error(outcomes, mode, name):
    if mode not in outcomes:
        pytest.skip(f"extension not built: {_ext.LOAD_ERROR}")
    res = outcomes[mode].get(name)
    assert res is not None, f"{name} was not reached: an earlier case killed the process"
    assert "stderr" not in res, f"{name}: {res['error']}\n{res['stderr']}"
    assert res["error"] is not None, f"{name} ({mode}) was accepted"
    assert res["isvalue"], f"{name} ({mode}): {res['error']}: {res['message']}"
    assert "fcn_repro::" in res["message"], f"{name} ({mode}): message does not name the op: {res['message']}"


@needs_ext
def test_every_path_gives_the_same_message():
    """The kernels, the fake kernels and the reference refuse a call with one message."""
    x, w = torch.randn(1, 2, 4, 5), torch.randn(2, 3, 3, 3)
    calls = [lambda x_, w_: ops.deconv2d_crop(x_, w_, None, 1, 0, 1, 1, (0, 0), (-1, 4)),
             lambda x_, w_: ops.deconv2d(x_, w_, None, (1, BIG)),
             lambda x_, w_: ops.deconv2d(x_, w_, None, 1, 2 ** 30),
             lambda x_, w_: ops.crop_sum(x_, w_.reshape(1, 2, 3, 9), (1, 0))]
    for call in calls:
        msgs = []
        for path in ("kernels", "fake", "reference"):
            xs, ws = (x.to("meta"), w.to("meta")) if path == "fake" else (x, w)
            try:
                if path == "reference":
                    with pytest.MonkeyPatch.context() as mp:
                        mp.setattr(_ext, "AVAILABLE", False)
                        with pytest.warns(ops.FallbackWarning):
                            call(xs, ws)
                else:
                    call(xs, ws)
            except ValueError as e:
                msgs.append(str(e).splitlines()[0])
            else:
                pytest.fail(f"{path} accepted the call")
        assert msgs[0] == msgs[1] == msgs[2], msgs


@needs_ext
def test_valid_edge_values_still_work():
    """The bounds are Caffe's: the largest values it can hold that give a sane top still run."""
    x, w = torch.randn(1, 1, 1, 1), torch.randn(1, 1, 1, 1)
    y = ops.deconv2d(x, w, None, 2 ** 31 - 1, 0, 2 ** 31 - 1)  # one bottom pixel: the stride is never used
    assert y.shape == (1, 1, 1, 1) and torch.equal(y, x * w)
    x2 = torch.randn(1, 1, 2, 1)
    y = ops.deconv2d_crop(x2, w, None, (2 ** 20, 1), 0, 1, 1, (2 ** 20, 0), (1, 1))
    assert torch.equal(y[0, 0, 0, 0], x2[0, 0, 1, 0] * w[0, 0, 0, 0])
