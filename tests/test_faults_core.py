"""Faults in the core: HDF5 writes that fail or are interrupted, HDF5 links, double
backward through the ops, the fast path's cache, export's opset and size caps,
learning-rate edge values, a planner fed a huge Concat, LRN windows wider
than their blob, and weights files truncated while (or after) they are read.

Every case ends in one of our errors or a correct result, with nothing
half-written and nothing hung (subprocesses run under a timeout).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fcn_repro.caffe.hdf5 import HDF5WeightsError, load_hdf5, save_hdf5
from fcn_repro.caffe.solverstate import SolverStateContents, read_state, write_state
from fcn_repro import limits
from fcn_repro.errors import OutputError

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the checkout (so it imports this fcn_repro)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ---------------------------------------------------------------- HDF5 writes

_FSIZE_WRITE = """
    import resource, signal, sys
    import numpy as np
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # as the CLI does: a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    from fcn_repro.caffe.hdf5 import save_hdf5
    from fcn_repro.caffe.solverstate import SolverStateContents, write_state
    from fcn_repro.errors import OutputError
    w = {f"layer{k}": [np.full((40, 100), k, np.float32), np.ones(40, np.float32)] for k in range(20)}
    try:
        if sys.argv[3] == "weights":
            save_hdf5(sys.argv[1], w)
        else:
            write_state(sys.argv[1], SolverStateContents(3, "x", [b for bs in w.values() for b in bs], 0))
    except OutputError as e:
        print("OUTPUT-ERROR", e)
        sys.exit(3)
    print("WRITTEN")
"""


@pytest.mark.parametrize("what, name", [("weights", "w.caffemodel.h5"), ("state", "s.solverstate.h5")])
@pytest.mark.parametrize("limit", [1000, 100_000])
def test_h5_write_under_file_size_limit_is_our_error_and_leaves_nothing(tmp_path, what, name, limit):
    out = tmp_path / name
    r = run_py(_FSIZE_WRITE, str(out), str(limit), what)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)   # not a crash (SIGSEGV: -11), not a traceback
    assert "OUTPUT-ERROR" in r.stdout and str(out) in r.stdout
    assert leftovers(tmp_path) == []


def test_h5_write_without_limit_round_trips(tmp_path):
    w = {"b": [np.arange(6, dtype=np.float32).reshape(2, 3)], "a": [], "c": [np.ones(2, np.float64)]}
    save_hdf5(tmp_path / "w.h5", w)
    back = load_hdf5(tmp_path / "w.h5", keep_empty=True, keep_dtype=True)
    assert list(back) == ["b", "a", "c"]   # the order written
    assert np.array_equal(back["b"][0], w["b"][0]) and back["c"][0].dtype == np.float64
    st = SolverStateContents(7, "w.h5", [np.ones((2, 2), np.float32)], 2)
    write_state(tmp_path / "s.solverstate.h5", st, ["p0"], {"e": np.arange(3)})
    got = read_state(tmp_path / "s.solverstate.h5")
    assert got.state.iter == 7 and got.param_names == ["p0"] and np.array_equal(got.extra["e"], np.arange(3))
    assert leftovers(tmp_path) == ["s.solverstate.h5", "w.h5"]


def test_cli_ignores_sigxfsz(tmp_path):
    """`ulimit -f` under a tool: the write fails with our error (exit 2), the process is not killed."""
    src = tmp_path / "in.caffemodel.h5"
    save_hdf5(src, {f"l{k}": [np.ones((50, 100), np.float32)] for k in range(10)})
    out = tmp_path / "out.caffemodel.h5"
    code = """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))
        from fcn_repro.convert import main
        sys.exit(main([sys.argv[1], "-o", sys.argv[2]]))
    """
    r = run_py(code, str(src), str(out))
    assert r.returncode == 2, (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}: can not write it") and "Traceback" not in r.stderr, r.stderr
    assert leftovers(tmp_path) == ["in.caffemodel.h5"]


_SLOW_WRITE = """
    import sys, time
    import numpy as np
    from fcn_repro.caffe import hdf5
    got = []
    if sys.argv[2:] == ["own-handler"]:
        import signal
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    n = [0]
    def progress(nbytes):          # a slow disk: each dataset takes a while
        n[0] += 1
        if n[0] == 2:
            print("WRITING", flush=True)
        time.sleep(0.05)
    w = {f"l{k}": [np.ones(1000, np.float32)] for k in range(400)}
    hdf5.save_hdf5(sys.argv[1], w, progress=progress)
    print("FINISHED", got, flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_h5_write_stops_the_run_and_leaves_nothing(tmp_path, sig):
    out = tmp_path / "w.caffemodel.h5"
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SLOW_WRITE), str(out)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "WRITING"
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        p.kill()
    assert "FINISHED" not in stdout
    if sig == signal.SIGINT:
        # an uncaught KeyboardInterrupt: Python exits by SIGINT
        assert p.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr, (p.returncode, stderr)
    else:
        assert p.returncode == -signal.SIGTERM, (p.returncode, stderr)
    assert leftovers(tmp_path) == []


def test_signal_with_a_handler_of_its_own_lets_the_write_finish(tmp_path):
    """A run's own "stop after this" handler still gets the signal, after the file is whole."""
    out = tmp_path / "w.caffemodel.h5"
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SLOW_WRITE), str(out), "own-handler"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "WRITING"
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0 and f"FINISHED [{int(signal.SIGINT)}]" in stdout, (stdout, stderr)
    assert len(load_hdf5(out)) == 400


def test_killed_h5_write_leaves_no_target(tmp_path):
    out = tmp_path / "w.caffemodel.h5"
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SLOW_WRITE), str(out)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "WRITING"
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
    finally:
        p.kill()
    assert not out.exists()   # made in memory: nothing at all on disk before the write of the whole image


# ---------------------------------------------------------------- HDF5 links

def _weights_with_link(path: Path, link) -> None:
    with h5py.File(path, "w") as f:
        d = f.create_group("data")
        d.create_group("conv").create_dataset("0", data=np.ones((2, 2), np.float32))
        d["evil"] = link


@pytest.mark.parametrize("kind", ["external", "soft", "external-fifo", "external-root"])
def test_h5_links_are_refused_not_followed(tmp_path, kind):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_group("g").create_dataset("0", data=np.full((2, 2), 7, np.float32))
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    path = tmp_path / "w.caffemodel.h5"
    if kind == "external":
        _weights_with_link(path, h5py.ExternalLink(str(other), "/g"))
    elif kind == "soft":
        _weights_with_link(path, h5py.SoftLink("/data/conv"))
    elif kind == "external-fifo":
        _weights_with_link(path, h5py.ExternalLink(str(fifo), "/g"))
    else:
        with h5py.File(path, "w") as f:
            f["data"] = h5py.ExternalLink(str(fifo), "/data")
    code = """
        import sys
        from fcn_repro.caffe import load_weights
        from fcn_repro.errors import HDF5WeightsError
        try:
            load_weights(sys.argv[1])
        except HDF5WeightsError as e:
            print("REFUSED", e.filename, e.h5path, e, flush=True)
    """
    r = run_py(code, str(path), timeout=60)   # a followed link to the FIFO would block here
    assert r.returncode == 0, r.stderr
    assert f"REFUSED {path}" in r.stdout
    at = "/data" if kind == "external-root" else "/data/evil"
    assert r.stdout.split()[2] == at
    assert ("soft link" if kind == "soft" else "external link") in r.stdout


def test_h5_state_with_external_link_is_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("i", data=np.array([5], np.int32))
    path = tmp_path / "s.solverstate.h5"
    write_state(path, SolverStateContents(3, "", [np.ones(2, np.float32)], 0))
    with h5py.File(path, "a") as f:
        del f["iter"]
        f["iter"] = h5py.ExternalLink(str(other), "/i")
    with pytest.raises(HDF5WeightsError, match="external link") as e:
        read_state(path)
    assert e.value.filename == str(path) and e.value.h5path == "/iter"


# ---------------------------------------------------------------- learning rates

@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-0.01", "1e39"])
def test_solver_file_refuses_bad_base_lr(tmp_path, value):
    from fcn_repro.solver import SolverError, read_solver
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "train.prototxt"\nbase_lr: {value}\n')
    with pytest.raises(SolverError, match="base_lr must be a finite number > 0") as e:
        read_solver(path)
    assert str(path) in str(e.value)


def test_train_cli_refuses_nan_base_lr_before_anything_is_written(tmp_path, capsys):
    from fcn_repro.train import main
    out = tmp_path / "run"
    assert main(["--net", "sample", "--iters", "2", "--base-lr", "nan", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--base-lr must be a finite number > 0" in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*.h5"))


def _rate(policy, it, **kw):
    from fcn_repro.solver import SolverParameter, learning_rate
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no RuntimeWarning from overflow either
        return learning_rate(SolverParameter(base_lr=0.01, lr_policy=policy, **kw), it)[0]


def test_lr_policies_edge_values_follow_float_math():
    f = np.float32
    # sigmoid: exp overflows to inf, 1 / (1 + inf) is 0 (Python's math.exp raises OverflowError)
    assert _rate("sigmoid", 10, gamma=-100.0, stepsize=0) == 0.0
    assert _rate("sigmoid", 10, gamma=100.0, stepsize=0) == float(f(0.01))
    # poly past max_iter: a negative base to a fractional power is NaN (Python gives a complex number)
    assert np.isnan(_rate("poly", 20, power=0.5, max_iter=10))
    assert _rate("poly", 20, power=2.0, max_iter=10) == float(f(0.01) * (f(1) - f(20) / f(10)) ** f(2))
    # inv: 1 + gamma * it == 0 -> 0 ** -power: inf for power > 0, 0 for power < 0
    assert _rate("inv", 1, gamma=-1.0, power=1.0) == float("inf")
    assert _rate("inv", 1, gamma=-1.0, power=-1.0) == 0.0
    assert np.isnan(_rate("inv", 2, gamma=-1.0, power=0.5))
    # step / exp: gamma ** n past float range is inf (Python's float ** int raises OverflowError)
    assert _rate("exp", 400, gamma=10.0) == float("inf")
    assert _rate("step", 40, gamma=1e10, stepsize=1) == float("inf")
    assert _rate("multistep", 5, gamma=0.1, stepvalue=[1]) == float(f(0.01) * 0.1)


def test_non_finite_lr_stops_training_at_its_iteration_before_an_update():
    import torch
    from fcn_repro.solver import CaffeSGD, SolverError, SolverParameter
    p = torch.nn.Parameter(torch.ones(3))
    opt = CaffeSGD([p], SolverParameter(base_lr=0.1, lr_policy="inv", gamma=-1.0, power=1.0))
    p.grad = torch.ones(3)
    opt.step()   # iteration 0: rate 0.1
    assert torch.allclose(p.detach(), torch.full((3,), 0.9))
    with pytest.raises(SolverError, match="iteration 1") as e:
        opt.step()   # iteration 1: 0 ** -1 = inf
    assert "inf" in str(e.value)
    assert torch.allclose(p.detach(), torch.full((3,), 0.9)) and opt.iter == 1


# ---------------------------------------------------------------- the plan of a huge Concat

class _CountingName(str):
    """A blob name that counts its comparisons: list searches compare, dict and set lookups hash."""
    compared = 0
    __hash__ = str.__hash__

    def __eq__(self, other):
        _CountingName.compared += 1
        return str.__eq__(self, other)


def test_plan_of_a_big_concat_is_linear_in_its_bottoms():
    """Timing-free: the liveness pass compares names O(n) times for an n-bottom Concat
    (the quadratic pass searched the Concat's drop list per bottom: ~n^2/2 comparisons;
    100k bottoms took ~150 s)."""
    from types import SimpleNamespace
    from fcn_repro.caffe.plan import make_plan

    def layer(name, bottoms, tops):
        return SimpleNamespace(name=name, bottom_names=bottoms, top_names=tops, inplace_capable=False)
    n = 4000
    x = _CountingName("x")
    names = [_CountingName(f"b{i}") for i in range(n)]
    layers = [layer(f"p{i}", [x], [names[i]]) for i in range(n)]
    layers += [layer("cat", names, [_CountingName("y")]), layer("out", [_CountingName("y")], [_CountingName("z")])]
    _CountingName.compared = 0
    plan = make_plan(layers, [x], ["z"], {})
    assert _CountingName.compared < 10 * n, _CountingName.compared
    assert sorted(plan[n].drop) == sorted(names)   # each bottom dropped after the Concat reads it
    assert plan[n - 1].drop == ["x"] and plan[n + 1].drop == ["y"]


def test_many_net_inputs_build(tmp_path):
    from fcn_repro.caffe import Net
    n = 3000
    txt = ('layer { name: "in" type: "Input"' + "".join(f' top: "s{i}"' for i in range(n))
           + ' input_param { shape { dim: 1 dim: 1 dim: 1 dim: 1 } } }\n'
           + 'layer { name: "cat" type: "Concat"' + "".join(f' bottom: "s{i}"' for i in range(n)) + ' top: "y" }\n')
    (tmp_path / "n.prototxt").write_text(txt)
    net = Net(tmp_path / "n.prototxt")
    assert net.inputs == [f"s{i}" for i in range(n)] and net.blob_shapes["y"] == (1, n, 1, 1)
    assert len(net.plan[0].drop) == n
    # the forward's check of its inputs is linear too (it searched the input list once per input:
    # 100k inputs took ~270 s)
    import torch
    net.inputs = [_CountingName(b) for b in net.inputs]
    feed = {f"s{i}": torch.full((1, 1, 1, 1), float(i)) for i in range(n)}
    _CountingName.compared = 0
    y = net(**feed)["y"]
    assert _CountingName.compared < 10 * n, _CountingName.compared
    assert torch.equal(y.flatten(), torch.arange(n, dtype=torch.float32))


# ---------------------------------------------------------------- op arguments

def test_op_arguments_accept_0d_integer_tensors_everywhere():
    import torch
    from fcn_repro import ops
    t = torch.tensor
    x, w, b = torch.randn(1, 2, 3, 3), torch.randn(2, 1, 2, 2), torch.randn(2)
    want = ops.deconv2d(x, w, b, 2, 1, 1, 2)
    for fn in (ops.deconv2d, ops.deconv2d_ref):
        assert torch.equal(fn(x, w, b, t(2), t(1), t(1), t(2)), want)
        assert torch.equal(fn(x, w, b, (t(2), np.int64(2)), t([1, 1]), np.array(1), t(2)), want)
    crop = ops.deconv2d_crop(x, w, b, t(2), t(1), t(1), t(2), offsets=t(1), out_size=(t(3), 3))
    assert torch.equal(crop, want[:, :, 1:4, 1:4])
    a, bb = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 6, 5)
    for fn in (ops.crop_sum, ops.crop_sum_ref):
        assert torch.equal(fn(a, bb, t(1), (t(0.5), 2)), a * 0.5 + bb[:, :, 1:4, 1:4] * 2)
    for bad in (t(2.0), t(True), t([1, 2, 3]), "2"):
        with pytest.raises(ValueError, match="fcn_repro::deconv2d: stride must be an int"):
            ops.deconv2d(x, w, b, stride=bad)


@pytest.mark.parametrize("coeffs", [(1.0,), [1.0, 2.0, 3.0], (), 2.0, ("a", "b"), (True, 1.0)])
def test_crop_sum_coefficients_are_exactly_two_numbers(coeffs):
    import torch
    from fcn_repro import ops
    a, bb = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 6, 5)
    for fn in (ops.crop_sum, ops.crop_sum_ref):
        with pytest.raises(ValueError, match=r"fcn_repro::crop_sum: coeffs must"):
            fn(a, bb, 1, coeffs)


# ---------------------------------------------------------------- weights files truncated by another program

_TRUNCATED_AFTER = """
    import os, sys
    import numpy as np
    from fcn_repro.caffe import load_weights
    from fcn_repro.caffe.caffemodel import layers_from_weights, write_caffemodel
    from fcn_repro.caffe.solverstate import SolverStateContents, read_solverstate, write_solverstate
    p, s = sys.argv[1], sys.argv[2]
    write_caffemodel(p, layers_from_weights({"a": [np.ones((300, 1000), np.float32)],
                                             "b": [np.full((300, 1000), 2, np.float32)]}))
    write_solverstate(s, SolverStateContents(3, "x", [np.full((300, 1000), 3, np.float32)], 0))
    w = load_weights(p)
    st = read_solverstate(s)
    os.truncate(p, 100)   # another program rewrites both files in place
    os.truncate(s, 100)
    print(float(w["a"][0].sum()), float(w["b"][0].sum()), float(st.history[0].sum()), flush=True)
"""


def test_weights_truncated_after_they_were_read_are_still_whole(tmp_path):
    """A memory-mapped file truncated under the reader kills it with SIGBUS at the next read of a
    vanished page; the readers hold the file's bytes instead."""
    r = run_py(_TRUNCATED_AFTER, str(tmp_path / "w.caffemodel"), str(tmp_path / "s.solverstate"))
    assert r.returncode == 0, (r.returncode, r.stderr)   # -7: SIGBUS
    assert r.stdout.split() == ["300000.0", "600000.0", "900000.0"]


@pytest.mark.parametrize("kind", ["caffemodel", "solverstate"])
def test_weights_shrinking_while_read_are_our_error(tmp_path, monkeypatch, kind):
    from fcn_repro.caffe import load_weights
    from fcn_repro.caffe.caffemodel import layers_from_weights, write_caffemodel
    from fcn_repro.caffe.solverstate import read_solverstate, write_solverstate
    from fcn_repro.errors import CaffeModelError

    path = tmp_path / f"w.{kind}"
    if kind == "caffemodel":
        write_caffemodel(path, layers_from_weights({"a": [np.ones((100, 100), np.float32)]}))
        read = load_weights
    else:
        write_solverstate(path, SolverStateContents(3, "x", [np.ones((100, 100), np.float32)], 0))
        read = read_solverstate
    real = os.readv

    def truncating(fd, buffers):   # the writer strikes between the size check and the read
        os.truncate(path, 1000)
        return real(fd, buffers)
    monkeypatch.setattr(os, "readv", truncating)
    with pytest.raises(CaffeModelError, match="shrank from") as ei:
        read(path)
    assert ei.value.filename == str(path) and "1,000 bytes while it was read" in str(ei.value)


# ---------------------------------------------------------------- export: opset and static size

_TINY = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_export_writes_the_opset_asked_for_or_refuses(tmp_path):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from fcn_repro.caffe import Net
    from fcn_repro.export import ExportError, to_onnx

    net = Net(_TINY)
    out = tmp_path / "n.onnx"
    assert to_onnx(net, out, opset=20).opset == 20
    assert [o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")] == [20]
    out.unlink()
    for bad in (17, 0):   # the exporter can not go down to 17 for this net (it used to write 18, saying 17)
        with pytest.raises(ExportError, match=f"opset {bad}"):
            to_onnx(net, out, opset=bad)
    assert leftovers(tmp_path) == []


def test_export_static_size_is_checked_against_the_blob_budget(tmp_path, capsys):
    """A refusal before the example input (2 x 3 x 100000 x 100000 floats: 240 GB) is allocated,
    naming the layer whose blob is over; a size whose input fits but whose conv1 does not as well."""
    pytest.importorskip("onnxscript")
    from fcn_repro.caffe.layers.base import BlobLimitError
    from fcn_repro.export import to_onnx
    from fcn_repro.export.__main__ import main

    out = tmp_path / "n.onnx"
    assert main(["sample", "-o", str(out), "--static", "100000x100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "layer 'data'" in err and "blob_elements" in err
    from fcn_repro.caffe import Net
    net = Net(_TINY)
    with limits.override(blob_elements=2 * 3 * 100 * 100):   # the input (batch 2) fits, the conv's 8 channels not
        with pytest.raises(BlobLimitError, match="layer 'conv'.*top blob 'conv' at 100x100 of shape \\(2, 8, 100"):
            to_onnx(net, out, static=(100, 100))
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- LRN windows wider than the blob

@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_window_wider_than_the_blob_is_the_whole_blob(region):
    """local_size 2,000,001 on a (2, 7, 6, 5) blob: no 4-million-channel scratch, no 2-million-slice loop,
    the same numbers as the whole blob summed (and Caffe's divisor n, n * n)."""
    import torch
    from fcn_repro.caffe import Net
    n, alpha, beta, k = 2_000_001, 0.7, 0.6, 1.5
    txt = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 7 dim: 6 dim: 5 } } }\n'
           f'layer {{ name: "l" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {n} alpha: {alpha} '
           f'beta: {beta} k: {k} norm_region: {region} }} }}\n')
    net = Net(txt).double()
    x = torch.randn(2, 7, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t0 = time.monotonic()
    y = net(x=x)["y"]
    assert time.monotonic() - t0 < 5
    sq = x * x
    if region == "ACROSS_CHANNELS":
        scale = k + alpha / n * sq.sum(1, keepdim=True)
    else:
        scale = 1 + alpha * sq.sum((2, 3), keepdim=True) / (n * n)
    torch.testing.assert_close(y, x * scale ** -beta, rtol=1e-12, atol=0)


def test_lrn_scratch_is_inside_the_blob_budget():
    from fcn_repro.caffe import Net
    from fcn_repro.caffe.layers.base import BlobLimitError, LayerError
    txt = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 64 dim: 100 dim: 100 } } }\n'
           'layer { name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: %d } }\n')
    with limits.override(blob_elements=64 * 100 * 100 + 4 * 100 * 100):   # the blob and two channels each side
        Net(txt % 5)
        with pytest.raises(BlobLimitError, match="layer 'l'.*scratch .*shape \\(1, 70, 100, 100\\)"):
            Net(txt % 7)
        with pytest.raises(BlobLimitError, match="padded by 63 channels.*shape \\(1, 190, 100, 100\\)"):
            Net(txt % 100_001)
    with pytest.raises(LayerError, match="at most 2\\^31 - 1"):
        Net(txt % (2 ** 31 + 1))


# ---------------------------------------------------------------- run files and manifests read to a bound

def test_a_hostile_training_log_is_read_to_a_bound_and_its_odd_lines_dropped(tmp_path):
    from fcn_repro.trainer import Trainer, TrainError
    log = tmp_path / "log.jsonl"
    log.write_text('{"iter": 1, "loss": 2.0}\n[1]\nnull\n"s"\n{"iter": "x"}\n{"iter": 1e400}\n{"iter": [2]}\n'
                   '{"iter": 3}\n{"iter": 9}\n{"iter": 4, "lo')   # the last line torn by a crash
    assert [r["iter"] for r in Trainer._read_log(log, 5)] == [1, 3]
    with limits.override(read_bytes=50):
        with pytest.raises(TrainError, match="training log") as ei:
            Trainer._read_log(log, 5)
    assert ei.value.filename == str(log)


def test_a_planted_huge_manifest_is_refused_not_read(tmp_path):
    from fcn_repro import hub
    m = tmp_path / "manifest.json"
    m.write_text('{"files": {}, "pad": "' + "x" * 5000 + '"}')
    assert hub.load_manifest(m)["files"] == {}
    with limits.override(text_bytes=1000):
        with pytest.raises(hub.HubError, match="manifest of this size") as ei:
            hub.load_manifest(m)
    assert ei.value.filename == str(m)
    m.write_text("[]")
    with pytest.raises(hub.HubError, match="not a manifest"):
        hub.load_manifest(m)


# ---------------------------------------------------------------- every reader: a FIFO is refused, not waited on

_FIFO_READERS = """
    import os, sys
    from fcn_repro.errors import FcnReproError
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "state":
        from fcn_repro.caffe.solverstate import read_state as read
    elif kind == "image":
        from fcn_repro.data.transforms import read_image as read
    elif kind == "label":
        from fcn_repro.data.transforms import read_label_png as read
    elif kind == "mat":
        from fcn_repro.data.base import read_mat
        read = lambda p: read_mat(p, "GTcls")
    else:
        from fcn_repro.caffe import load_weights as read
    try:
        read(path)
    except FcnReproError as e:
        print("ours:", e, flush=True)
"""


@pytest.mark.parametrize("kind, name", [("state", "s.solverstate.h5"), ("state", "s.solverstate"),
                                        ("image", "photo.png"), ("label", "l.png"), ("mat", "l.mat"),
                                        ("weights", "w.caffemodel.h5")])
def test_a_fifo_in_place_of_any_input_is_refused_at_once(tmp_path, kind, name):
    """Opening a FIFO for reading waits for a writer: each reader refuses it before opening
    (train --resume, infer, evaluate's labels, SBD's .mat labels, weights)."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    r = run_py(_FIFO_READERS, kind, str(fifo), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ours: {fifo}: is a pipe (FIFO)"), r.stdout


def test_a_corrupt_mat_file_is_that_files_error(tmp_path):
    pytest.importorskip("scipy")
    from fcn_repro.data.base import read_mat
    from fcn_repro.errors import FcnReproError
    bad = tmp_path / "l.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 2)
    with pytest.raises(FcnReproError, match="cannot read label") as ei:
        read_mat(bad, "GTcls")
    assert ei.value.filename == str(bad)


# ---------------------------------------------------------------- second derivatives through the loss

@pytest.mark.parametrize("ignore", [None, 1])
def test_softmax_loss_second_derivative_is_right(ignore):
    """The loss's own autograd Function kept the softmax as a constant for its backward: a second
    derivative (create_graph=True) came out wrong without a word. It is checked by gradgradcheck."""
    import torch
    from fcn_repro.caffe import Net
    loss_param = f"loss_param {{ ignore_label: {ignore} }}" if ignore is not None else ""
    txt = ('layer { name: "x" type: "Input" top: "x" top: "l" input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } '
           'shape { dim: 2 dim: 1 dim: 2 dim: 2 } } }\n'
           f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "l" top: "loss" {loss_param} }}\n')
    net = Net(txt, phase="TRAIN").double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(0))
    lab = torch.tensor([0.0, 1, 2, 1, 2, 0, 1, 1], dtype=torch.float64).reshape(2, 1, 2, 2)

    def loss(x):
        net(x=x, l=lab)
        return net.loss
    assert torch.autograd.gradcheck(loss, (x,))
    assert torch.autograd.gradgradcheck(loss, (x,))


@pytest.mark.parametrize("field", ["momentum", "weight_decay"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_solver_file_refuses_non_finite_update_factors(tmp_path, field, value):
    from fcn_repro.solver import SolverError, read_solver
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "train.prototxt"\nbase_lr: 0.01\n{field}: {value}\n')
    with pytest.raises(SolverError, match=f"{field} must be a finite number") as e:
        read_solver(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("key", ["lr_mult", "decay_mult"])
def test_a_non_finite_lr_mult_is_refused_before_any_step(key):
    """One parameter's lr_mult: inf would make its weights NaN at the first update, without a word."""
    import torch
    from fcn_repro.caffe import Net
    from fcn_repro.solver import CaffeSGD, SolverError, SolverParameter, param_groups
    txt = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }\n'
           f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" param {{ {key}: inf }} '
           'convolution_param { num_output: 1 kernel_size: 1 } }\n')
    net = Net(txt, phase="TRAIN")
    with pytest.raises(SolverError, match=f"parameter c/0: {key} must be a finite number, got inf"):
        CaffeSGD(param_groups(net), SolverParameter(base_lr=0.01))
    assert torch.isfinite(net.params["c"][0]).all()


# ---------------------------------------------------------------- a tool's outputs never replace its inputs

@pytest.mark.parametrize("how", ["-o", "--json", "-o-link"])
def test_convert_never_replaces_its_input(tmp_path, capsys, how):
    from fcn_repro.convert import main
    src = tmp_path / "in.caffemodel.h5"
    save_hdf5(src, {"l": [np.ones((2, 3), np.float32)]})
    before = src.read_bytes()
    link = tmp_path / "link.caffemodel.h5"
    link.symlink_to(src)
    other = tmp_path / "out.caffemodel"
    argv = {"-o": [str(src), "-o", str(src)],
            "--json": [str(src), "-o", str(other), "--json", str(src)],
            "-o-link": [str(link), "-o", str(src)]}[how]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {src}: is one of the inputs"), err
    assert src.read_bytes() == before and not other.exists()   # refused before any work
    assert leftovers(tmp_path) == ["in.caffemodel.h5", "link.caffemodel.h5"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
def test_score_file_temporaries_are_named_with_the_writers_start(tmp_path):
    """A tiled run's score file is named as every other temporary (pid and start time): a leftover of
    a killed run whose pid now belongs to a live process is still removed by the next run."""
    from fcn_repro import outputs
    from fcn_repro.scorefile import ScoreFile
    sf = ScoreFile(tmp_path, (2, 3, 4))
    try:
        name = os.path.basename(sf.path)
        assert name.startswith(f".scores.{outputs._writer_tag()}.") and name.endswith(outputs.TEMP_SUFFIX)
        parent = os.getppid()   # alive: a killed run's pid, reused by it (another start time)
        stale = tmp_path / name.replace(outputs._writer_tag(), f"{parent}-{outputs._start_ticks(parent) + 7}")
        stale.write_bytes(b"half")
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        assert outputs.clean_stale(tmp_path / "scores") == [str(stale)] and os.path.exists(sf.path)
    finally:
        sf.discard()
    assert leftovers(tmp_path) == []


def test_evaluate_json_never_replaces_a_file_of_the_dataset(tmp_path):
    from test_evaluate import make_sample_voc
    from fcn_repro import evaluate as ev
    data = make_sample_voc(tmp_path / "voc")
    label = sorted((data / "SegmentationClass").iterdir())[0]
    lst = data / "ImageSets" / "Segmentation" / "val.txt"
    before = {p: p.read_bytes() for p in (label, lst)}
    for target in (label, lst):
        with pytest.raises(OutputError, match="is one of the inputs"):
            ev.evaluate(net="sample", data=str(data), split="val", progress=False, json_path=str(target))
    assert {p: p.read_bytes() for p in (label, lst)} == before
