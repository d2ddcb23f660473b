"""The net builder: graph rules, blob bookkeeping, fusion plan, errors, weights, transplant."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from conftest import caffe_fixture
from fcn_repro.caffe import (
    LayerError, Net, NetError, WeightsError, load_weights, parse_prototxt, transplant,
)
from fcn_repro.caffe.layers.relu import ReLU


def inp(name, *dims):
    d = " ".join(f"dim: {x}" for x in dims)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {d} }} }} }}\n'


def conv(name, bottom, top, n, k=3, pad=1, extra=""):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" {extra} '
            f'convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} '
            f'weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.3 }} }} }}\n')


def relu(name, bottom, top=None):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{bottom}" top: "{top or bottom}" }}\n'


CHAIN = (inp("data", 1, 3, 12, 10) + conv("conv1", "data", "conv1", 4) + relu("relu1", "conv1")
         + conv("conv2", "conv1", "conv2", 5) + relu("relu2", "conv2")
         + conv("conv3", "conv2", "conv3", 2))


# ------------------------------------------------------------------ structure

def test_phase_stage_level_rules():
    text = (inp("data", 1, 2, 5, 5)
            + relu("train_only", "data", "a") .replace("}\n", "include { phase: TRAIN } }\n", 1)
            + relu("not_test", "data", "b").replace("}\n", "exclude { phase: TEST } }\n", 1)
            + relu("test_only", "data", "c").replace("}\n", "include { phase: 1 } }\n", 1)
            + relu("staged", "data", "d").replace("}\n", 'include { stage: "deploy" } }\n', 1)
            + relu("leveled", "data", "e").replace("}\n", "include { min_level: 2 } }\n", 1)
            + relu("not_staged", "data", "f").replace("}\n", 'exclude { stage: "deploy" } }\n', 1))
    assert Net(text).layer_names == ["data", "test_only", "not_staged"]
    assert Net(text, phase="TRAIN").layer_names == ["data", "train_only", "not_test", "not_staged"]
    assert Net(text, stages=["deploy"], level=3).layer_names == ["data", "test_only", "staged", "leveled"]
    with pytest.raises(NetError, match="either include or exclude"):
        Net(inp("data", 1, 1, 2, 2) + relu("r", "data").replace("}\n", "include { phase: TEST } exclude { phase: TRAIN } }\n", 1))
    with pytest.raises(NetError, match="TRAIN or TEST"):
        Net(CHAIN, phase="VAL")


def test_unknown_type_names_file_layer_and_type(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text(inp("data", 1, 1, 2, 2) + 'layer { name: "warp" type: "SpatialTransformer" bottom: "data" top: "w" }\n')
    with pytest.raises(NetError) as ei:
        Net(p)
    msg = str(ei.value)
    assert "bad.prototxt" in msg and "'warp'" in msg and "'SpatialTransformer'" in msg


def test_graph_errors():
    with pytest.raises(NetError, match=r"layer 'r'.*bottom blob 'nope' is not produced by any earlier layer"):
        Net(inp("data", 1, 1, 2, 2) + relu("r", "nope", "x"))
    with pytest.raises(NetError, match="produced by multiple sources"):
        Net(inp("data", 1, 1, 2, 2) + relu("r1", "data", "x") + relu("r2", "data", "x"))
    with pytest.raises(NetError, match="two layers are named 'r'"):
        Net(inp("data", 1, 1, 2, 2) + relu("r", "data", "x") + relu("r", "x", "y"))
    with pytest.raises(LayerError, match="exactly 2 bottom"):
        Net(inp("data", 1, 1, 2, 2) + 'layer { name: "c" type: "Crop" bottom: "data" top: "c" }')
    with pytest.raises(NetError, match="does not exist"):
        Net("/no/such/net.prototxt")


def test_forward_input_and_runtime_errors():
    net = Net(CHAIN)
    with pytest.raises(NetError, match=r"missing \['data'\]"):
        net()
    with pytest.raises(NetError, match=r"unknown \['label'\]"):
        net(data=torch.zeros(1, 3, 4, 4), label=torch.zeros(1))
    with pytest.raises(LayerError) as ei:
        net(data=torch.zeros(1, 5, 4, 4))  # wrong channel count
    msg = str(ei.value)
    assert "'conv1'" in msg and "(Convolution)" in msg and "'data' (1, 5, 4, 4)" in msg


def test_python_data_layers_become_inputs():
    text = ('layer { name: "data" type: "Python" top: "data" top: "label" include { phase: TRAIN } '
            'python_param { module: "voc_layers" layer: "SBDDSegDataLayer" } }\n'
            'layer { name: "data" type: "Python" top: "data" top: "label" include { phase: TEST } '
            'python_param { module: "voc_layers" layer: "VOCSegDataLayer" } }\n'
            + conv("score", "data", "score", 4)
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" '
              'loss_param { ignore_label: 255 normalize: false } }\n')
    for phase in ("TRAIN", "TEST"):
        net = Net(text, phase=phase)
        assert net.inputs == ["data", "label"] and net.outputs == ["loss"]
        assert net.params["score"][0].shape == (4, 3, 3, 3)  # FCN's data top: 3 channels
        out = net(data=torch.randn(1, 3, 7, 9), label=torch.randint(0, 4, (1, 1, 7, 9)).float())
        assert out["loss"].shape == ()
    # a data top whose channel count is not known needs input_shapes
    text2 = text.replace('top: "data"', 'top: "img"').replace('bottom: "data"', 'bottom: "img"')
    with pytest.raises(LayerError, match="input_shapes"):
        Net(text2)
    assert Net(text2, input_shapes={"img": (1, 5, 8, 8)}).params["score"][0].shape == (4, 5, 3, 3)
    with pytest.raises(LayerError, match="not a data layer"):
        Net(inp("data", 1, 1, 2, 2) + 'layer { name: "p" type: "Python" bottom: "data" top: "x" }')


def test_v1_and_message_inputs():
    v1 = ('name: "v1" input: "data" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5\n'
          'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2 '
          'weight_decay: 1 weight_decay: 0 convolution_param { num_output: 3 kernel_size: 3 } }\n'
          'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n')
    net = Net(v1)
    assert net.inputs == ["data"] and net.layer_types == ["Input", "Convolution", "ReLU"]
    assert net.param_specs["conv"] == [(1.0, 1.0), (2.0, 0.0)]
    net2 = Net(parse_prototxt(v1))
    assert net2.layer_names == net.layer_names
    from fcn_repro.caffe.prototxt import parse_text
    assert Net(parse_text(v1)).layer_names == net.layer_names  # a not-yet-upgraded Message


def test_outputs_are_unconsumed_blobs_sorted_like_caffe():
    text = (inp("data", 1, 2, 4, 4) + inp("unused", 1, 1, 1, 1) + inp("gone", 1, 1, 1, 1)
            + relu("zr", "data", "z") + relu("ar", "data", "a") + relu("ar2", "a")
            + 'layer { name: "s" type: "Silence" bottom: "gone" }\n')
    net = Net(text)
    assert net.outputs == ["a", "unused", "z"]
    out = net(data=torch.randn(1, 2, 4, 4), unused=torch.ones(1, 1, 1, 1), gone=torch.ones(1, 1, 1, 1))
    assert list(out) == ["a", "unused", "z"]


def test_inplace_blob_semantics_with_keep_blobs():
    net = Net(CHAIN, keep_blobs=True)
    x = torch.randn(1, 3, 12, 10)
    with torch.no_grad():
        net(data=x)
    pre = net.layer_tops["conv1"][0]
    assert (pre < 0).any()
    # Caffe: after the forward, blob conv1 holds the ReLU output
    assert torch.equal(net.blobs["conv1"], torch.relu(pre))
    assert set(net.blobs) == {"data", "conv1", "conv2", "conv3"}
    net.keep_blobs = False
    assert net.blobs == {}
    with torch.no_grad():
        net(data=x)
    assert net.blobs == {}


def test_params_specs_sharing_and_lr_mult_zero():
    text = (inp("data", 1, 3, 6, 6)
            + conv("a", "data", "a", 4, extra='param { name: "w" lr_mult: 2 } param { lr_mult: 0 decay_mult: 0 }')
            + conv("b", "data", "b", 4, extra='param { name: "w" lr_mult: 2 }')
            + 'layer { name: "d" type: "Deconvolution" bottom: "a" top: "d" param { lr_mult: 0 } '
              'convolution_param { num_output: 2 kernel_size: 4 stride: 2 bias_term: false } }\n')
    net = Net(text)
    assert net.params["a"][0] is net.params["b"][0]
    assert net.params["a"][1] is not net.params["b"][1]
    assert net.param_specs["a"] == [(2.0, 1.0), (0.0, 0.0)]
    assert net.param_specs["b"] == [(2.0, 1.0), (1.0, 1.0)]
    assert [tuple(p.shape) for p in net.params["d"]] == [(4, 2, 4, 4)]  # (Cin, Cout, k, k)
    # Caffe computes no gradient for lr_mult 0
    assert not net.params["a"][1].requires_grad and not net.params["d"][0].requires_grad
    assert net.params["a"][0].requires_grad and net.params["b"][1].requires_grad
    assert len(list(net.parameters())) == 4  # the shared blob counted once
    with pytest.raises(NetError, match="shares parameter 'w'.*shapes differ"):
        Net(inp("data", 1, 3, 6, 6) + conv("a", "data", "a", 4, extra='param { name: "w" }')
            + conv("b", "a", "b", 4, extra='param { name: "w" }'))
    with pytest.raises(NetError, match="3 param specs but only 2"):
        Net(inp("data", 1, 3, 6, 6) + conv("a", "data", "a", 4, extra="param {} param {} param {}"))


def test_loss_weight_on_any_top():
    text = inp("data", 1, 2, 3, 3) + relu("r", "data", "y").replace("}\n", "loss_weight: 0.5 }\n", 1)
    net = Net(text)
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    out = net(data=x)
    torch.testing.assert_close(net.loss, 0.5 * out["y"].sum())
    net.loss.backward()
    torch.testing.assert_close(x.grad, 0.5 * (x > 0).float())
    net = Net(CHAIN)
    net(data=torch.randn(1, 3, 4, 4))
    assert net.loss is None


def test_fillers_and_seed():
    a, b = Net(CHAIN, seed=3), Net(CHAIN, seed=3)
    for la in a.params:
        for pa, pb in zip(a.params[la], b.params[la]):
            assert torch.equal(pa, pb) and pa.abs().sum() > 0
    # no filler named: Caffe's default constant 0
    net = Net(inp("data", 1, 3, 4, 4) + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
              "convolution_param { num_output: 2 kernel_size: 1 } }")
    assert all(float(p.detach().abs().sum()) == 0 for p in net.params["c"])


# --------------------------------------------------------------- memory, speed

def test_intermediate_blobs_are_freed():
    net = Net(CHAIN)
    refs = {}
    for m in net.modules():
        if type(m).__name__ == "Convolution":
            m.register_forward_hook(lambda mod, a, o: refs.__setitem__(mod.name, weakref.ref(o[0])))
    seen = {}

    def check(mod, args):
        gc.collect()
        seen[mod.name] = refs["conv1"]() is None
    net.layer("conv3").register_forward_pre_hook(check)
    with torch.no_grad():
        net(data=torch.randn(1, 3, 12, 10))
    assert seen == {"conv3": True}  # conv1's blob is gone once conv2 has read it
    net.keep_blobs = True
    with torch.no_grad():
        net(data=torch.randn(1, 3, 12, 10))
    assert seen == {"conv3": False}


def test_inplace_relu_only_when_safe():
    text = CHAIN + relu("extra", "conv2", "other")  # conv2 (post-ReLU) now has two readers
    net = Net(text)
    ptrs = {}
    for m in net.modules():
        if isinstance(m, ReLU):
            m.register_forward_hook(lambda mod, a, o: ptrs.__setitem__(
                mod.name, a[0].data_ptr() == o[0].data_ptr()))
    with torch.no_grad():
        net(data=torch.randn(1, 3, 12, 10))
    assert ptrs == {"relu1": True, "relu2": True, "extra": False}
    net(data=torch.randn(1, 3, 12, 10))  # recording gradients: never in place
    assert ptrs == {"relu1": False, "relu2": False, "extra": False}
    # a net input is never overwritten
    net = Net(inp("data", 1, 2, 3, 3) + relu("r", "data"))
    x = -torch.ones(1, 2, 3, 3)
    with torch.no_grad():
        y = net(data=x)["data"]
    assert float(x.sum()) == -18 and float(y.sum()) == 0


# ------------------------------------------------------------------- fusion

# A miniature FCN-16s head: the upsampled coarse score fused with a cropped skip score,
# then upsampled again and cropped to the input (data 20x20 -> pool 10 -> score_fr 8 -> up 18).
SKIP = (inp("data", 1, 2, 20, 20)
        + 'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        + conv("score_fr", "pool", "score_fr", 3, k=3, pad=0)
        + 'layer { name: "up" type: "Deconvolution" bottom: "score_fr" top: "up" '
          'convolution_param { num_output: 3 kernel_size: 4 stride: 2 weight_filler { type: "gaussian" std: 0.5 } } }\n'
        + conv("score_skip", "data", "score_skip", 3, k=1, pad=0)
        + 'layer { name: "skipc" type: "Crop" bottom: "score_skip" bottom: "up" top: "skipc" crop_param { axis: 2 offset: 1 } }\n'
        + 'layer { name: "fuse" type: "Eltwise" bottom: "BOTTOM0" bottom: "BOTTOM1" top: "fuse" '
          'eltwise_param { operation: SUM coeff: 0.25 coeff: -3 } }\n'
        + 'layer { name: "up2" type: "Deconvolution" bottom: "fuse" top: "up2" '
          'convolution_param { num_output: 3 kernel_h: 3 kernel_w: 5 stride: 2 pad: 1 '
          'bias_filler { type: "gaussian" std: 1 } weight_filler { type: "gaussian" std: 0.5 } } }\n'
        + 'layer { name: "score" type: "Crop" bottom: "up2" bottom: "data" top: "score" crop_param { offset: 2 offset: 1 } }\n')


@pytest.mark.parametrize("order", [("up", "skipc"), ("skipc", "up")])
def test_fusion_matches_unfused_exactly(order):
    text = SKIP.replace("BOTTOM0", order[0]).replace("BOTTOM1", order[1])
    net = Net(text, seed=0).double()
    assert [s.kind for s in net.plan] == ["layer"] * 4 + ["crop_sum", "deconv_crop"]
    x = torch.randn(1, 2, 20, 20, dtype=torch.float64)
    fused = net(data=x)["score"]
    net.fuse = False
    assert [s.kind for s in net.plan] == ["layer"] * 8
    plain = net(data=x)["score"]
    torch.testing.assert_close(fused, plain, rtol=1e-13, atol=1e-13)
    net.fuse, net.keep_blobs = True, True  # keeping blobs turns fusion off
    assert {s.kind for s in net.plan} == {"layer"}
    # gradients agree too
    net.keep_blobs = False
    grads = []
    for fuse in (True, False):
        net.fuse = fuse
        for p in net.parameters():
            p.grad = None
        net(data=x)["score"].square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_no_fusion_when_an_intermediate_has_other_readers():
    text = SKIP.replace("BOTTOM0", "up").replace("BOTTOM1", "skipc") + relu("peek", "skipc", "p") + relu("peek2", "up2", "q")
    kinds = [s.kind for s in Net(text).plan]
    assert "crop_sum" not in kinds and "deconv_crop" not in kinds


def test_fused_crop_errors_name_the_layer():
    text = SKIP.replace("BOTTOM0", "up").replace("BOTTOM1", "skipc").replace("offset: 2 offset: 1", "offset: 40")
    net = Net(text)
    with pytest.raises(LayerError, match=r"'score'.*offset 40"):
        net(data=torch.randn(1, 2, 20, 20))


# ------------------------------------------------------------------ weights

def vgg_weights():
    return load_weights(caffe_fixture("vgg-v1.caffemodel"))


def test_load_weights_legacy_shapes_and_report():
    net = Net(caffe_fixture("vgg-v1.prototxt"))
    rep = net.load_weights(caffe_fixture("vgg-v1.caffemodel"))
    assert rep.copied == ["conv1_1", "conv2_1", "fc6", "fc7", "fc8"] and not rep.missing and not rep.unused
    assert ("fc6", 0, (1, 1, 32, 1024), (32, 1024)) in rep.coerced
    assert net.params["fc6"][0].shape == (32, 1024)
    z = np.load(caffe_fixture("vgg-v1.npz"))
    np.testing.assert_array_equal(net.params["fc6"][0].detach().numpy(), z["param/fc6/0"])


def test_caffemodel_and_h5_load_the_same():
    a = Net(caffe_fixture("fcn8s.prototxt"), caffe_fixture("fcn8s.caffemodel"))
    b = Net(caffe_fixture("fcn8s.prototxt"), caffe_fixture("fcn8s.caffemodel.h5"))
    assert a.weights_report.copied == b.weights_report.copied and not a.weights_report.missing
    for layer in a.params:
        for pa, pb in zip(a.params[layer], b.params[layer]):
            assert torch.equal(pa, pb)


def test_weights_errors_and_strict():
    w = {k: list(v) for k, v in vgg_weights().items()}
    net = Net(caffe_fixture("vgg-v1.prototxt"))
    bad = dict(w, fc7=[np.zeros((32, 31), np.float32), w["fc7"][1]])
    with pytest.raises(WeightsError) as ei:
        net.load_weights(bad)
    msg = str(ei.value)
    assert "'fc7'" in msg and "blob 0" in msg and "(32, 31)" in msg and "(32, 32)" in msg
    with pytest.raises(WeightsError, match="'fc8'.*1 blobs in the weights.*2 parameter blobs"):
        net.load_weights(dict(w, fc8=w["fc8"][:1]))
    before = net.params["conv1_1"][0].detach().clone()
    with pytest.raises(WeightsError):
        net.load_weights(dict(w, conv1_1=[w["conv1_1"][0] + 1, w["conv1_1"][1]], fc7=bad["fc7"]))
    assert torch.equal(net.params["conv1_1"][0], before)  # nothing copied when a blob does not fit
    partial = {k: v for k, v in w.items() if k != "fc8"}
    partial["classifier_extra"] = [np.zeros(3, np.float32)]
    rep = net.load_weights(partial)
    assert rep.missing == ["fc8"] and rep.unused == ["classifier_extra"]
    assert "fc8" in str(rep) and "classifier_extra" in str(rep)
    with pytest.raises(WeightsError, match="strict"):
        net.load_weights(partial, strict=True)
    with pytest.raises(WeightsError, match="strict"):
        Net(caffe_fixture("vgg-v1.prototxt"), partial, strict=True)


FC_AS_CONV = (inp("data", 1, 3, 32, 32)
              + conv("conv1_1", "data", "conv1_1", 8) + relu("relu1_1", "conv1_1")
              + 'layer { name: "pool1" type: "Pooling" bottom: "conv1_1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
              + conv("conv2_1", "pool1", "conv2_1", 16) + relu("relu2_1", "conv2_1")
              + 'layer { name: "pool2" type: "Pooling" bottom: "conv2_1" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
              + conv("fc6", "pool2", "fc6", 32, k=8, pad=0) + relu("relu6", "fc6")
              + conv("fc7", "fc6", "fc7", 32, k=1, pad=0) + relu("relu7", "fc7")
              + conv("fc8", "fc7", "fc8", "NCLS", k=1, pad=0))


def test_transplant_fully_connected_into_convolutions():
    """FCN surgery on the V1 classifier: the convolutionalized net computes the classifier's outputs."""
    z = np.load(caffe_fixture("vgg-v1.npz"))
    net = Net(FC_AS_CONV.replace("NCLS", "10"))
    rep = transplant(net, caffe_fixture("vgg-v1.caffemodel"))
    assert rep.copied == ["conv1_1", "conv2_1", "fc6", "fc7", "fc8"]
    assert ("fc6", 0, (1, 1, 32, 1024), (32, 16, 8, 8)) in rep.coerced
    assert ("fc7", 0, (1, 1, 32, 32), (32, 32, 1, 1)) in rep.coerced
    assert not rep.skipped and not rep.missing and not rep.unused
    with torch.no_grad():
        out = net(data=torch.from_numpy(z["input/data"]))["fc8"]
    assert out.shape == (1, 10, 1, 1)
    ref = z["fwd/fc8"]
    assert np.abs(out.numpy()[:, :, 0, 0] - ref).max() <= 1e-5 * np.abs(ref).max()
    # On a larger image the same net slides the classifier (the point of the surgery).
    with torch.no_grad():
        assert net(data=torch.randn(1, 3, 64, 48))["fc8"].shape == (1, 10, 9, 5)  # pool2 16x12, 8x8 windows

    # a new 21-class head cannot take the 10-class weights: skipped and reported, left as initialised
    net = Net(FC_AS_CONV.replace("NCLS", "21"), seed=0)
    before = [p.detach().clone() for p in net.params["fc8"]]
    rep = transplant(net, vgg_weights())
    assert "fc8" not in rep.copied and [(s[0], s[1]) for s in rep.skipped] == [("fc8", 0), ("fc8", 1)]
    assert all(torch.equal(a, b) for a, b in zip(before, net.params["fc8"]))
    assert "skipped fc8[0]" in str(rep)


def test_state_dict_and_dtype():
    net = Net(CHAIN, seed=1)
    keys = list(net.state_dict())
    assert keys[:2] == ["layers.conv1.blobs.0", "layers.conv1.blobs.1"]
    net2 = Net(CHAIN, seed=2)
    net2.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(data=x)["conv3"], net2(data=x)["conv3"])
        y64 = net.double()(data=x.double())["conv3"]
    assert y64.dtype == torch.float64 and net.params["conv1"][0].dtype == torch.float64


# ------------------------------------------------------------------ memory limit

def test_blob_over_the_limit_is_refused_before_allocation(monkeypatch):
    """A 200-byte prototxt must not ask the allocator for terabytes: the error names layer, type, shape."""
    from fcn_repro.caffe.net import BlobLimitError
    from fcn_repro.errors import LimitError
    huge = inp("data", 1, 3, 6000000, 6000000) + conv("conv1", "data", "conv1", 4)
    with pytest.raises(BlobLimitError) as ei:
        Net(huge)
    msg = str(ei.value)
    assert "'data'" in msg and "Input" in msg and "(1, 3, 6000000, 6000000)" in msg and "blob_elements" in msg
    assert isinstance(ei.value, NetError) and isinstance(ei.value, LimitError)
    # a parameter blob: num_output 10**7 over 512 channels of 7x7 (2.5e11 weights)
    big_param = inp("data", 1, 512, 7, 7) + conv("fc6", "data", "fc6", 10 ** 7, k=7, pad=0)
    with pytest.raises(BlobLimitError, match=r"'fc6'.*Convolution parameter blob 0.*\(10000000, 512, 7, 7\)"):
        Net(big_param)
    # configurable: a keyword, or the environment
    small = inp("data", 1, 3, 40, 40) + conv("conv1", "data", "conv1", 4)
    Net(small)
    with pytest.raises(BlobLimitError, match="'conv1'.*top blob 'conv1'.*\\(1, 4, 40, 40\\)"):
        Net(small, max_blob_elements=6000)
    assert Net(small, max_blob_elements=6400).outputs == ["conv1"]
    monkeypatch.setenv("FCN_REPRO_MAX_BLOB_ELEMENTS", "5000")
    with pytest.raises(BlobLimitError, match="'conv1'.*6,400"):
        Net(small)
