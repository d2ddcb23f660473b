"""Binary .caffemodel: reading Caffe's own files, every encoding variant, writing back."""
from __future__ import annotations

import importlib.util
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import caffe_fixture
from fcn_repro.caffe import (
    CaffeModelError, WeightsError, load_weights, parse_prototxt, save_weights, weights_info,
)
from fcn_repro.caffe.caffemodel import (
    CaffeLayer, caffemodel_layers, decode_caffemodel, encode_caffemodel, read_caffemodel,
    write_caffemodel,
)

_spec = importlib.util.spec_from_file_location("make_corpus", Path(__file__).parent / "corpus" / "make_corpus.py")
pb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pb)

# every one in tests/fixtures/caffe (packed ones rebuilt by conftest.caffe_fixture)
V2_FIXTURES = ["fcn8s.caffemodel", "fcn16s.caffemodel", "fcn8s-atonce.caffemodel", "zoo.caffemodel",
               "fcn32s.caffemodel", "fcn-alexnet.caffemodel", "siftflow-fcn8s.caffemodel",
               "nyud-fcn32s-color-hha.caffemodel", "pascalcontext-fcn8s.caffemodel"]


def npz_params(npz: Path) -> dict[str, dict[int, np.ndarray]]:
    out: dict[str, dict[int, np.ndarray]] = {}
    with np.load(npz) as z:
        for k in z.files:
            if k.startswith("param/"):
                _, layer, i = k.split("/")
                out.setdefault(layer, {})[int(i)] = z[k]
    return out


def net_param_layers(prototxt: Path) -> list[tuple[str, str]]:
    return [(lay.get("name"), lay.get("type")) for lay in parse_prototxt(prototxt).getall("layer")]


# ------------------------------------------------------------ Caffe's files

def test_zoo_params_bit_identical_to_caffe():
    w = load_weights(caffe_fixture("zoo.caffemodel"))
    ref = npz_params(caffe_fixture("zoo.npz"))
    assert set(w) == set(ref)
    for layer, blobs in ref.items():
        assert len(w[layer]) == len(blobs), layer
        for i, a in blobs.items():
            b = w[layer][i]
            assert b.dtype == np.float32 and b.shape == a.shape, (layer, i)
            assert b.tobytes() == a.astype(np.float32).tobytes(), (layer, i)


def test_vgg_v1_values_and_legacy_shapes():
    path = caffe_fixture("vgg-v1.caffemodel")
    w = load_weights(path)
    ref = npz_params(caffe_fixture("vgg-v1.npz"))
    assert list(w) == ["conv1_1", "conv2_1", "fc6", "fc7", "fc8"]
    for layer, blobs in ref.items():
        for i, a in blobs.items():
            b = w[layer][i]
            # V1 stores legacy 4-D dims: Caffe gives the InnerProduct weight
            # (32, 1024) and biases (32,); the file holds (1, 1, 32, 1024), (1, 1, 1, 32)
            assert b.ndim == 4
            assert b.shape == (1,) * (4 - a.ndim) + a.shape, (layer, i, b.shape, a.shape)
            assert b.tobytes() == a.astype(np.float32).tobytes()
    assert w["fc6"][0].shape == (1, 1, 32, 1024) and ref["fc6"][0].shape == (32, 1024)
    info = weights_info(path)
    assert info.format == "caffemodel-v1" and info.net_name == "vgg_tiny_v1"
    assert all(b.legacy_shape for layer in info.layers for b in layer.blobs)
    # V1 enum types come back as the V2 type strings the upgraded prototxt has
    proto = dict(net_param_layers(caffe_fixture("vgg-v1.prototxt")))
    for layer in info.layers:
        assert layer.type == proto[layer.name], layer.name
    assert {layer.type for layer in info.layers} >= {"Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"}


@pytest.mark.parametrize("name", V2_FIXTURES)
def test_v2_order_types_and_shapes_match_prototxt(name):
    path = caffe_fixture(name)
    info = weights_info(path)
    assert info.format == "caffemodel-v2"
    proto = net_param_layers(caffe_fixture(name.replace(".caffemodel", ".prototxt")))
    ptypes = dict(proto)
    # Caffe saves every layer it built, in net order; it inserts Split layers
    # where a blob feeds several layers, which the prototxt does not list
    names = [layer.name for layer in info.layers]
    assert [n for n in names if n in ptypes] == [n for n, _ in proto]
    for layer in info.layers:
        if layer.name in ptypes:
            assert layer.type == ptypes[layer.name]
        else:
            assert layer.type == "Split" and not layer.blobs
    w = load_weights(path)
    assert list(w) == [layer.name for layer in info.layers if layer.blobs]
    for layer in info.layers:
        for b in layer.blobs:
            arr = w[layer.name][b.index]
            assert arr.shape == b.shape and b.dtype == "float32" and b.nbytes == arr.nbytes
            assert not b.legacy_shape
            # the offset points at the stored values themselves
            with open(path, "rb") as f:
                f.seek(b.offset)
                assert f.read(arr.nbytes) == arr.tobytes()


def test_keep_empty_lists_blobless_layers():
    path = caffe_fixture("fcn8s.caffemodel")
    w = load_weights(path, keep_empty=True)
    assert w["relu1_1"] == [] and w["data_data_0_split"] == []
    assert [k for k, v in w.items() if v] == list(load_weights(path))


def test_read_caffemodel_message():
    net = read_caffemodel(caffe_fixture("zoo.caffemodel"))
    layers = net.getall("layer")
    assert net.has("name")
    first = [lay for lay in layers if lay.getall("blobs")][0]
    assert isinstance(first.getall("blobs")[0], np.ndarray)
    assert all(lay.has("type") for lay in layers)
    assert sum(len(lay.getall("blobs")) for lay in layers) == sum(
        len(v) for v in load_weights(caffe_fixture("zoo.caffemodel")).values())


# ---------------------------------------------------------------- zero copy

def test_views_are_zero_copy_and_private(tmp_path):
    src = caffe_fixture("fcn8s.caffemodel")
    path = tmp_path / "w.caffemodel"
    path.write_bytes(src.read_bytes())
    before = path.read_bytes()
    w = load_weights(path)
    a = w["conv1_1"][0]
    assert not a.flags.owndata and a.flags.writeable
    # the array is a view of the file's bytes (read once into memory), not a copy of its own
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert not isinstance(base, np.ndarray)
    old = a.copy()
    a[...] = 7.0          # private buffer: this process sees the write...
    assert (w["conv1_1"][0] == 7).all()
    del w, a, base
    assert path.read_bytes() == before   # ...the file does not
    w2 = load_weights(path)
    np.testing.assert_array_equal(w2["conv1_1"][0], old)


def test_copy_true_gives_owned_arrays():
    path = caffe_fixture("fcn8s.caffemodel")
    a, b = load_weights(path), load_weights(path, copy=True)
    assert list(a) == list(b)
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert y.flags.owndata or y.base is not None and y.base.flags.owndata
            assert x.tobytes() == y.tobytes() and x.shape == y.shape and y.dtype == np.float32


# ------------------------------------------------------- encoding variants

def _one(blob_bytes: bytes, **kw):
    data = pb.layer_v2("L", "T", [blob_bytes])
    return decode_caffemodel(data, **kw)["L"][0]


def test_packed_unpacked_and_split_encodings_agree():
    vals = [1.5, -2.25, 3.0, 1e-30, -0.0, 7.0]
    ref = np.array(vals, np.float32).reshape(2, 3)
    variants = {
        "packed": pb.packed_f32(5, vals) + pb.shape(2, 3),
        "shape first": pb.shape(2, 3) + pb.packed_f32(5, vals),
        "unpacked": pb.unpacked_f32(5, vals) + pb.shape(2, 3),
        "split packed": pb.packed_f32(5, vals[:2]) + pb.packed_f32(5, vals[2:]) + pb.shape(2, 3),
        "mixed": pb.packed_f32(5, vals[:1]) + pb.unpacked_f32(5, vals[1:4]) + pb.packed_f32(5, vals[4:])
                 + pb.shape(2, 3),
        "unpacked dims": pb.packed_f32(5, vals) + pb.shape(2, 3, packed=False),
        "split shape": pb.packed_f32(5, vals) + pb.shape(2) + pb.shape(3),  # repeated message merges
        "with diff": pb.packed_f32(5, vals) + pb.packed_f32(6, [9.0] * 6) + pb.shape(2, 3),
        "unknown fields": pb.vi(77, 5) + pb.packed_f32(5, vals) + pb.ld(99, b"junk")
                          + pb.key(33, 5) + b"abcd" + pb.shape(2, 3),
        "unknown group": pb.key(50, 3) + pb.vi(1, 1) + pb.key(51, 3) + pb.key(51, 4) + pb.key(50, 4)
                         + pb.packed_f32(5, vals) + pb.shape(2, 3),
    }
    for name, b in variants.items():
        got = _one(b)
        assert got.dtype == np.float32 and got.shape == (2, 3), name
        assert got.tobytes() == ref.tobytes(), name


def test_large_unpacked_run_is_decoded_fast():
    n = 200_000
    vals = np.arange(n, dtype=np.float32)
    rec = np.zeros(n, dtype=[("t", "u1"), ("v", "<f4")])
    rec["t"] = pb.key(5, 5)[0]
    rec["v"] = vals
    got = _one(rec.tobytes() + pb.shape(n))
    np.testing.assert_array_equal(got, vals)


def test_double_data_converts_or_keeps_dtype():
    vals = [1.0 + 2 ** -40, -3.5, 0.1]
    for enc in (pb.packed_f64(8, vals), pb.unpacked_f64(8, vals)):
        b = pb.shape(3) + enc
        got = _one(b)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.array(vals, np.float64).astype(np.float32))
        kept = _one(b, keep_dtype=True)
        assert kept.dtype == np.float64 and kept.tolist() == vals
    # Caffe prefers double_data when both are present
    b = pb.shape(3) + pb.packed_f32(5, [9, 9, 9]) + pb.packed_f64(8, vals)
    assert _one(b, keep_dtype=True).tolist() == vals


def test_legacy_dims_win_over_blobshape_like_caffe():
    vals = [float(i) for i in range(6)]
    b = pb.blob(legacy=(1, 1, 2, 3), data=vals)
    got = _one(b)
    assert got.shape == (1, 1, 2, 3)
    # Blob::FromProto: any legacy field present -> 4-D legacy shape, missing ones 0
    assert _one(pb.vi(3, 2) + pb.vi(4, 3) + pb.vi(1, 1) + pb.vi(2, 1) + pb.shape(6)
                + pb.packed_f32(5, vals)).shape == (1, 1, 2, 3)
    assert _one(pb.vi(1, 0)).shape == (0, 0, 0, 0)


def test_scalar_and_empty_blobs():
    assert _one(pb.shape() + pb.packed_f32(5, [4.0])).shape == ()
    e = _one(pb.shape(0, 3))
    assert e.shape == (0, 3) and e.dtype == np.float32
    with pytest.raises(CaffeModelError, match=r"0 values but its shape \(\) needs 1"):
        _one(b"")


def test_v1_handcrafted():
    data = pb.s(1, "old") + pb.layer_v1("ip", 14, [pb.blob(legacy=(1, 1, 2, 2), data=[1, 2, 3, 4])],
                                        extra=pb.s(2, "x") + pb.s(3, "y") + pb.ld(7, pb.vi(1, 1))) \
        + pb.layer_v1("weird", 12345) + pb.layer_v1("conv", 4, [pb.blob(legacy=(1, 1, 1, 2), data=[5, 6])])
    w = decode_caffemodel(data, keep_empty=True)
    assert list(w) == ["ip", "weird", "conv"]
    assert w["ip"][0].shape == (1, 1, 2, 2) and w["conv"][0].tolist() == [[[[5.0, 6.0]]]]


def test_duplicate_layer_names_last_wins_like_caffe():
    data = pb.layer_v2("a", "", [pb.blob(1, data=[1.0])]) + pb.layer_v2("b", "", [pb.blob(1, data=[2.0])]) \
        + pb.layer_v2("a", "", [pb.blob(2, data=[3.0, 4.0])])
    with pytest.warns(UserWarning, match="second layer named 'a'"):
        w = decode_caffemodel(data, filename="dup")
    assert list(w) == ["a", "b"] and w["a"][0].tolist() == [3.0, 4.0]
    # many repeats: one warning per file (each distinct warning text would be remembered forever)
    many = b"".join(pb.layer_v2(f"l{i % 3}", "", [pb.blob(1, data=[float(i)])]) for i in range(50))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = decode_caffemodel(many, filename="dup")
    assert len(caught) == 1 and "and 46 more" in str(caught[0].message)
    assert w["l0"][0].tolist() == [48.0]


def test_errors_name_file_offset_layer_and_blob():
    data = pb.layer_v2("good", "", [pb.blob(1, data=[1.0])]) + pb.layer_v2("conv9", "", [
        pb.blob(1, data=[1.0]), pb.blob(2, 2, data=[1.0, 2.0, 3.0])])
    with pytest.raises(CaffeModelError) as ei:
        decode_caffemodel(data, filename="m.caffemodel")
    e = ei.value
    assert isinstance(e, ValueError) and isinstance(e, WeightsError)
    assert e.filename == "m.caffemodel" and e.layer == "conv9" and e.blob == 1
    assert data[e.offset] == pb.key(7, 2)[0]       # the offset is the blob's tag
    assert str(e).startswith(f"m.caffemodel: byte {e.offset}: layer 'conv9' blob 1: ")
    assert "(2, 2) needs 4" in str(e)


def test_truncation_anywhere_is_a_clear_error():
    data = pb.good_net()
    full = decode_caffemodel(data)
    assert [a.shape for a in full["conv"]] == [(2, 1, 2, 2), (2,)]
    # a cut right after a whole layer is a valid, shorter net (that is protobuf);
    # every other cut must be refused with the file and an offset inside it
    head = len(pb.s(1, "tiny"))
    l1 = len(pb.layer_v2("conv", "Convolution", [pb.blob(2, 1, 2, 2, data=[float(i) for i in range(8)]),
                                                  pb.blob(2, data=[0.5, -0.5])]))
    l2 = len(pb.layer_v2("relu", "ReLU"))
    ok_cuts = {head + l1, head + l1 + l2}
    for cut in range(0, len(data)):
        if cut in ok_cuts:
            assert list(decode_caffemodel(data[:cut])) == ["conv"]
            continue
        with pytest.raises(CaffeModelError) as ei:
            decode_caffemodel(data[:cut], filename="cut")
        assert ei.value.filename == "cut" and 0 <= ei.value.offset <= cut


# ------------------------------------------------------------------ writing

@pytest.mark.parametrize("name", V2_FIXTURES)
def test_rewrite_of_caffe_file_is_byte_identical(name, tmp_path):
    src = caffe_fixture(name)
    c = caffemodel_layers(src)
    out = tmp_path / name
    size = write_caffemodel(out, c.layers, c.net_name, net_extras=c.net_extras)
    assert size == src.stat().st_size
    assert out.read_bytes() == src.read_bytes()


def test_v1_to_v2_keeps_values_and_legacy_shapes(tmp_path):
    src = caffe_fixture("vgg-v1.caffemodel")
    c = caffemodel_layers(src)
    out = tmp_path / "vgg-v2.caffemodel"
    write_caffemodel(out, c.layers, c.net_name, net_extras=c.net_extras)
    info = weights_info(out)
    assert info.format == "caffemodel-v2"
    a, b = load_weights(src, keep_empty=True), load_weights(out, keep_empty=True)
    assert list(a) == list(b)
    for k in a:
        assert [x.shape for x in a[k]] == [y.shape for y in b[k]]
        assert all(x.tobytes() == y.tobytes() for x, y in zip(a[k], b[k]))
    # legacy blobs are written with the legacy fields, so Caffe accepts them where it did before
    assert [bl.legacy_shape for lay in info.layers for bl in lay.blobs] == \
        [bl.legacy_shape for lay in weights_info(src).layers for bl in lay.blobs]
    assert [lay.type for lay in info.layers] == [lay.type for lay in weights_info(src).layers]


def test_save_load_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    weights = {
        "conv": [rng.standard_normal((5, 3, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)],
        "ip": [rng.standard_normal((7, 11)).astype(np.float32)],
        "scalar": [np.float32(3.25)],
        "empty": [np.zeros((0, 4), np.float32)],
        "double": [rng.standard_normal((2, 2))],                      # float64 stays float64
        "specials": [np.array([np.inf, -np.inf, np.nan, -0.0, 1e-45, 3.4e38], np.float32)],
        "big_dims": [np.zeros((1, 1, 1, 1, 1, 2), np.float32)],
        "noncontig": [np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]],
        "naïve/ünicode": [np.ones(2, np.float32)],
    }
    types = {"conv": "Convolution", "ip": "InnerProduct"}
    path = tmp_path / "x.caffemodel"
    save_weights(path, weights, types)
    back = load_weights(path, keep_dtype=True)
    assert list(back) == list(weights)
    for k, blobs in weights.items():
        for x, y in zip(blobs, back[k]):
            x = np.asarray(x)
            assert y.shape == x.shape and y.dtype == x.dtype, k
            assert y.tobytes() == np.ascontiguousarray(x).tobytes(), k
    info = weights_info(path)
    assert [lay.type for lay in info.layers][:2] == ["Convolution", "InnerProduct"]
    assert info.layers[2].type == ""
    assert load_weights(path)["double"][0].dtype == np.float32


def test_encoding_matches_independent_encoder():
    vals = [1.0, 2.0, 3.0, 4.0]
    ours = encode_caffemodel([CaffeLayer("ip", "InnerProduct", [np.array(vals, np.float32).reshape(2, 2)],
                                         ["a"], ["b"])], net_name="n")
    ref = pb.s(1, "n") + pb.ld(100, pb.s(1, "ip") + pb.s(2, "InnerProduct") + pb.s(3, "a") + pb.s(4, "b")
                               + pb.ld(7, pb.packed_f32(5, vals) + pb.shape(2, 2)))
    assert ours == ref


def test_torch_tensors_are_accepted(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    save_weights(tmp_path / "t.caffemodel", {"a": [t]})
    np.testing.assert_array_equal(load_weights(tmp_path / "t.caffemodel")["a"][0], t.detach().numpy())


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "keep.caffemodel"
    save_weights(path, {"a": [np.ones(3, np.float32)]})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="layer 'b' blob 0"):
        save_weights(path, {"a": [np.ones(3, np.float32)], "b": [np.array(["x"])]})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.caffemodel"]


def test_rewrite_in_place_while_views_alive(tmp_path):
    path = tmp_path / "w.caffemodel"
    save_weights(path, {"a": [np.arange(1000, dtype=np.float32)]})
    w = load_weights(path)
    save_weights(path, {"a": [np.zeros(10, np.float32)]})   # atomic replace: old mapping stays valid
    assert w["a"][0][999] == 999.0
    assert load_weights(path)["a"][0].shape == (10,)


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="unknown weights suffix"):
        save_weights(tmp_path / "w.bin", {"a": [np.ones(1)]})


def test_struct_sanity_of_float_bits():
    # a NaN payload and denormals survive exactly (no float conversions on the way)
    bits = [0x7FC00001, 0x00000001, 0x80000000, 0xFF800000]
    raw = b"".join(struct.pack("<I", x) for x in bits)
    got = _one(pb.ld(5, raw) + pb.shape(4))
    assert got.view(np.uint32).tolist() == bits


# ------------------------------------------------------- binary solver state

def test_solverstate_decodes_caffes_encodings():
    """SolverState (iter 1, learned_net 2, history 3, current_step 4) as Caffe or
    any protobuf writer may lay it out: unpacked values, legacy dims, unknown fields."""
    from fcn_repro.caffe.caffemodel import decode_solverstate
    h0 = [0.5, -1.0, 2.0, 0.0, 1e-8, -3.5]
    h1 = [7.0, 8.0]
    data = (pb.vi(1, 4000) + pb.s(2, "snapshot/train_iter_4000.caffemodel")
            + pb.ld(3, pb.unpacked_f32(5, h0) + pb.shape(1, 2, 3))
            + pb.ld(3, pb.vi(1, 1) + pb.vi(2, 1) + pb.vi(3, 1) + pb.vi(4, 2) + pb.packed_f32(5, h1))
            + pb.vi(77, 3) + pb.vi(4, 2))
    st = decode_solverstate(data, "x.solverstate")
    assert (st.iter, st.current_step) == (4000, 2)
    assert st.learned_net == "snapshot/train_iter_4000.caffemodel"
    assert [h.shape for h in st.history] == [(1, 2, 3), (1, 1, 1, 2)]
    assert st.history[0].ravel().tolist() == np.array(h0, np.float32).tolist()
    assert st.history[1].ravel().tolist() == h1


def test_solverstate_round_trip_and_encoding(tmp_path):
    from fcn_repro.caffe.caffemodel import (SolverStateContents, encode_solverstate, read_solverstate,
                                            write_solverstate)
    hist = [np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, np.array([1e-20, -0.0], np.float32)]
    st = SolverStateContents(12, "a.caffemodel", hist, 3)
    ref = (pb.vi(1, 12) + pb.s(2, "a.caffemodel")
           + pb.ld(3, pb.packed_f32(5, hist[0].ravel().tolist()) + pb.shape(2, 3))
           + pb.ld(3, pb.packed_f32(5, hist[1].tolist()) + pb.shape(2)) + pb.vi(4, 3))
    assert encode_solverstate(st) == ref
    path = tmp_path / "s.solverstate"
    assert write_solverstate(path, st) == len(ref)
    back = read_solverstate(path)
    assert (back.iter, back.learned_net, back.current_step) == (12, "a.caffemodel", 3)
    assert all(a.tobytes() == b.tobytes() and a.shape == b.shape for a, b in zip(hist, back.history))


def test_solverstate_errors_name_file_and_offset(tmp_path):
    from fcn_repro.caffe.caffemodel import read_solverstate
    good = pb.vi(1, 5) + pb.ld(3, pb.packed_f32(5, [1.0, 2.0]) + pb.shape(2))
    bad = tmp_path / "cut.solverstate"
    bad.write_bytes(good[:-3])
    with pytest.raises(CaffeModelError, match=r"cut\.solverstate.*byte"):
        read_solverstate(bad)
    other = tmp_path / "other.solverstate"
    other.write_bytes(pb.s(9, "not a state"))
    with pytest.raises(CaffeModelError, match="not a Caffe solver state"):
        read_solverstate(other)
    wrong = tmp_path / "wire.solverstate"
    wrong.write_bytes(pb.s(1, "iter as a string"))
    with pytest.raises(CaffeModelError, match="iter has wire type"):
        read_solverstate(wrong)
