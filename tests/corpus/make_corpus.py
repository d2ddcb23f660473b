"""Generate the bad-input corpus (tests/corpus/bad/*) and hold a tiny protobuf encoder.

Run ``python tests/corpus/make_corpus.py`` to regenerate the files; they are
committed so the corpus is stable, and tests/test_fuzz.py checks that this
script still produces exactly them.

The encoder here is written independently of fcn_repro.caffe.caffemodel's
writer (tests must not check the writer against itself): plain functions
that build wire-format bytes field by field.

Each corpus file has an entry in MANIFEST (name -> what the error must
mention), used by the tests.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"


# ------------------------------------------------------------- the encoder

def varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def ld(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def vi(field: int, v: int) -> bytes:
    return key(field, 0) + varint(v)


def s(field: int, text: str) -> bytes:
    return ld(field, text.encode())


def packed_f32(field: int, values) -> bytes:
    return ld(field, struct.pack(f"<{len(values)}f", *values))


def unpacked_f32(field: int, values) -> bytes:
    return b"".join(key(field, 5) + struct.pack("<f", v) for v in values)


def packed_f64(field: int, values) -> bytes:
    return ld(field, struct.pack(f"<{len(values)}d", *values))


def unpacked_f64(field: int, values) -> bytes:
    return b"".join(key(field, 1) + struct.pack("<d", v) for v in values)


def shape(*dims: int, packed: bool = True) -> bytes:
    if packed:
        return ld(7, ld(1, b"".join(varint(d) for d in dims)) if dims else b"")
    return ld(7, b"".join(vi(1, d) for d in dims))


def blob(*dims: int, data=None, legacy=None) -> bytes:
    """A BlobProto: BlobShape dims (or legacy 4-D) and packed float data."""
    out = b""
    if legacy is not None:
        out += b"".join(vi(f, d) for f, d in zip((1, 2, 3, 4), legacy))
    if data is not None:
        out += packed_f32(5, data)
    if legacy is None:
        out += shape(*dims)
    return out


def layer_v2(name: str, type_: str = "", blobs=(), extra: bytes = b"") -> bytes:
    out = s(1, name) + (s(2, type_) if type_ else b"") + extra
    return ld(100, out + b"".join(ld(7, b) for b in blobs))


def layer_v1(name: str, type_enum: int, blobs=(), extra: bytes = b"") -> bytes:
    out = s(4, name) + vi(5, type_enum) + extra
    return ld(2, out + b"".join(ld(6, b) for b in blobs))


def good_net() -> bytes:
    """A small valid V2 net: conv (2,1,2,2)+(2,), relu, ip (3,2)."""
    conv_w = [float(i) for i in range(8)]
    return (s(1, "tiny")
            + layer_v2("conv", "Convolution", [blob(2, 1, 2, 2, data=conv_w), blob(2, data=[0.5, -0.5])])
            + layer_v2("relu", "ReLU")
            + layer_v2("ip", "InnerProduct", [blob(3, 2, data=[1, 2, 3, 4, 5, 6])]))


# --------------------------------------------------------------- the corpus

def _caffemodel_cases() -> dict[str, tuple[bytes, str]]:
    g = good_net()
    big_len = key(100, 2) + varint(1 << 62) + b"\x0a\x01x"
    return {
        "truncated_half.caffemodel": (g[: len(g) // 2], "claims"),
        "truncated_in_varint.caffemodel": (s(1, "x") + key(100, 2) + b"\xff\xff", "truncated varint"),
        "truncated_in_float.caffemodel": (s(1, "x") + layer_v2("a", "", [unpacked_f32(5, [1.0])])[:-2],
                                          "claims"),
        "hostile_length_2p62.caffemodel": (big_len, "claims 4611686018427387904 bytes"),
        "hostile_length_in_blob.caffemodel": (
            layer_v2("a", "", [key(5, 2) + varint((1 << 62) + 4)]), "claims"),
        "varint_too_long.caffemodel": (b"\x0a" + b"\xff" * 11 + b"\x01", "longer than 10 bytes"),
        "invalid_wire_type_6.caffemodel": (s(1, "x") + key(100, 6) + b"\x00" * 8, "invalid wire type 6"),
        "invalid_wire_type_7_in_layer.caffemodel": (ld(100, s(1, "a") + key(9, 7) + b"\x00"),
                                                    "invalid wire type 7"),
        "field_number_zero.caffemodel": (b"\x02\x00" + g, "field number 0"),
        "end_group_stray.caffemodel": (s(1, "x") + key(9, 4) + g, "end-group"),
        "groups_nested_deep.caffemodel": (key(1, 3) * 5000 + key(1, 4) * 5000 + g, "nested deeper"),
        "layer_wrong_wire.caffemodel": (vi(100, 7) + g, "wire type varint"),
        "packed_float_odd_length.caffemodel": (layer_v2("a", "", [ld(5, b"\x00" * 7)]), "multiple of 4"),
        "count_mismatch.caffemodel": (layer_v2("conv", "", [blob(2, 3, data=[1.0, 2.0])]),
                                      "needs 6"),
        "huge_shape_no_data.caffemodel": (layer_v2("conv", "", [shape(1 << 40, 1 << 20)]), "INT_MAX"),
        "large_shape_no_data.caffemodel": (layer_v2("conv", "", [shape(1 << 15, 1 << 15)]), "needs 1073741824"),
        # found by atheris: a zero dimension made the count 0, the other dims overflowed numpy
        "zero_dim_huge_shape.caffemodel": (layer_v2("conv", "", [shape(0, 1 << 40, 1 << 40)]), "INT_MAX"),
        "negative_dim.caffemodel": (layer_v2("conv", "", [shape(-5 & ((1 << 64) - 1))]), "negative dimension"),
        "too_many_axes.caffemodel": (layer_v2("conv", "", [shape(*([1] * 40))]), "more than 32 axes"),
        "no_layers.caffemodel": (s(1, "just a name"), "no layers"),
        "v1_and_v2_mixed.caffemodel": (layer_v2("a") + layer_v1("b", 4), "both"),
        "v0_nested_layer.caffemodel": (ld(2, ld(1, s(1, "old"))), "V0"),
        "random_bytes.caffemodel": (bytes((i * 37 + 11) % 251 for i in range(3000)), ""),
    }


def _other_kind_cases() -> dict[str, tuple[bytes, str]]:
    return {
        "empty.caffemodel": (b"", "empty"),
        "jpeg_image.caffemodel": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200), "JPEG"),
        "png_image.caffemodel": (b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG"),
        "torch_zip.pt": (b"PK\x03\x04\x14\x00\x00\x00" + bytes(100), "zip archive"),
        "torch_pickle.pt": (b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9 j\xa8P\x19." + bytes(50), "pickle"),
        "prototxt_as_weights.caffemodel": (b'name: "fcn8s"\nlayer {\n  name: "data"\n  type: "Input"\n}\n',
                                           "text"),
        "html_download.caffemodel": (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
        "gzip.caffemodel": (b"\x1f\x8b\x08\x00" + bytes(40), "gzip"),
        "hdf5_named_caffemodel_but_truncated.caffemodel": (b"\x89HDF\r\n\x1a\n" + bytes(40), "HDF5"),
    }


def _prototxt_cases() -> dict[str, tuple[bytes, str]]:
    deep = b"a {" * 5000 + b"}" * 5000
    return {
        "unterminated_string.prototxt": (b'layer {\n  name: "conv1\n}\n', ":2:9: unterminated string"),
        "missing_close.prototxt": (b'layer {\n  name: "a"\n', ":3:1: expected '}' before end of input"),
        "junk_char.prototxt": (b'layer {\n  name: "a" @\n}\n', ":2:13: unexpected character '@'"),
        "bad_value.prototxt": (b"layer {\n  kernel_size: 3x\n}\n", ":2:16: expected a value"),
        "no_colon.prototxt": (b"name \"x\"\n", ":1:6: expected ':' or '{'"),
        "extra_close.prototxt": (b"layer { }\n}\n", ":2:1: expected a field name"),
        "deep_nesting.prototxt": (deep, "nested deeper"),
        "binary_junk.prototxt": (bytes(range(256)) * 4, "not UTF-8"),
        "nul_byte.prototxt": (b'name: "a"\n\x00\x01', ":2:1: NUL byte"),
        "number_underscore.prototxt": (b"base_lr: 1_0\n", ":1:10: expected a value"),
        "not_utf8.prototxt": (b'name: "\xff\xfe"\n', "not UTF-8"),
        "bad_escape.prototxt": (b'name: "a\\qb"\n', ":1:9: unknown escape"),
        "list_unclosed.prototxt": (b"dim: [1, 2\n", "expected ',' or ']'"),
        "v1_unknown_type_number.prototxt": (b"layers { name: \"a\" type: 999 }\n", ":1:26: layer 'a' field 'type': enum number 999 is not a LayerType value"),
        "input_dim_count.prototxt": (b'input: "data"\ninput_dim: 1\ninput_dim: 3\n', "input_dim"),
        "layers_scalar.prototxt": (b"name: 'x'\nlayers: 5\n", ":2:9: field 'layers': expected a message"),
        "input_shape_scalar.prototxt": (b'input: "a"\ninput_shape: 3\n', ":2:14: field 'input_shape': expected a message"),
        "v1_type_float.prototxt": (b'layers { name: "a" type: 1.5 }\n', ":1:26: layer 'a' field 'type': expected one of NONE"),
    }


MANIFEST: dict[str, str] = {}


def cases() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for group in (_caffemodel_cases(), _other_kind_cases(), _prototxt_cases()):
        for name, (data, expect) in group.items():
            out[name] = data
            MANIFEST[name] = expect
    return out


def build_hdf5(directory: Path) -> dict[str, str]:
    """Write the bad HDF5 files (needs h5py) and return name -> expected message part.

    h5py writes no time stamps by default, so these files are reproducible too.
    """
    import h5py
    import numpy as np
    expect = {}
    p = directory / "h5_no_data_group.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("weights", data=np.zeros(3, np.float32))
    expect[p.name] = "no /data group"
    p = directory / "h5_int_dataset.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv/0", data=np.zeros(3, np.int32))
    expect[p.name] = "expected float or double"
    p = directory / "h5_bad_blob_name.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv/weight", data=np.zeros(3, np.float32))
    expect[p.name] = "named 0, 1"
    p = directory / "h5_blob_gap.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv/0", data=np.zeros(3, np.float32))
        f.create_dataset("data/conv/2", data=np.zeros(3, np.float32))
    expect[p.name] = "not 0..1"
    p = directory / "h5_layer_is_dataset.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv", data=np.zeros(3, np.float32))
    expect[p.name] = "expected a group"
    p = directory / "h5_huge_declared_shape.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv/0", shape=(1 << 20, 1 << 20), dtype=np.float32)   # 4 TiB, never written
    expect[p.name] = "more than the file's"
    full = directory / "h5_truncated.h5"
    with h5py.File(full, "w") as f:
        f.create_dataset("data/conv/0", data=np.arange(4000, dtype=np.float32))
    raw = full.read_bytes()
    full.write_bytes(raw[: len(raw) // 3])
    expect[full.name] = "HDF5"
    return expect


def main(directory: Path = BAD) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in cases().items():
        (directory / name).write_bytes(data)
    MANIFEST.update(build_hdf5(directory))
    print(f"wrote {len(list(directory.iterdir()))} files to {directory}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else BAD)
