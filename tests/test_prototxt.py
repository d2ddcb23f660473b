"""Protobuf text format: the fixtures, FCN-release-style nets and solvers, every syntax variant."""
from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import CAFFE_FIXTURES, caffe_fixture
from fcn_repro.caffe.prototxt import (
    Enum, Message, PrototxtError, format_text, parse_prototxt, parse_text, upgrade_net, v1_type_name,
    write_prototxt,
)

FIXTURE_TEXTS = sorted(p.name for p in CAFFE_FIXTURES.glob("*.prototxt"))


def roundtrip(msg: Message) -> Message:
    return parse_text(format_text(msg))


# ------------------------------------------------------------------ fixtures

@pytest.mark.parametrize("name", FIXTURE_TEXTS)
def test_every_fixture_parses_and_round_trips(name):
    path = caffe_fixture(name)
    raw = parse_prototxt(path, upgrade=False)
    assert len(raw) > 0
    assert roundtrip(raw) == raw
    up = parse_prototxt(path)
    assert roundtrip(up) == up
    if name.endswith(".solver.prototxt"):
        assert up == raw                      # solvers pass through unchanged
        assert isinstance(raw.get("base_lr"), float) or isinstance(raw.get("base_lr"), int)
    else:
        layers = up.getall("layer")
        assert layers and all(isinstance(lay.get("type"), str) for lay in layers)
        assert not up.has("layers") and not up.has("input")


def test_fixture_details_fcn8s():
    net = parse_prototxt(caffe_fixture("fcn8s.prototxt"))
    layers = {lay.get("name"): lay for lay in net.getall("layer")}
    conv = layers["conv1_1"].sub("convolution_param")
    assert conv.get("pad") == 100 and conv.get("kernel_size") == 3
    assert layers["pool1"].sub("pooling_param").get("pool") == Enum("MAX")
    up = layers["upscore2"]
    assert up.get("type") == "Deconvolution"
    assert up.sub("convolution_param").get("bias_term") is False
    crop = layers["score_pool4c"]
    assert crop.get("type") == "Crop" and crop.sub("crop_param").get("offset") == 5
    assert crop.getall("bottom") == ["score_pool4", "upscore2"]


def test_train_fixture_loss_params():
    net = parse_prototxt(caffe_fixture("fcn8s.train.prototxt"))
    loss = [lay for lay in net.getall("layer") if lay.get("type") == "SoftmaxWithLoss"][0]
    lp = loss.sub("loss_param")
    assert lp.get("ignore_label") == 255 and lp.get("normalize") is False


# ------------------------------------------------- FCN-release style texts

# Written in the style of the original release's NetSpec-generated train.prototxt.
TRAIN_STYLE = r'''# trainable FCN in the release's style
layer {
  name: "data"
  type: "Python"
  top: "data"
  top: "label"
  include { phase: TRAIN }
  python_param {
    module: "voc_layers"
    layer: "SBDDSegDataLayer"
    param_str: "{\'sbdd_dir\': \'../data/sbdd/dataset\', \'seed\': 1337, \'split\': \'train\', \'mean\': (104.00699, 116.66877, 122.67892)}"
  }
}
layer {
  name: "data"
  type: "Python"
  top: "data"
  top: "label"
  include {
    phase: TEST
  }
  python_param {
    module: "voc_layers"
    layer: "VOCSegDataLayer"
    param_str: "{\'voc_dir\': \'../data/pascal/VOC2011\', \'seed\': 1337, \'split\': \'seg11valid\', \'mean\': (104.00699, 116.66877, 122.67892)}"
  }
}
layer {
  name: "conv1_1"
  type: "Convolution"
  bottom: "data"
  top: "conv1_1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 64
    pad: 100  # so the net sees the whole image after the 32x downsampling
    kernel_size: 3
    stride: 1
  }
}
layer { name: "relu1_1" type: "ReLU" bottom: "conv1_1" top: "conv1_1" }
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "score"
  bottom: "label"
  top: "loss"
  loss_param {
    normalize: false
    ignore_label: 255
  }
}
'''

SOLVER_STYLE = '''train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 736
# make test net, but don't invoke it from the solver itself
test_interval: 999999999
display: 20
average_loss: 20
lr_policy: "fixed"
# lr for unnormalized softmax
base_lr: 1e-10
# high momentum
momentum: 0.99
# no gradient accumulation
iter_size: 1
max_iter: 100000
weight_decay: 0.0005
snapshot: 4000
snapshot_prefix: "snapshot/train"
test_initialization: false
'''


def test_release_style_train_net():
    net = parse_prototxt(TRAIN_STYLE)
    data = net.getall("layer")[:2]
    assert [d.sub("include").get("phase") for d in data] == [Enum("TRAIN"), Enum("TEST")]
    assert isinstance(data[0].sub("include").get("phase"), Enum)
    pp = data[0].sub("python_param")
    assert pp.get("module") == "voc_layers" and pp.get("layer") == "SBDDSegDataLayer"
    # the escaped quotes come back as plain quotes: the value is a Python dict literal
    params = ast.literal_eval(pp.get("param_str"))
    assert params == {"sbdd_dir": "../data/sbdd/dataset", "seed": 1337, "split": "train",
                      "mean": (104.00699, 116.66877, 122.67892)}
    assert ast.literal_eval(data[1].sub("python_param").get("param_str"))["split"] == "seg11valid"
    conv = net.getall("layer")[2]
    assert [(p.get("lr_mult"), p.get("decay_mult")) for p in conv.getall("param")] == [(1, 1), (2, 0)]
    assert conv.sub("convolution_param").get("pad") == 100
    loss = net.getall("layer")[-1].sub("loss_param")
    assert loss.get("normalize") is False and loss.get("ignore_label") == 255
    again = roundtrip(net)
    assert again == net
    assert ast.literal_eval(again.getall("layer")[0].sub("python_param").get("param_str")) == params


def test_release_style_solver():
    s = parse_prototxt(SOLVER_STYLE)
    assert s.get("test_iter") == 736 and isinstance(s.get("test_iter"), int)
    assert s.get("base_lr") == 1e-10 and isinstance(s.get("base_lr"), float)
    assert s.get("momentum") == 0.99 and s.get("lr_policy") == "fixed"
    assert s.get("weight_decay") == 0.0005 and s.get("test_initialization") is False
    assert s.get("snapshot_prefix") == "snapshot/train"
    assert [k for k, _ in s.fields][:3] == ["train_net", "test_net", "test_iter"]
    assert roundtrip(s) == s


# ------------------------------------------------------------ syntax variants

def test_message_delimiters_and_separators():
    a = parse_text('m { x: 1 y: "a" }')
    assert parse_text('m: { x: 1, y: "a" }') == a
    assert parse_text("m < x: 1; y: 'a' >") == a
    assert parse_text('m: <x:1,y:"a">') == a
    assert parse_text('m {\n x : 1 ;\n y : "a" ,\n}\n') == a
    assert parse_text('m { x: 1 y: "a" };') == a


def test_scalars():
    m = parse_text(r'''
      i: 42 neg: -7 hex: 0x1F neghex: -0x10 oct: 017 zero: 0
      f: 1.5 e: 1e-10 E: 2.5E+3 dot: .5 trail: 5. suffix: 1.5f fint: 3f
      inf: inf ninf: -inf Inf: Infinity nan: nan NaN: -nan spaced: - 4
      t: true F: false T: True f2: False t1: t f1: f
      enum: MAX lower_enum: some_value
    ''')
    assert m.get("i") == 42 and m.get("neg") == -7 and m.get("hex") == 31 and m.get("neghex") == -16
    assert m.get("oct") == 15 and m.get("zero") == 0
    assert all(isinstance(m.get(k), int) and not isinstance(m.get(k), bool) for k in ("i", "hex", "oct"))
    assert m.get("f") == 1.5 and m.get("e") == 1e-10 and m.get("E") == 2500.0
    assert m.get("dot") == 0.5 and m.get("trail") == 5.0 and m.get("suffix") == 1.5 and m.get("fint") == 3.0
    assert isinstance(m.get("trail"), float) and isinstance(m.get("fint"), float)
    assert m.get("inf") == math.inf and m.get("ninf") == -math.inf and m.get("Inf") == math.inf
    assert math.isnan(m.get("nan")) and math.isnan(m.get("NaN"))
    assert m.get("spaced") == -4
    assert [m.get(k) for k in ("t", "F", "T", "f2", "t1", "f1")] == [True, False, True, False, True, False]
    assert m.get("enum") == "MAX" and isinstance(m.get("enum"), Enum)
    assert isinstance(m.get("lower_enum"), Enum)


def test_strings_escapes_and_concatenation():
    m = parse_text(r'''
      a: "tab\tnl\nquote\"single\'back\\"
      b: 'it\'s' c: "x" "y" 'z'
      d: "\101\x42\103" e: "\303\251t\303\251" f: "\u00e9\U0001F600" g: "\a\b\f\v\?"
      h: "caf\xc3\xa9"
    ''')
    assert m.get("a") == "tab\tnl\nquote\"single'back\\"
    assert m.get("b") == "it's" and m.get("c") == "xyz" and m.get("d") == "ABC"
    assert m.get("e") == "été"            # octal escapes are UTF-8 bytes, as protobuf writes them
    assert m.get("f") == "é\U0001F600" and m.get("g") == "\a\b\f\v?" and m.get("h") == "café"
    assert roundtrip(m) == m
    # a byte that is not UTF-8 survives a round trip as an escape
    raw = parse_text(r'x: "a\377b"')
    assert format_text(raw) == 'x: "a\\377b"\n' and roundtrip(raw) == raw


def test_lists_repeats_unknown_fields_and_order():
    m = parse_text("dim: [1, 2, 3] dim: 4 empty: [] ms: [{a: 1}, <a: 2>] unknown_field { deep { z: Z } } dim: 5")
    assert m.getall("dim") == [1, 2, 3, 4, 5]
    assert not m.has("empty")
    assert [x.get("a") for x in m.getall("ms")] == [1, 2]
    assert m.sub("unknown_field").sub("deep").get("z") == "Z"
    assert [k for k, _ in m.fields] == ["dim"] * 4 + ["ms", "ms", "unknown_field", "dim"]
    assert m.get("dim") == 5                                     # last one wins for singular use
    assert roundtrip(m) == m


def test_comments_and_whitespace():
    m = parse_text("# head\n\n  a: 1 # trailing\r\n\tb { # open\n c: 'x#y' }\n# tail")
    assert m.get("a") == 1 and m.sub("b").get("c") == "x#y"


def test_writer_formats():
    m = Message([("name", "n"), ("f", 0.5), ("g", 2.0), ("z", -0.0), ("i", 3), ("b", True),
                 ("e", Enum("MAX")), ("nan", math.nan), ("inf", -math.inf), ("big", 1e20),
                 ("m", Message([("k", "v")]))])
    text = format_text(m)
    assert text == ('name: "n"\nf: 0.5\ng: 2\nz: -0.0\ni: 3\nb: true\ne: MAX\nnan: nan\ninf: -inf\n'
                    'big: 1e+20\nm {\n  k: "v"\n}\n')
    back = parse_text(text)
    assert math.copysign(1, back.get("z")) < 0 and math.isnan(back.get("nan"))


def test_write_prototxt_is_atomic_utf8(tmp_path):
    m = parse_text('name: "réseau" layer { name: "a" }')
    p = tmp_path / "net.prototxt"
    write_prototxt(p, m)
    assert p.read_bytes().decode("utf-8").startswith('name: "réseau"')
    assert parse_prototxt(p, upgrade=False) == m
    assert os.listdir(tmp_path) == ["net.prototxt"]


_NAMES = st.sampled_from(["name", "type", "dim", "lr_mult", "x", "_y", "param", "a1", "true_", "F_"])
_SCALARS = st.one_of(
    st.integers(-2 ** 63, 2 ** 64), st.booleans(),
    st.floats(allow_nan=False, width=64),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.sampled_from(["MAX", "TRAIN", "AVE", "CAFFE", "V_1"]).map(Enum))
_MESSAGES = st.recursive(
    st.lists(st.tuples(_NAMES, _SCALARS), max_size=4).map(Message),
    lambda inner: st.lists(st.tuples(_NAMES, st.one_of(_SCALARS, inner)), max_size=4).map(Message),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(_MESSAGES)
def test_format_parse_round_trip_property(m):
    assert roundtrip(m) == m


# ----------------------------------------------------------- legacy / upgrade

def test_vgg_v1_upgrade():
    raw = parse_prototxt(caffe_fixture("vgg-v1.prototxt"), upgrade=False)
    assert raw.has("layers") and raw.getall("input") == ["data"] and raw.getall("input_dim") == [1, 3, 32, 32]
    net = parse_prototxt(caffe_fixture("vgg-v1.prototxt"))
    layers = net.getall("layer")
    # Caffe's UpgradeNetInput: one layer named "input", first in the net
    assert layers[0].get("name") == "input" and layers[0].get("type") == "Input"
    assert layers[0].getall("top") == ["data"]
    assert layers[0].sub("input_param").sub("shape").getall("dim") == [1, 3, 32, 32]
    types = [lay.get("type") for lay in layers]
    assert "Convolution" in types and "InnerProduct" in types and "SoftmaxWithLoss" not in types
    for lay, v1 in zip(layers[1:], raw.getall("layers")):
        assert lay.get("name") == v1.get("name") and lay.get("type") == v1_type_name(v1.get("type"))


V1_TEXT = '''
name: "v1net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 }
  include { phase: TRAIN }
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv1" bottom: "label" top: "loss" }
layers { name: "up" type: 39 bottom: "conv1" top: "up" param: "shared_w" blobs_lr: 0 }
'''


def test_v1_text_upgrade_with_param_specs():
    net = parse_prototxt(V1_TEXT)
    layers = net.getall("layer")
    assert net.get("name") == "v1net"
    assert [lay.get("type") for lay in layers] == ["Input", "Convolution", "SoftmaxWithLoss", "Deconvolution"]
    conv = layers[1]
    specs = conv.getall("param")
    assert [(p.get("lr_mult"), p.get("decay_mult")) for p in specs] == [(1, 1), (2, 0)]
    assert not conv.has("blobs_lr") and not conv.has("weight_decay")
    keys = [k for k, _ in conv.fields]
    assert keys.index("param") > keys.index("top")                 # ParamSpecs after the tops
    assert conv.sub("include").get("phase") == "TRAIN"
    assert conv.sub("convolution_param").get("num_output") == 4
    up = layers[3].getall("param")
    assert up[0].get("name") == "shared_w" and up[0].get("lr_mult") == 0
    assert roundtrip(net) == net


def test_legacy_input_shape():
    net = parse_prototxt('input: "a" input_shape { dim: 1 dim: 2 } input: "b" input_shape { dim: 3 }\n'
                         'layer { name: "x" type: "ReLU" bottom: "a" top: "x" }')
    layers = net.getall("layer")
    assert [lay.get("type") for lay in layers] == ["Input", "ReLU"]
    assert layers[0].get("name") == "input" and layers[0].getall("top") == ["a", "b"]
    assert [sh.getall("dim") for sh in layers[0].sub("input_param").getall("shape")] == [[1, 2], [3]]
    two = parse_prototxt('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 '
                         'input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8 layer { name: "x" }')
    inp = two.getall("layer")[0]
    assert inp.getall("top") == ["a", "b"]
    assert [sh.getall("dim") for sh in inp.sub("input_param").getall("shape")] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    bare = parse_prototxt('input: "a" layer { name: "x" }').getall("layer")[0]
    assert bare.getall("top") == ["a"] and not bare.sub("input_param").has("shape")
    with pytest.raises(PrototxtError, match="both input_dim and input_shape"):
        parse_prototxt('input: "a" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 input_shape { dim: 1 }'
                       ' layer { name: "x" }')


def test_upgrade_refuses_mixed_v1_v2():
    with pytest.raises(ValueError, match="mixes"):
        upgrade_net(parse_text('layers { name: "a" } layer { name: "b" }'))


# -------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, where, what", [
    ('layer {\n  name: "a\n}', "2:9", "unterminated string"),
    ("layer {\n  name: 'a'\n", "3:1", "expected '}' before end of input"),
    ("a: 1\nb 2\n", "2:3", "expected ':' or '{' after field 'b'"),
    ("a: 1\n  }\n", "2:3", "expected a field name"),
    ("a: 1\n  b: @\n", "2:6", "unexpected character '@'"),
    ("a {\n b: 12abc }", "2:5", "expected a value, found '12abc'"),
    ("dims: [1 2]", "1:10", "expected ',' or ']'"),
    ('s: "\\q"', "1:5", "unknown escape"),
    ('s: "\\400"', "1:5", "not a byte"),
    ("a: }", "1:4", "expected a value"),
    ("n: 1_000", "1:4", "expected a value, found '1_000'"),     # Python's int() would take it
    ("n: \u0661\u0662", "1:4", "expected a value"),                # so would non-ASCII digits
    ("a: ", "1:4", "expected a value before end of input"),
    ("a {" * 101 + "}" * 101, "1:303", "nested deeper than 100"),
])
def test_errors_give_line_and_column(text, where, what, tmp_path):
    with pytest.raises(PrototxtError) as ei:
        parse_text(text)
    assert isinstance(ei.value, ValueError)
    assert f"<text>:{where}" in str(ei.value) and what in str(ei.value)
    p = tmp_path / "bad.prototxt"
    p.write_text(text)
    with pytest.raises(PrototxtError) as ei:
        parse_prototxt(p)
    assert str(ei.value).startswith(f"{p}:{where}") and ei.value.filename == str(p)


def test_binary_file_is_refused_as_text():
    with pytest.raises(PrototxtError, match="NUL byte|not UTF-8"):
        parse_prototxt(caffe_fixture("zoo.caffemodel"))


def test_deep_nesting_is_an_error_not_recursion():
    with pytest.raises(PrototxtError, match="nested deeper"):
        parse_text("a {" * 20000 + "}" * 20000)
    ok = parse_text("a {" * 100 + "}" * 100)
    assert ok.has("a")


def test_path_or_text_detection(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text('name: "x"')
    assert parse_prototxt(p).get("name") == "x"
    assert parse_prototxt(str(p)).get("name") == "x"
    assert parse_prototxt('name: "y"').get("name") == "y"
    assert parse_prototxt(b'name: "z"').get("name") == "z"
    with pytest.raises(FileNotFoundError):
        parse_prototxt(str(tmp_path / "missing.prototxt"))


def test_fixture_dir_is_what_we_think():
    assert Path(CAFFE_FIXTURES).is_dir() and len(FIXTURE_TEXTS) >= 20
