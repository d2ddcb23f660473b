"""The net as a traced program: positional form, torchvision-style adapter,
torch.export with dynamic batch/height/width (saved, loaded, run at other
sizes, against Caffe's fixture scores), torch.compile(dynamic=True) without
graph breaks or size recompiles, and torch.jit.trace refused instead of
silently freezing the example's size. (The ONNX side: test_export_onnx.py.)
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fcn_repro.caffe.layers.pooling import Pooling
from fcn_repro.caffe.net import Net, NetError
from fcn_repro.caffe.shapes import caffe_pool_out
from fcn_repro.export import ExportError, TorchvisionStyle, export_program

from conftest import caffe_fixture


def _net(name: str) -> Net:
    return Net(caffe_fixture(f"{name}.prototxt"), caffe_fixture(f"{name}.caffemodel"))


def _rel(a: torch.Tensor, b) -> float:
    b = torch.as_tensor(b)
    return float((a.detach() - b).abs().max() / b.abs().max())


SMALL = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "apool" type: "Pooling" bottom: "pool" top: "apool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "apool" top: "up"
        convolution_param { num_output: 4 kernel_size: 8 stride: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { offset: 3 } }
"""


# ------------------------------------------------------------------ positional form and adapter

def test_positional_form_equals_keyword_form():
    net = _net("fcn16s")
    x = torch.randn(1, 3, 41, 57)
    with torch.no_grad():
        a, b = net(x), net(data=x)
    assert list(a) == ["score"] and torch.equal(a["score"], b["score"])


def test_positional_form_multi_input_in_net_inputs_order():
    net = _net("nyud-fcn32s-color-hha")
    assert net.inputs == ["color", "hha"]
    c, h = torch.randn(1, 3, 40, 44), torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        assert torch.equal(net(c, h)["score"], net(color=c, hha=h)["score"])
        assert torch.equal(net(c, hha=h)["score"], net(color=c, hha=h)["score"])


def test_positional_form_errors():
    net = _net("fcn16s")
    x = torch.randn(1, 3, 20, 20)
    with pytest.raises(NetError, match=r"in this order"):
        net(x, x)
    with pytest.raises(NetError, match=r"in this order"):
        net(x, data=x)


def test_torchvision_style_adapter():
    net = _net("fcn16s")
    model = TorchvisionStyle(net)
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        out = model(x)
        assert list(out) == ["out"] and torch.equal(out["out"], net(data=x)["score"])
    assert out["out"].shape == (2, 21, 37, 45)


def test_torchvision_style_adapter_multi_output():
    net = _net("siftflow-fcn8s")
    with pytest.raises(ValueError, match="score_geo.*score_sem|choose one"):
        TorchvisionStyle(net)
    with pytest.raises(ValueError, match="not an output"):
        TorchvisionStyle(net, out="fc7")
    model = TorchvisionStyle(net, out="score_sem", aux="score_geo")
    x = torch.randn(1, 3, 33, 29)
    with torch.no_grad():
        out, ref = model(x), net(x)
    assert torch.equal(out["out"], ref["score_sem"]) and torch.equal(out["aux"], ref["score_geo"])


# ------------------------------------------------------------------ jit.trace

def test_jit_trace_is_refused_not_frozen():
    net = _net("fcn16s")
    with pytest.raises(NetError, match=r"torch\.jit\.trace.*torch\.export"):
        torch.jit.trace(TorchvisionStyle(net), torch.randn(1, 3, 40, 48), strict=False)


# ------------------------------------------------------------------ Caffe's pooled size, guard-free

def test_caffe_pool_out_bound_form_equals_caffe_rule():
    # Caffe's rule as written in PoolingLayer::Reshape: compute the ceil/floor
    # size, then drop a last window that starts at or after H + pad.
    def rule(size, k, s, p, ceil, any_pad):
        num = size + 2 * p - k
        out = (-((-num) // s) if ceil else num // s) + 1
        if any_pad and (out - 1) * s >= size + p:
            out -= 1
        return out

    n = 0
    for size in range(1, 30):
        for k in range(1, 7):
            for s in range(1, 7):
                for p in range(k):
                    if size + 2 * p < k:
                        continue
                    for ceil in (False, True):
                        for any_pad in (False, True):
                            assert caffe_pool_out(size, k, s, p, ceil, any_pad) == rule(size, k, s, p, ceil, any_pad)
                            n += 1
    assert n > 10000


# ------------------------------------------------------------------ torch.export

def _check_program_roundtrip(net: Net, io_npz) -> None:
    program = export_program(net)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    for s in ("s0", "s1"):  # 67x91 and 120x100; the example was 96x112, batch 2
        xs = [torch.from_numpy(io_npz[f"{s}/{b}"]) for b in net.inputs]
        got = loaded(*xs)
        with torch.no_grad():
            ref = net(*xs)
        assert list(got) == list(net.outputs)
        for o in net.outputs:
            assert got[o].shape == ref[o].shape
            assert _rel(got[o], ref[o]) < 1e-5
            assert _rel(got[o], io_npz[f"{s}/{o}"]) < 1e-5
            assert torch.equal(got[o].argmax(1), ref[o].argmax(1))
    # another batch size at an odd size
    xs = [torch.randn(3, io_npz[f"s0/{b}"].shape[1], 51, 77) for b in net.inputs]
    got = loaded(*xs)
    with torch.no_grad():
        ref = net(*xs)
    for o in net.outputs:
        assert got[o].shape == (3,) + tuple(ref[o].shape[1:]) and _rel(got[o], ref[o]) < 1e-5


# Two inputs (NYUD color + HHA) and Caffe's scores at two sizes; every other
# fixture net's program is saved, loaded and run in test_export_onnx.py.
@pytest.mark.parametrize("name", ["nyud-fcn32s-color-hha"])
def test_torch_export_dynamic_save_load_run(name):
    net = _net(name)
    _check_program_roundtrip(net, np.load(caffe_fixture(f"{name}.io.npz")))


def test_torch_export_padded_max_and_ave_pooling_any_size():
    torch.manual_seed(0)
    net = Net(SMALL, seed=1)
    program = export_program(net).module()
    for h, w in [(9, 9), (10, 13), (17, 6), (31, 32)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            ref = net(x)["score"]
        got = program(x)["score"]
        assert got.shape == ref.shape == (2, 4, h, w)
        assert _rel(got, ref) < 1e-5


def test_pooling_symbolic_path_equals_caffe_rule_under_export():
    # The traced pooling (explicit padding, sizes from the symbolic input size)
    # against the eager layer, at sizes where Caffe's padded-window rule drops
    # the last window and where it does not.
    net = Net(SMALL, seed=2)
    pool = net.layer("pool")
    assert isinstance(pool, Pooling)

    class One(torch.nn.Module):
        def forward(self, x):
            return pool(x)[0]

    program = torch.export.export(One(), (torch.randn(2, 4, 12, 14),),
                                  dynamic_shapes=({0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC,
                                                   3: torch.export.Dim.DYNAMIC},)).module()
    for h in range(2, 12):
        x = torch.randn(1, 4, h, h + 3)
        ref = pool(x)[0]
        assert ref.shape[2] == caffe_pool_out(h, 3, 2, 1, True, True)
        assert torch.equal(program(x), ref)


def test_export_refuses_train_net_and_loss_layers():
    train = Net(caffe_fixture("fcn16s.train.prototxt"), phase="TRAIN")
    with pytest.raises(ExportError, match=r"TRAIN phase.*phase='TEST'"):
        export_program(train)
    with_loss = Net(caffe_fixture("fcn16s.train.prototxt"), phase="TEST",
                    input_shapes={"data": (1, 3, 64, 64), "label": (1, 1, 64, 64)})
    with pytest.raises(ExportError, match=r"layer 'loss': type SoftmaxWithLoss has no export.*deploy"):
        export_program(with_loss)


# ------------------------------------------------------------------ torch.compile

def test_torch_compile_dynamic_no_graph_break_no_size_recompile():
    import torch._dynamo.testing

    net = _net("fcn8s")
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(net)(torch.randn(2, 3, 120, 100))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(net, dynamic=True, backend=counter)
    io_npz = np.load(caffe_fixture("fcn8s.io.npz"))
    with torch.no_grad():
        # Sizes above torch's own conv layout heuristic's threshold, so that
        # only our code could cause a recompile.
        for h, w in [(120, 100), (97, 131), (121, 99)]:
            y = compiled(torch.randn(1, 3, h, w))["score"]
            assert y.shape == (1, 21, h, w)
        y = compiled(torch.from_numpy(io_npz["s1/data"]))["score"]
    assert _rel(y, io_npz["s1/score"]) < 1e-5
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_saved_program_loads_in_a_fresh_process_with_the_readme_import(tmp_path):
    """The README's recipe: a saved .pt2 holds our custom ops (fcn_repro::deconv2d_crop, ...);
    a fresh process loads and runs it after ``import fcn_repro.ops``, which registers them."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    torch.manual_seed(0)
    net = Net(SMALL, seed=1)
    program = export_program(net)
    assert any(str(n.target).startswith("fcn_repro.") for n in program.graph.nodes), "no custom op in the program"
    torch.export.save(program, tmp_path / "small.pt2")
    x = torch.randn(2, 3, 13, 17)
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import torch
        import fcn_repro.ops   # registers the custom ops the program calls
        program = torch.export.load({str(tmp_path / 'small.pt2')!r})
        out = program.module()(torch.load({str(tmp_path / 'x.pt')!r}))
        torch.save(out["score"], {str(tmp_path / 'out.pt')!r})
        """)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        ref = net(x)["score"]
    assert _rel(torch.load(tmp_path / "out.pt"), ref) < 1e-6
    # without that import the ops are unknown: the import is what the recipe needs
    r = subprocess.run([sys.executable, "-c", code.replace("import fcn_repro.ops", "pass")], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode != 0 and "fcn_repro" in r.stderr
