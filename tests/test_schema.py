"""caffe/schema.py: Caffe's field types held at parse time, as Caffe's typed text parser holds them."""
from __future__ import annotations

import tracemalloc

import pytest

from conftest import CAFFE_FIXTURES
from fcn_repro import limits
from fcn_repro.caffe import schema
from fcn_repro.caffe.prototxt import Message, parse_prototxt, parse_text
from fcn_repro.errors import LimitError, PrototxtError
from fcn_repro.solver import read_solver

NET = """name: "n"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{
  name: "conv"
  type: "Convolution"
  bottom: "data"
  top: "conv"
  convolution_param {{
    {field}
  }}
}}
"""


def net(field: str) -> str:
    return NET.format(field=field)


@pytest.mark.parametrize("field, why", [
    ('bias_term: "no"', "expected true or false"),
    ("bias_term: 2", "expected true or false"),
    ("num_output: 4.7", "expected an integer (uint32), got 4.7"),
    ("num_output: 4.0", "expected an integer (uint32)"),
    ("kernel_size: 1.5", "expected an integer (uint32), got 1.5"),
    ("pad: -1", "-1 is out of range for uint32"),
    ("stride_w: 9223372036854775807", "out of range for uint32"),
    ("axis: 3000000000", "out of range for int32"),
    ("engine: cudnn", "expected one of DEFAULT, CAFFE, CUDNN (Engine), got 'cudnn'"),
    ('engine: "CUDNN"', "written bare"),
    ("engine: 7", "enum number 7 is not a Engine value"),
    ("weight_filler: 3", "expected a message"),
    ('weight_filler { type: gaussian }', "expected a quoted string (string), got gaussian"),
    ("weight_filler { std: true }", "expected a number (float), got True"),
])
def test_refused_as_caffe_refuses(field, why):
    with pytest.raises(PrototxtError) as ei:
        parse_prototxt(net(field))
    e = ei.value
    assert why in str(e)
    # the error names the line (the field is on line 9), the layer and the field path
    assert (e.filename, e.line, e.layer) == ("<text>", 9, "conv"), str(e)
    assert e.field.startswith("convolution_param."), e.field
    assert str(e).startswith("<text>:9:")


@pytest.mark.parametrize("field", [
    "bias_term: false", "bias_term: 0", "bias_term: t", "num_output: 4", "kernel_size: 3 kernel_size: 1",
    "pad: 0x2", "engine: CUDNN", "engine: 2", "weight_filler { std: 1 }", "weight_filler { std: -2.5e-1 }",
    "kernel_size: 3 future_field: 1.5",   # a field the schema does not declare is kept, unchecked
])
def test_accepted_as_caffe_accepts(field):
    msg = parse_prototxt(net(field))
    assert msg.getall("layer")[1].get("name") == "conv"


def test_error_names_layer_by_index_when_unnamed_and_v1_nets_are_checked(tmp_path):
    p = tmp_path / "v1.prototxt"
    p.write_text('layers {\n  type: CONVOLUTION\n  convolution_param { num_output: -3 }\n}\n')
    with pytest.raises(PrototxtError) as ei:
        parse_prototxt(p)
    assert str(ei.value) == (f"{p}:3:35: layer '#0' field 'convolution_param.num_output': "
                             "-3 is out of range for uint32 (0..4294967295)")
    with pytest.raises(PrototxtError, match=r"layer 'x' field 'blobs_lr': expected a number"):
        parse_prototxt('layers { name: "x" type: CONVOLUTION blobs_lr: "1" }')
    with pytest.raises(PrototxtError, match=r":1:27: layer 'x' field 'type': expected a quoted string"):
        parse_prototxt('layer { name: "x"   type: Convolution }')


def test_first_error_in_file_order():
    text = net("num_output: 1.5") + 'layer { name: "late" type: "ReLU" relu_param { negative_slope: "x" } }\n'
    with pytest.raises(PrototxtError, match="layer 'conv'"):
        parse_prototxt(text)


def test_solver_fields_typed(tmp_path):
    p = tmp_path / "solver.prototxt"
    p.write_text('net: "train.prototxt"\nbase_lr: 1e-10\nmax_iter: 100000.5\n')
    with pytest.raises(PrototxtError, match=r"solver.prototxt:3:11: field 'max_iter': expected an integer"):
        read_solver(p)
    p.write_text('net: "train.prototxt"\nbase_lr: "fast"\n')
    with pytest.raises(PrototxtError, match=r":2:10: field 'base_lr': expected a number"):
        read_solver(p)
    p.write_text('net: "train.prototxt"\nbase_lr: 1e-10\nlr_policy: "fixed"\nsnapshot_format: HDF5\n')
    assert read_solver(p).base_lr == 1e-10


def test_every_fixture_net_passes_the_schema():
    # the full Caffe fixture set, the project's nets: nothing Caffe accepted is refused
    names = sorted(CAFFE_FIXTURES.glob("*.prototxt"))
    assert names
    for p in names:
        parse_prototxt(p)
        parse_text(p.read_bytes(), str(p), schema_type="NetParameter" if "solver" not in p.name
                   else "SolverParameter")


def test_schema_tables():
    assert schema.numbers("LayerParameter")["convolution_param"] == 106
    assert schema.numbers("V1LayerParameter")["convolution_param"] == 10
    assert schema.default("ConvolutionParameter", "bias_term") is True
    assert schema.default("PoolingParameter", "round_mode") == "CEIL"
    assert schema.default("SolverParameter", "delta") == 1e-8
    assert schema.field("CropParameter", "offset").repeated
    assert schema.V1_LAYER_TYPES[schema.V1_ENUM_NAMES["SOFTMAX_LOSS"]] == "SoftmaxWithLoss"
    for mname, fields in schema.MESSAGES.items():
        numbers = [f.number for f in fields.values()]
        assert len(numbers) == len(set(numbers)), mname
        for f in fields.values():
            assert f.type in schema.SCALAR_TYPES or f.type in schema.ENUMS or f.type in schema.MESSAGES, f
            if f.kind == "enum" and f.default is not None:
                assert f.default in schema.ENUMS[f.type], f
            if f.default is not None:
                assert schema.check_value(f, f.default if f.kind != "enum" else
                                          type("Enum", (str,), {})(f.default)) is None, f


def test_check_works_on_built_messages():
    m = Message([("layer", Message(name="c", type="Convolution",
                                   convolution_param=Message(num_output=2.5)))])
    with pytest.raises(PrototxtError, match=r"^<net>: layer 'c' field 'convolution_param.num_output'"):
        schema.check(m, "NetParameter", "<net>")


# ------------------------------------------------------------ text budgets

def test_text_byte_cap_before_reading(tmp_path):
    p = tmp_path / "big.prototxt"
    p.write_bytes(b"{" * (2 << 20))
    with limits.override(text_bytes=1 << 20):
        with pytest.raises(PrototxtError, match=r"big.prototxt:1:1: text of this size needs 2.0 MiB, over the "
                                                r"limit of 1.0 MiB \(text_bytes"):
            parse_prototxt(p)
        assert issubclass(PrototxtError, ValueError) and not issubclass(PrototxtError, LimitError)


def test_nesting_budget_and_bounded_memory():
    text = "a " + "{ a " * 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(PrototxtError, match=r"<text>:1:\d+: messages nested deeper than 100"):
            parse_text(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # tokens are made one at a time: a 4 MB text does not become millions of token objects
    assert peak < 2 << 20, peak
    with limits.override(text_depth=3):
        parse_text("a { b { c { } } }")
        with pytest.raises(PrototxtError, match="nested deeper than 3"):
            parse_text("a { b { c { d { } } } }")
